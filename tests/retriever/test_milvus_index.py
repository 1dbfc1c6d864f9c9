"""The Milvus vector store (ARCHIVIST_VECTOR_STORE=milvus) on a real Milvus Lite, with the real embedder, on
SQLite and PostgreSQL: search, deletes and every filter inside Milvus (the same hits as FAISS), sync from SQL
after a crash, replicas sharing one Milvus server, reindex, and Milvus unreachable at start and later."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install -e '.[milvus]')")
milvus_lite = pytest.importorskip(
    "milvus_lite", reason="milvus-lite is not installed (pip install -e '.[milvus]')"
)

from pymilvus import MilvusClient, MilvusException  # noqa: E402

from app.api.errors import status_of  # noqa: E402
from retriever.config import RetrieverConfig, SearchMode  # noqa: E402
from retriever.embedder import Embedder  # noqa: E402
from retriever.filters import SearchFilters  # noqa: E402
from retriever.milvus_index import MilvusIndex  # noqa: E402
from retriever.records import ChunkDraft, DocumentDraft, VectorStoreUnavailableError  # noqa: E402
from retriever.store import KnowledgeBase  # noqa: E402
from tests.app.live import free_port  # noqa: E402

PETS = ["Cats purr when they are content.", "A cat sleeps sixteen hours a day."]
SPACE = ["Rockets burn fuel and oxidizer to produce thrust.", "The Saturn V carried astronauts to the Moon."]
CODES = ["Error code XJ-4471 means the pump is clogged."]
ODD_TYPE = 'we"ird\\type'  # a file type that must be quoted and escaped in a Milvus expression


def milvus_config(database_url: str, index_dir: Path, uri: str | None = None) -> RetrieverConfig:
    return RetrieverConfig(database_url, index_dir, vector_store="milvus", milvus_uri=uri)


@pytest.fixture
def milvus_kb(database_url: str, tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBase]:
    """A knowledge base on each database with its vectors in a Milvus Lite file under tmp_path."""
    kb = KnowledgeBase(milvus_config(database_url, tmp_path / "index"), embedder)
    yield kb
    kb.close()
    milvus_lite.server_manager_instance.release_server(str(tmp_path / "index" / "milvus.db"))


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`milvus-lite server` in a process of its own: the Milvus that replicas in other processes share."""
    port = free_port()
    executable = str(Path(sys.executable).with_name("milvus-lite"))
    command = [executable, "server", "--data-dir", str(tmp_path / "milvus"), "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            MilvusClient(uri=uri, timeout=1).close()
            break
        except MilvusException:
            assert server.poll() is None and time.monotonic() < deadline, "milvus-lite server did not start"
            time.sleep(0.2)
    yield uri, server
    server.terminate()
    server.wait(timeout=30)


def add(kb: KnowledgeBase, source: str, texts: list[str], file_type: str = "txt") -> int:
    draft = DocumentDraft("c", source, source.title(), file_type, 10, f"hash-{source}-{len(texts)}")
    chunks = [ChunkDraft(i, t, 0, len(t), len(t.split())) for i, t in enumerate(texts)]
    vectors = kb.embedder.embed([kb.passage(draft.title, t) for t in texts])
    document_id, _ = kb.replace_document(draft, chunks, vectors)
    return document_id


def fill(kb: KnowledgeBase) -> dict[str, int]:
    return {
        "pets": add(kb, "pets", PETS, "md"),
        "space": add(kb, "space", SPACE),
        "codes": add(kb, "codes", CODES, ODD_TYPE),
    }


def milvus_index(kb: KnowledgeBase) -> MilvusIndex:
    index = kb.synced_index(1, kb.collection_version("c"))
    assert isinstance(index, MilvusIndex)
    return index


def sql_chunk_ids(kb: KnowledgeBase) -> list[int]:
    return sorted(chunk.id for document in kb.list_documents("c") for chunk in kb.get_chunks(document.id))


def ranked(
    kb: KnowledgeBase, mode: SearchMode, filters: SearchFilters | None = None
) -> list[tuple[int, int]]:
    """(document id, chunk id) of the hits for a question that every document answers a little."""
    hits = kb.search("cats rockets error codes", "c", 10, mode=mode, filters=filters)
    return [(hit.document_id, hit.chunk_id) for hit in hits]


def test_add_search_and_a_delete_never_retrievable_again(milvus_kb: KnowledgeBase) -> None:
    documents = fill(milvus_kb)
    index = milvus_index(milvus_kb)
    assert (index.kind, index.size) == ("milvus", 5)
    assert sorted(index.ids().tolist()) == sql_chunk_ids(milvus_kb)
    for mode in ("dense", "hybrid"):
        hits = milvus_kb.search("why do cats purr", "c", 3, mode=mode)
        assert "purr" in hits[0].text, mode
        assert hits[0].similarity is not None and hits[0].similarity > 0.5
    [dense] = milvus_kb.search("rocket thrust", "c", 1, mode="dense")
    assert dense.score == pytest.approx(dense.similarity, abs=1e-4)  # inner product of normalised vectors
    doomed = [chunk.id for chunk in milvus_kb.get_chunks(documents["pets"])]
    milvus_kb.delete_document(documents["pets"])
    assert index.size == 3 and not set(doomed) & set(index.ids().tolist())
    query = milvus_kb.embedder.embed_query("why do cats purr")
    assert not {chunk_id for chunk_id, _ in index.search(query, 10)} & set(doomed)  # gone from Milvus itself
    for mode in ("dense", "lexical", "hybrid"):
        assert all(
            hit.document_id != documents["pets"] for hit in milvus_kb.search("cats purr", "c", 10, mode=mode)
        )


def test_every_filter_applies_inside_milvus_with_the_hits_of_faiss(
    milvus_kb: KnowledgeBase, tmp_path: Path
) -> None:
    documents = fill(milvus_kb)
    faiss_kb = KnowledgeBase(
        replace(milvus_kb.config, vector_store="faiss", index_dir=tmp_path / "faiss"), milvus_kb.embedder
    )
    try:
        stored = milvus_kb.get_document(documents["space"]).updated_at
        for filters in (
            SearchFilters(document_ids=(documents["space"], documents["codes"])),
            SearchFilters(file_types=(".MD",)),
            SearchFilters(file_types=(ODD_TYPE, "txt")),
            SearchFilters(updated_after=stored),  # inclusive bounds, naive datetimes taken as UTC
            SearchFilters(updated_before=stored),
            SearchFilters(
                updated_after=stored - timedelta(hours=1), updated_before=stored + timedelta(hours=1)
            ),
            SearchFilters(updated_after=datetime.now(timezone.utc) + timedelta(hours=1)),  # nothing passes
            SearchFilters(document_ids=()),
        ):
            for mode in ("dense", "hybrid"):
                expected = ranked(faiss_kb, mode, filters)
                assert ranked(milvus_kb, mode, filters) == expected
        # Inside the search, not after it: with k = 1 the worst match for a cat question is still found.
        query = milvus_kb.embedder.embed_query("why do cats purr")
        [(chunk_id, _)] = milvus_index(milvus_kb).search(
            query, 1, SearchFilters(document_ids=(documents["codes"],))
        )
        assert chunk_id == milvus_kb.get_chunks(documents["codes"])[0].id
        # A touch (same text, new bytes) changes `updated_at` without a new version: Milvus's copy follows.
        later = datetime.now(timezone.utc)
        milvus_kb.write_batch("c", [], touches=[(documents["pets"], "new-hash")])
        recent = SearchFilters(updated_after=later)
        assert {
            hit.document_id for hit in milvus_kb.search("cats", "c", 5, mode="dense", filters=recent)
        } == {documents["pets"]}
    finally:
        faiss_kb.close()


def test_sync_heals_missing_and_extra_vectors_after_a_crash(
    milvus_kb: KnowledgeBase, embedder: Embedder
) -> None:
    documents = fill(milvus_kb)
    index = milvus_index(milvus_kb)
    lost = [chunk.id for chunk in milvus_kb.get_chunks(documents["space"])]
    index.remove(lost)  # as if the process died between the SQL commit and the Milvus write
    query = embedder.embed_query("why do cats purr")
    stale = {"chunk_id": 999_999, "vector": query, "document_id": 999, "file_type": "txt", "updated_at": 0.0}
    index.client.upsert(index.name, [stale])  # and a chunk whose deletion never reached Milvus
    assert 999_999 in {chunk_id for chunk_id, _ in index.search(query, 3)}
    restarted = KnowledgeBase(milvus_kb.config, embedder)  # a new process: it syncs before its first search
    try:
        assert restarted.search("rocket thrust", "c", 1, mode="dense")[0].document_id == documents["space"]
        assert sorted(milvus_index(restarted).ids().tolist()) == sql_chunk_ids(milvus_kb)
        assert 999_999 not in {chunk_id for chunk_id, _ in index.search(query, 10)}
        milvus_index(restarted).sync(sql_chunk_ids(milvus_kb), lambda ids: pytest.fail(f"loaded {ids}"))
    finally:
        restarted.close()


def test_reindex_rebuilds_the_milvus_collection(milvus_kb: KnowledgeBase) -> None:
    fill(milvus_kb)
    index = milvus_index(milvus_kb)
    index.client.drop_collection(index.name)
    assert milvus_kb.reindex() == 5
    assert sorted(milvus_index(milvus_kb).ids().tolist()) == sql_chunk_ids(milvus_kb)
    assert "purr" in milvus_kb.search("why do cats purr", "c", 1, mode="dense")[0].text


def test_replicas_sharing_one_milvus_server_agree(
    database_url: str,
    tmp_path: Path,
    embedder: Embedder,
    milvus_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    uri, server = milvus_server
    first = KnowledgeBase(milvus_config(database_url, tmp_path / "replica-1", uri), embedder)
    second = KnowledgeBase(milvus_config(database_url, tmp_path / "replica-2", uri), embedder)
    try:
        documents = fill(first)
        for filters in (None, SearchFilters(file_types=("txt",))):
            for mode in ("dense", "hybrid"):
                expected = ranked(first, mode, filters)
                assert expected and ranked(second, mode, filters) == expected
        # Both sync the same Milvus at once after a crash lost a chunk: upserts leave one copy of it.
        more = add(second, "more", ["Penguins cannot fly."])
        milvus_index(first).remove([chunk.id for chunk in first.get_chunks(more)])
        for replica in (first, second):
            milvus_index(replica).version = -1
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda replica: replica.sync_indexes("c"), (first, second)))
        assert milvus_index(first).size == len(sql_chunk_ids(first)) == 6
        second.delete_document(documents["codes"])
        assert all(
            hit.document_id != documents["codes"]
            for hit in first.search("XJ-4471 error", "c", 10, mode="dense")
        )
        server.terminate()  # Milvus goes down: a search is a 503, not a crash or an empty answer
        server.wait(timeout=30)
        with pytest.raises(VectorStoreUnavailableError, match="Milvus at http://127.0.0.1") as raised:
            first.search("cats", "c", 3, mode="dense")
        assert status_of(raised.value) == 503 and raised.value.headers["Retry-After"]
    finally:
        first.close()
        second.close()


def test_milvus_unreachable_at_start_is_one_line_and_exit_2(tmp_path: Path, embedder: Embedder) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VectorStoreUnavailableError, match=f"cannot reach Milvus at {dead}"):
        KnowledgeBase(
            milvus_config(f"sqlite:///{tmp_path / 'archivist.db'}", tmp_path / "index", dead), embedder
        )
    env = {
        **os.environ,
        "ARCHIVIST_DATA_DIR": str(tmp_path / "data"),
        "ARCHIVIST_VECTOR_STORE": "milvus",
        "ARCHIVIST_MILVUS_URI": dead.replace("http://", "http://someone:hunter2@"),
        "ARCHIVIST_MILVUS_TOKEN": "someone:hunter2",
    }
    started = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    output = (started.stdout + started.stderr).strip()
    assert started.returncode == 2, output
    error = started.stdout.strip()  # stderr has the log lines of a new database's migrations
    assert error.startswith(f"error: cannot reach Milvus at {dead} (ARCHIVIST_MILVUS_URI): "), output
    assert len(error.splitlines()) == 1, output
    assert "hunter2" not in output and "Traceback" not in output


def test_a_bad_milvus_prefix_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "ARCHIVIST_DATA_DIR": str(tmp_path), "ARCHIVIST_MILVUS_PREFIX": "my-archivist"}
    started = subprocess.run([sys.executable, "-m", "app.cli", "reindex"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stdout.startswith("error: invalid setting ARCHIVIST_MILVUS_PREFIX: "), started.stdout
    assert not (tmp_path / "index").exists()  # nothing was opened or written
