"""Citations and prompt assembly."""

from __future__ import annotations

from app.rag.grounding import NO_ANSWER, parse_citations
from app.rag.pipeline import AnswerStyle, Source, build_messages
from app.settings import Settings
from retriever.records import SearchHit


def hit(n: int, text: str) -> SearchHit:
    return SearchHit(n, n, f"Doc {n}", f"doc{n}.txt", 0, 0, len(text), text, 0.5)


def test_only_existing_source_numbers_are_cited() -> None:
    answer = "Paris [2]. Also [1, 3] and an invented [7], again [2], and [0]."
    assert parse_citations(answer, 3) == [2, 1, 3]
    assert parse_citations("no citations here", 3) == []
    assert parse_citations("[1]", 0) == []


def test_prompt_numbers_every_passage() -> None:
    messages = build_messages("Where?", [Source(1, hit(1, "Alpha.")), Source(2, hit(2, "Beta."))])
    assert [m.role for m in messages] == ["system", "user"]
    assert "[1] (from Doc 1)\nAlpha." in messages[1].content
    assert "[2] (from Doc 2)\nBeta." in messages[1].content
    assert messages[1].content.index("Question: Where?") > messages[1].content.index("Beta.")


def test_answers_refuse_only_by_the_configured_margin() -> None:
    style = AnswerStyle.of(Settings(answer_presence_penalty=0.5, answer_refusal_penalty=1.5))
    params = style.params(16, "smollm2-rag", temperature=0.3)
    assert params.opening_bias == ((NO_ANSWER, -1.5),)
    assert (params.presence_penalty, params.max_new_tokens, params.adapter, params.temperature) == (
        0.5, 16, "smollm2-rag", 0.3,
    )  # fmt: skip
    assert AnswerStyle.of(Settings(answer_refusal_penalty=0.0)).params(16, None).opening_bias == ()


def test_answers_copy_from_the_passages_unless_turned_off() -> None:
    sources = [Source(1, hit(1, "Alpha.")), Source(2, hit(2, "Beta."))]
    copied = AnswerStyle.of(Settings()).params(16, None, sources=sources).copy_spans  # on by default
    assert copied is not None and copied.sources == ("Alpha.", "Beta.") and copied.replies == (NO_ANSWER,)
    assert (
        AnswerStyle.of(Settings(answer_copy_spans=False)).params(16, None, sources=sources).copy_spans is None
    )
    assert AnswerStyle.of(Settings(answer_copy_spans=True)).params(16, None).copy_spans is None  # no passages
