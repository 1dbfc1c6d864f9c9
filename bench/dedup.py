"""Near-duplicate lookup benchmark (not part of pytest): one file ingested into a large collection.

Run from the repository root: `python -m bench.dedup [--documents N] [--database-url URL]`.

Builds a collection of N documents (three paragraphs of random harbour words each, a chunk per paragraph,
through the real ingest pipeline, on SQLite in a temporary folder unless a database URL is given), then
ingests one more file that holds a near copy of one stored paragraph, several times (the new document is
deleted after each). It prints the wall time of that ingest, the stored chunks its band-key lookup read,
and, measured in the same run on the same database, the work the pipeline did before the band keys existed:
reading the MinHash signature of every chunk and of every document of the collection, with each document's
hashes, and indexing them all in memory.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from sqlalchemy import select  # noqa: E402

from app.settings import Settings  # noqa: E402
from bench.machine import cpu_name, git_revision, load_average  # noqa: E402
from ingest.config import ChunkerConfig  # noqa: E402
from ingest.dedup import NearDuplicateIndex, Signature, lsh_shape, signature  # noqa: E402
from ingest.pipeline import Ingestor  # noqa: E402
from retriever.embedder import load_embedder  # noqa: E402
from retriever.models import Chunk, Collection, Document, DocumentState  # noqa: E402
from retriever.store import KnowledgeBase  # noqa: E402
from tests.ingest.documents import edited  # noqa: E402

WORDS = (
    "the harbour ship tide lamp keeper rock wave storm anchor sail mast crew chart buoy pier coast north "
    "south east west night day light dark cold warm sea boat fish net rope deck bell fog rain wind"
).split()
COLLECTION = "bench"
PARAGRAPH_CHUNKS = ChunkerConfig(chunk_tokens=120, overlap_tokens=0)  # a paragraph of 70 words: one chunk


def paragraph(seed: int, words: int = 70) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def build(folder: Path, documents: int) -> None:
    folder.mkdir(parents=True)
    for n in range(documents):
        text = "\n\n".join(paragraph(3 * n + i) for i in range(3))
        (folder / f"doc-{n:05}.txt").write_text(text)


def near_copy(text: str, threshold: float) -> str:
    """An edit of `text` that LSH finds (it shares a band with it) and that is a copy at `threshold`: LSH
    misses some copies by design, and the benchmark measures the lookup of one it finds."""
    original = signature(text)
    assert original is not None
    rows = lsh_shape(threshold)[1]
    for seed in range(1000):
        copy = edited(text, 1 + seed % 3, seed)
        sig = signature(copy)
        if (
            sig
            and sig.similarity(original) >= threshold
            and set(sig.band_keys(rows)) & set(original.band_keys(rows))
        ):
            return copy
    raise AssertionError("no near copy found")


def all_signatures_indexed(kb: KnowledgeBase, threshold: float) -> tuple[float, int]:
    """What ingest did before the band keys: every document of the collection read with its hashes and
    signature, and every signed chunk's signature, all indexed in memory; (seconds, rows)."""
    started = time.perf_counter()
    index: NearDuplicateIndex[int] = NearDuplicateIndex(threshold)
    documents: NearDuplicateIndex[int] = NearDuplicateIndex(threshold)
    exact: dict[str, int] = {}
    with kb.db.session() as session:
        stored = session.execute(
            select(Document.id, Document.source_file, Document.source_path, Document.title,
                   Document.content_hash, Document.text_hash, Document.minhash)
            .join(Collection)
            .where(Collection.name == COLLECTION, Document.state == DocumentState.ready)
            .order_by(Document.id)
        ).all()  # fmt: skip
        rows = session.execute(
            select(Chunk.document_id, Chunk.minhash)
            .join(Document)
            .join(Collection)
            .where(
                Collection.name == COLLECTION,
                Document.state == DocumentState.ready,
                Chunk.minhash.is_not(None),
            )
            .order_by(Chunk.id)
        ).all()
    for document_id, _, _, _, _, text_hash, document_blob in stored:
        exact.setdefault(text_hash, document_id)
        if document_blob is not None:
            documents.add(document_id, Signature.from_bytes(document_blob))
    for document_id, blob in rows:
        index.add(document_id, Signature.from_bytes(blob))
    return time.perf_counter() - started, len(stored) + len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    args = parser.parse_args()
    print("# Near-duplicate lookup: one file into a large collection\n")
    print(f"- git revision: {git_revision()}")
    print(f"- hardware: {cpu_name()}, load average {load_average()}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        settings = Settings(_env_file=None, data_dir=work / "data", database_url=args.database_url)  # type: ignore[call-arg]
        config = settings.retriever_config()
        embedder = load_embedder(config.embedder_backend, config.embedder_path)
        kb = KnowledgeBase(config, embedder)
        ingestor = Ingestor(kb, PARAGRAPH_CHUNKS, settings.ingest_config())
        build(work / "docs", args.documents)
        started = time.perf_counter()
        report = ingestor.ingest_paths([work / "docs"], COLLECTION)
        print(f"- collection: {report.counts.get('added', 0)} documents, {report.chunks_written} chunks, "
              f"built in {time.perf_counter() - started:.0f} s on {kb.db.engine.dialect.name}\n")  # fmt: skip
        copy = near_copy(paragraph(3 * (args.documents // 2) + 1), settings.ingest_config().dedup_threshold)
        new = work / "new.txt"
        paragraphs = [paragraph(10**7), copy, paragraph(10**7 + 1)]
        new.write_text("\n\n".join(paragraphs))
        chunks = [sig for sig in map(signature, paragraphs) if sig is not None]
        rows = lsh_shape(settings.ingest_config().dedup_threshold)[1]
        ingest_s, lookup_rows = [], 0
        for _ in range(args.repeats):
            started = time.perf_counter()
            [result] = ingestor.ingest_paths([new], COLLECTION).results
            ingest_s.append(time.perf_counter() - started)
            assert result.duplicates and result.document_id is not None, "the near copy was not found"
            # The rows the lookup read: the stored chunks sharing a band key with the new file's chunks.
            found = kb.chunk_candidates(
                COLLECTION, [key for chunk in chunks for key in chunk.band_keys(rows)]
            )
            lookup_rows = sum(document_id != result.document_id for _, _, document_id, *_ in found)
            kb.delete_document(result.document_id)
        before = [
            all_signatures_indexed(kb, settings.ingest_config().dedup_threshold) for _ in range(args.repeats)
        ]
        kb.close()
    old_s = statistics.median(seconds for seconds, _ in before)
    new_s = statistics.median(ingest_s)
    print(f"| measure | median of {args.repeats} | |")
    print("|---|---|---|")
    print(
        f"| ingest one file (band-key lookups) | {new_s * 1000:.0f} ms | {lookup_rows} candidate chunk rows |"
    )
    print(f"| before: read and index every document and chunk signature | {old_s * 1000:.0f} ms "
          f"| {before[0][1]} rows |")  # fmt: skip
    print(f"| the removed work / today's whole ingest | {old_s / new_s:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
