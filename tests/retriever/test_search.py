"""Search modes, filters inside the search, and both indexes kept consistent with SQL, on SQLite and
PostgreSQL, with the real embedder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder
from retriever.filters import SearchFilters
from retriever.records import ChunkDraft, DocumentDraft
from retriever.store import KnowledgeBase
from retriever.vector_index import IndexMismatchError

PETS = [
    "Cats purr when they are content.",
    "A cat sleeps sixteen hours a day.",
    "Kittens learn to hunt by playing.",
]
SPACE = ["Rockets burn fuel and oxidizer to produce thrust.", "The Saturn V carried astronauts to the Moon."]
# An exact rare token that a small embedder does not know, but BM25 matches.
CODES = ["Error code XJ-4471 means the pump is clogged.", "Error code QZ-9012 means the filter is worn."]


def add(kb: KnowledgeBase, source: str, texts: list[str], file_type: str = "txt") -> int:
    draft = DocumentDraft("c", source, source.title(), file_type, 10, f"hash-{source}-{len(texts)}")
    chunks = [ChunkDraft(i, t, 0, len(t), len(t.split())) for i, t in enumerate(texts)]
    document_id, _ = kb.replace_document(
        draft, chunks, kb.embedder.embed([kb.passage(draft.title, t) for t in texts])
    )
    return document_id


@pytest.fixture
def filled(store: KnowledgeBase) -> dict[str, int]:
    return {
        "pets": add(store, "pets", PETS, "md"),
        "space": add(store, "space", SPACE),
        "codes": add(store, "codes", CODES),
    }


def test_every_mode_finds_the_obvious_passage(store: KnowledgeBase, filled: dict[str, int]) -> None:
    for mode in ("dense", "lexical", "hybrid"):
        hits = store.search("why do cats purr", "c", 3, mode=mode)
        assert "purr" in hits[0].text, mode
    lexical = store.search("XJ-4471", "c", 1, mode="lexical")
    assert "XJ-4471" in lexical[0].text
    assert "XJ-4471" in store.search("XJ-4471", "c", 1)[0].text  # hybrid is the default mode


def test_similarity_is_the_cosine_whenever_the_query_was_embedded(
    store: KnowledgeBase, filled: dict[str, int]
) -> None:
    [dense] = store.search("rocket thrust", "c", 1, mode="dense")
    [hybrid] = store.search("rocket thrust", "c", 1, mode="hybrid")
    # The index scans float16 copies of the vectors, the similarity uses the float32 ones stored in SQL.
    assert dense.similarity == pytest.approx(dense.score, abs=1e-3)
    assert hybrid.chunk_id == dense.chunk_id
    assert hybrid.similarity == pytest.approx(dense.similarity, abs=1e-6)
    assert store.search("rocket thrust", "c", 1, mode="lexical")[0].similarity is None


def test_filters_apply_inside_the_search(store: KnowledgeBase, filled: dict[str, int]) -> None:
    # The space document is the worst match for a cat question, yet with k = 1 a filter still finds it.
    [hit] = store.search("why do cats purr", "c", 1, filters=SearchFilters(document_ids=(filled["space"],)))
    assert hit.document_id == filled["space"]
    for mode in ("dense", "lexical", "hybrid"):
        only_txt = store.search(
            "cats rockets error", "c", 10, mode=mode, filters=SearchFilters(file_types=("txt",))
        )
        assert only_txt and {h.document_id for h in only_txt} <= {filled["space"], filled["codes"]}, mode
    now = datetime.now(timezone.utc)
    assert store.search("cats", "c", 5, filters=SearchFilters(updated_after=now + timedelta(hours=1))) == []
    recent = store.search("cats", "c", 5, filters=SearchFilters(updated_after=now - timedelta(hours=1)))
    assert recent
    naive_past = (now - timedelta(hours=1)).replace(tzinfo=None)
    assert store.search("cats", "c", 5, filters=SearchFilters(updated_before=naive_past)) == []


def test_long_query_is_truncated_not_an_error(store: KnowledgeBase, filled: dict[str, int]) -> None:
    query = ("Why do cats purr? " + "padding words " * 800)[:10_000]
    truncated = store.embedder.truncate(query)
    assert truncated.startswith("Why do cats purr?") and len(truncated) < 2000
    assert store.embedder.count_tokens([truncated])[0] <= store.embedder.max_content_tokens
    for mode in ("dense", "lexical", "hybrid"):
        assert store.search(query, "c", 3, mode=mode), mode


def test_delete_removes_from_both_indexes_and_other_processes_follow(
    store: KnowledgeBase, filled: dict[str, int], database_url: str, tmp_path: Path, embedder: Embedder
) -> None:
    other = KnowledgeBase(RetrieverConfig(database_url=database_url, index_dir=tmp_path / "other"), embedder)
    try:
        assert other.search("XJ-4471", "c", 1, mode="lexical")[0].document_id == filled["codes"]
        store.delete_document(filled["codes"])
        version = store.collection_version("c")
        assert store.synced_lexical(1, version).size == len(PETS) + len(SPACE)
        for kb in (store, other):
            for mode in ("dense", "lexical", "hybrid"):
                assert all(
                    h.document_id != filled["codes"] for h in kb.search("XJ-4471 error", "c", 10, mode=mode)
                )
    finally:
        other.close()


def test_lexical_index_heals_after_a_crash_and_reindex_rebuilds_it(
    store: KnowledgeBase, tmp_path: Path
) -> None:
    add(store, "a", ["Alpha text about the sea."])
    path = tmp_path / "index" / "collection-1.bm25.npz"
    saved = path.read_bytes()
    add(store, "b", ["Beta text about mountains."])
    path.write_bytes(saved)  # a crash after the second SQL commit, before the lexical index was saved
    fresh = KnowledgeBase(store.config, store.embedder)
    try:
        assert {h.title for h in fresh.search("mountains", "c", 5, mode="lexical")} == {"B"}
    finally:
        fresh.close()

    path.write_bytes(b"garbage")
    broken = KnowledgeBase(store.config, store.embedder)
    try:
        with pytest.raises(IndexMismatchError, match="archivist reindex"):
            broken.load_indexes()
        assert broken.reindex() == 2
        assert broken.search("mountains", "c", 1, mode="lexical")[0].title == "B"
    finally:
        broken.close()


def test_large_collections_switch_to_ivf_and_stay_consistent(
    database_url: str, tmp_path: Path, embedder: Embedder
) -> None:
    config = RetrieverConfig(database_url=database_url, index_dir=tmp_path / "index", flat_max_vectors=40)
    kb = KnowledgeBase(config, embedder)
    try:
        ids = [add(kb, f"doc{i}", [f"Note {i}: item {i} is stored on shelf {i % 7}."]) for i in range(45)]
        add(kb, "target", ["The lighthouse keeper polishes the great lens every evening."])
        index = kb.synced_index(1, kb.collection_version("c"))
        assert index.kind.startswith("ivf") and index.size == 46
        assert kb.search("lighthouse lens", "c", 1, mode="dense")[0].title == "Target"
        for document_id in ids[:30]:
            kb.delete_document(document_id)
        assert kb.synced_index(1, kb.collection_version("c")).kind == "flat"
        assert kb.search("lighthouse lens", "c", 1, mode="dense")[0].title == "Target"
    finally:
        kb.close()
