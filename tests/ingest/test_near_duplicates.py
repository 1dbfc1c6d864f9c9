"""Near-duplicate chunks and documents of a stored collection, found in SQL by band key (`retriever.bands`):
ingesting one document reads the signatures and hashes of its own candidates only, never the collection's;
an upgraded database dedups as a fresh one; a changed threshold re-keys the collection. On SQLite and
PostgreSQL."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from ingest.config import ChunkerConfig, IngestConfig
from ingest.dedup import Signature, lsh_shape, signature
from ingest.pipeline import FileResult, Ingestor
from retriever.db import make_engine
from retriever.embedder import Embedder
from retriever.models import ChunkBand, Collection, DocumentBand
from retriever.schema import RETRIEVER_CHAIN
from retriever.store import KnowledgeBase
from tests.conftest import make_settings
from tests.ingest.documents import edited
from tests.retriever.conftest import downgrade_schema, refused_then_upgraded

# Real words, one embedder token each, so that a paragraph is one chunk of CHUNKS.
WORDS = (
    "the harbour ship tide lamp keeper rock wave storm anchor sail mast crew chart buoy pier coast north "
    "south east west night day light dark cold warm sea boat fish net rope deck bell fog rain wind"
).split()
CHUNKS = ChunkerConfig(chunk_tokens=120, overlap_tokens=0)


def paragraph(seed: int, words: int = 70) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def signed(text: str) -> Signature:
    sig = signature(text)
    assert sig is not None
    return sig


def write_file(path: Path, paragraphs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(paragraphs))
    return path


def collection_of(folder: Path, documents: int) -> Path:
    """`documents` files of three distinct paragraphs each: doc-NN.txt holds paragraphs 3NN to 3NN+2."""
    for n in range(documents):
        write_file(folder / f"doc-{n:02}.txt", [paragraph(3 * n + i) for i in range(3)])
    return folder


def band_keys_stored(kb: KnowledgeBase) -> set[tuple[str, int, int, int]]:
    with kb.db.session() as session:
        chunks = session.execute(select(ChunkBand.chunk_id, ChunkBand.band, ChunkBand.key)).tuples()
        documents = session.execute(select(DocumentBand.document_id, DocumentBand.band, DocumentBand.key))
        return {("chunk", *row) for row in chunks} | {("document", *row) for row in documents.tuples()}


@contextmanager
def recorded(kb: KnowledgeBase) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements run on the knowledge base's database meanwhile, with their parameters."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(kb.db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(kb.db.engine, "before_cursor_execute", record)


def rerun(kb: KnowledgeBase, statement: tuple[str, Any]) -> list[Any]:
    """The rows a recorded read returns now."""
    sql, parameters = statement
    with kb.db.engine.connect() as connection:
        return list(connection.exec_driver_sql(sql, parameters).all())


def one_copied_chunk(result: FileResult, source: str) -> float:
    """The similarity of the one chunk `result` left out as a copy of a chunk of `source`."""
    assert result.status == "added", result
    [duplicate] = result.duplicates
    assert duplicate.chunks == 1 and Path(duplicate.of_source).name == source
    return duplicate.similarity


def test_one_document_into_a_large_collection_reads_only_its_own_candidates(
    any_kb: KnowledgeBase, tmp_path: Path
) -> None:
    ingestor = Ingestor(any_kb, CHUNKS)
    stored = ingestor.ingest_paths([collection_of(tmp_path / "docs", 30)], "c")
    assert stored.counts == {"added": 30} and stored.chunks_written == 90
    copy = edited(paragraph(3 * 17 + 1), 2, seed=1)  # the second paragraph of doc-17.txt, edited
    new = write_file(tmp_path / "new.txt", [paragraph(1000), copy, paragraph(1001)])
    with recorded(any_kb) as statements:
        [result] = ingestor.ingest_paths([new], "c").results
    assert one_copied_chunk(result, "doc-17.txt") >= 0.8 and result.chunks == 2

    # Chunk signatures are read by one statement: the lookup of the new document's own band keys (9 per
    # chunk at the default threshold), whatever the size of the collection.
    reads = [(sql, parameters) for sql, parameters in statements if "chunks.minhash" in sql]
    assert len(reads) == 1, [sql for sql, _ in reads]
    [(lookup, parameters)] = reads
    assert lookup.startswith("SELECT") and re.search(
        r'WHERE collections.name = .* AND chunk_bands."?key"? IN \(', lookup
    )
    assert len(parameters) <= 3 * 9 + 2  # the keys, the collection, the ready state
    # What it read (run again now, less the new document's own chunks, stored since): the copied chunk only.
    rows = rerun(any_kb, (lookup, parameters))
    others = {
        (chunk_id, document_id) for _, chunk_id, document_id, *_ in rows if document_id != result.document_id
    }
    original = next(d for d in any_kb.list_documents("c") if Path(d.source_path).name == "doc-17.txt")
    assert others == {(any_kb.get_chunks(original.id)[1].id, original.id)}
    assert len([row for row in rows if row[2] == original.id]) <= 9

    # Nor are the stored documents read: each statement reading the documents table (the new file's earlier
    # version, by name; the duplicate candidates, by text hash and band key; whether the collection is empty;
    # the write) finds one row of the 31 when run again now.
    reads = [(sql, parameters) for sql, parameters in statements if re.search(r"FROM documents\b", sql)]
    assert len(reads) >= 3 and all(len(rerun(any_kb, read)) <= 1 for read in reads), reads


def test_a_copied_document_is_found_among_the_stored_by_its_hash_and_keys(
    any_kb: KnowledgeBase, tmp_path: Path
) -> None:
    ingestor = Ingestor(any_kb, CHUNKS)
    ingestor.ingest_paths([collection_of(tmp_path / "docs", 30)], "c")
    doc_17 = [paragraph(3 * 17 + i) for i in range(3)]
    same = write_file(tmp_path / "same.txt", doc_17)
    near = write_file(tmp_path / "near.txt", [edited(doc_17[0], 2, seed=4), *doc_17[1:]])
    with recorded(any_kb) as statements:
        results = ingestor.ingest_paths([same, near], "c").results
    assert [result.status for result in results] == ["duplicate", "duplicate"], results
    similarities = []
    for result in results:
        [duplicate] = result.duplicates
        assert duplicate.chunks == 0 and Path(duplicate.of_source).name == "doc-17.txt"
        similarities.append(duplicate.similarity)
    assert similarities[0] == 1.0 and 0.8 <= similarities[1] < 1.0
    # Document signatures were read by one candidate lookup per new document, each finding doc-17 only.
    reads = [(sql, parameters) for sql, parameters in statements if "documents.minhash" in sql]
    assert len(reads) == 2, [sql for sql, _ in reads]
    doc_17_id = next(d.id for d in any_kb.list_documents("c") if Path(d.source_path).name == "doc-17.txt")
    assert all({row[0] for row in rerun(any_kb, read)} == {doc_17_id} for read in reads)


def test_an_upgraded_database_dedups_as_a_fresh_one(
    database_url: str, tmp_path: Path, embedder: Embedder
) -> None:
    """A database of the release before the band keys (revision 0001) is refused, then upgraded: its band keys
    are computed from the stored signatures, the same as a fresh database's, and catch the same copies."""
    config = make_settings(tmp_path / "data", database_url=database_url).retriever_config()
    kb = KnowledgeBase(config, embedder)
    Ingestor(kb, CHUNKS).ingest_paths([collection_of(tmp_path / "docs", 4)], "c")
    fresh = band_keys_stored(kb)
    assert len(fresh) == 4 * 3 * 9 + 4 * 9
    kb.close()
    engine = make_engine(database_url)
    downgrade_schema(engine, RETRIEVER_CHAIN, "0001")
    refused_then_upgraded(engine, config, embedder, "0001")

    upgraded = KnowledgeBase(config, embedder)
    try:
        assert band_keys_stored(upgraded) == fresh
        new = write_file(tmp_path / "new.txt", [edited(paragraph(7), 2, seed=3), paragraph(500)])
        [result] = Ingestor(upgraded, CHUNKS).ingest_paths([new], "c").results
        assert one_copied_chunk(result, "doc-02.txt") >= 0.8
    finally:
        upgraded.close()


def test_a_changed_threshold_rekeys_the_collection(any_kb: KnowledgeBase, tmp_path: Path) -> None:
    original = paragraph(1)
    # An edit whose similarity lies between the two thresholds (a copy at 0.6, not at the default 0.8) and
    # that shares a band at 0.6's width: found by the keys of that width only.
    rows = lsh_shape(0.6)[1]
    copy = next(
        text
        for seed in range(100)
        if 0.62 <= signed(original).similarity(signed(text := edited(original, 1 + seed % 8, seed))) < 0.78
        and set(signed(original).band_keys(rows)) & set(signed(text).band_keys(rows))
    )
    Ingestor(any_kb, CHUNKS).ingest_paths([write_file(tmp_path / "a.txt", [original, paragraph(2)])], "c")
    lower = Ingestor(any_kb, CHUNKS, IngestConfig(dedup_threshold=0.6))
    [result] = lower.ingest_paths([write_file(tmp_path / "b.txt", [copy, paragraph(3)])], "c").results
    assert 0.6 <= one_copied_chunk(result, "a.txt") < 0.8
    with any_kb.db.session() as session:
        assert session.scalar(select(Collection.band_rows)) == rows != lsh_shape(0.8)[1]
