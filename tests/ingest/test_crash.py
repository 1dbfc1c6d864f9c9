"""Crash safety: `archivist ingest` is SIGKILLed at random moments (several seeds, while the corpus keeps
changing under it: files edited, deleted, added), and after every kill the data dir must be consistent:
no half document in SQL, no document whose content is not some version of its file, indexes that agree
with SQL; then one more `archivist ingest` completes the work."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.settings import Settings
from ingest.cleaning import clean_document
from ingest.config import IngestConfig
from ingest.loaders import load_file
from ingest.pipeline import content_hash
from retriever.embedder import Embedder
from retriever.store import KnowledgeBase
from retriever.vector_index import VectorIndex
from tests.conftest import REPO_ROOT, make_settings

COLLECTION = "crash"
WORDS = (
    "anchor buoy cliff dock estuary ferry gale harbour island jetty keel lantern mooring net oar pier quay "
    "reef sail tide undertow vessel wharf yacht zephyr"
).split()


class Corpus:
    """Files of unique paragraphs, with every version each file has had (content hash → text)."""

    def __init__(self, folder: Path, rng: random.Random) -> None:
        self.folder = folder
        self.rng = rng
        self.versions: dict[str, dict[str, str]] = {}
        self.counter = 0
        folder.mkdir()

    def paragraph(self) -> str:
        self.counter += 1
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(18, 30)))
        return f"Note {self.counter}: {words}."

    def write(self, name: str) -> None:
        text = f"# File {name}\n\n" + "\n\n".join(self.paragraph() for _ in range(self.rng.randint(2, 4)))
        path = self.folder / name
        path.write_text(text)
        self.versions.setdefault(str(path), {})[content_hash(text.encode())] = text

    def mutate(self) -> None:
        names = sorted(p.name for p in self.folder.iterdir())
        for name in self.rng.sample(names, 3):
            self.write(name)
        for name in self.rng.sample(names, 2):
            (self.folder / name).unlink()
        for _ in range(2):
            self.write(f"added-{self.counter}.md")


def settings_for(data_dir: Path) -> Settings:
    return make_settings(data_dir, chunk_tokens=32, chunk_overlap=0)


def start_ingest(corpus: Corpus, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ARCHIVIST_DATA_DIR": str(data_dir),
        "ARCHIVIST_CHUNK_TOKENS": "32",
        "ARCHIVIST_CHUNK_OVERLAP": "0",
        "ARCHIVIST_INGEST_BATCH_CHUNKS": "6",  # many small transactions: many moments to die in
    }
    command = [sys.executable, "-m", "app.cli", "ingest", str(corpus.folder), "-c", COLLECTION, "--prune"]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def sql_version(data_dir: Path) -> int:
    """The collection's version as another process sees it (-1 before the first write)."""
    database = data_dir / "archivist.db"
    if not database.exists():
        return -1
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            row = connection.execute(
                "select version from collections where name = ?", (COLLECTION,)
            ).fetchone()
    except sqlite3.OperationalError:
        return -1
    return int(row[0]) if row else -1


def kill_at_random(process: subprocess.Popen[bytes], data_dir: Path, rng: random.Random, early: bool) -> None:
    """SIGKILL the ingest: `early` at a random moment of its start-up, otherwise a random moment after it
    has begun to commit."""
    if early:
        time.sleep(rng.uniform(0.5, 4.0))
    else:
        before = sql_version(data_dir)
        deadline = time.monotonic() + 180
        while sql_version(data_dir) <= before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def check_consistent(data_dir: Path, corpus: Corpus, embedder: Embedder, complete: bool) -> int:
    """Assert what must hold after any crash (and, when `complete`, after a finished run); returns the
    number of documents."""
    settings = settings_for(data_dir)
    kb = KnowledgeBase(settings.retriever_config(), embedder)
    try:
        kb.ensure_collection(COLLECTION)  # a run killed while starting has not created it yet
        documents = kb.list_documents(COLLECTION)
        fingerprints = {f.id: f for f in kb.fingerprints(COLLECTION, [d.source_path for d in documents])}
        chunk_ids: list[int] = []
        for document in documents:
            versions = corpus.versions[document.source_path]
            # Its content is one whole version of its file...
            assert document.content_hash in versions, f"{document.source_path}: content of no known version"
            text = versions[document.content_hash]
            loaded = load_file(Path(document.source_path), text.encode(), IngestConfig()).documents[0]
            cleaned = clean_document(loaded).text
            assert fingerprints[document.id].text_hash
            # ...with all of its chunks: exact slices covering the whole cleaned text, in order.
            chunks = kb.get_chunks(document.id)
            assert len(chunks) == document.chunk_count > 0
            assert [c.ordinal for c in chunks] == list(range(len(chunks)))
            covered = 0
            for chunk in chunks:
                assert cleaned[chunk.char_start : chunk.char_end] == chunk.text
                assert not cleaned[covered : chunk.char_start].strip(), (
                    "a gap: part of the document is missing"
                )
                covered = max(covered, chunk.char_end)
            assert not cleaned[covered:].strip(), "the end of the document is missing"
            chunk_ids += [c.id for c in chunks]
        version = kb.collection_version(COLLECTION)
        # An index file that claims a version must hold exactly that version's chunks.
        index_file = data_dir / "index" / "collection-1.faiss"
        if index_file.exists():
            on_disk = VectorIndex(embedder.dimension, index_file, use_gpu=False)
            if on_disk.version == version:
                assert sorted(on_disk.ids().tolist()) == sorted(chunk_ids)
        # Whatever the files say, a reader syncs to SQL before it searches: both indexes agree with it.
        assert sorted(kb.synced_index(1, version).ids().tolist()) == sorted(chunk_ids)
        assert sorted(kb.synced_lexical(1, version).ids().tolist()) == sorted(chunk_ids)
        for hit in kb.search("harbour tide anchor", COLLECTION, 10):
            assert hit.chunk_id in chunk_ids
        if complete:
            current = {str(p): content_hash(p.read_bytes()) for p in corpus.folder.iterdir()}
            assert {d.source_path: d.content_hash for d in documents} == current
        return len(documents)
    finally:
        kb.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_half_a_document(tmp_path: Path, embedder: Embedder) -> None:
    data_dir = tmp_path / "data"
    corpus = Corpus(tmp_path / "docs", random.Random(0))
    for number in range(16):
        corpus.write(f"file-{number:02d}.md")
    outputs = []
    for seed in (1, 2, 3, 4):
        rng = random.Random(seed)
        process = start_ingest(corpus, data_dir)
        kill_at_random(process, data_dir, rng, early=seed == 1)
        outputs.append(process.stdout.read().decode() if process.stdout else "")
        check_consistent(data_dir, corpus, embedder, complete=False)
        corpus.mutate()
    finished = start_ingest(corpus, data_dir)
    output = finished.communicate(timeout=600)[0].decode()
    assert finished.returncode == 0, output
    assert check_consistent(data_dir, corpus, embedder, complete=True) == len(list(corpus.folder.iterdir()))
    # The runs really were cut short: at least one kill left work for the next run.
    assert any("Ingest summary" not in out for out in outputs), outputs
