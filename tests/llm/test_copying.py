"""Copy-constrained decoding: the token rules on a small byte vocabulary, then the real model and engine."""

from __future__ import annotations

import pytest

from llm.base import ChatMessage, SamplingParams, collect
from llm.copying import CopySpans, CopyState, CopyTable

NO_ANSWER = "No answer."
# A byte vocabulary: single bytes, a few words, a citation opener and a stop token (None: special).
PIECES: list[bytes | None] = [bytes([b]) for b in range(256)] + [
    b"Denver",
    b" Denver",
    b" Broncos",
    b"Bron",
    b"cos",
    b" [",
    b"No",
    b" answer",
    None,
]
STOP = len(PIECES) - 1


def token(piece: bytes) -> int:
    return PIECES.index(piece)


def state(sources: tuple[str, ...], replies: tuple[str, ...] = (NO_ANSWER,), tail: int = 3) -> CopyState:
    return CopyState(CopySpans(sources, replies, max_tail_tokens=tail), CopyTable(PIECES), [STOP])


def follow(copy: CopyState, pieces: list[bytes]) -> None:
    for piece in pieces:
        allowed = copy.allowed()
        assert allowed is None or token(piece) in allowed, piece
        copy.advance(token(piece))


def test_a_reply_starts_anywhere_in_a_source_and_then_only_continues_it() -> None:
    copy = state(("The Denver Broncos won.",))
    first = copy.allowed()
    assert first is not None
    assert {token(b"Denver"), token(b" Denver"), token(b"T"), token(b"w")} <= set(first)
    assert token(b"No") in first  # the whole reply may start
    assert token(b"x") not in first and STOP not in first  # an empty reply is no reply
    follow(copy, [b"Denver", b" Broncos"])
    allowed = set(copy.allowed() or ())
    assert token(b" ") in allowed and STOP in allowed and token(b" [") in allowed
    assert token(b"s") not in allowed and token(b" Broncos") not in allowed


def test_a_span_neither_starts_nor_ends_inside_a_word() -> None:
    copy = state(("The Denver Broncos won.",))
    assert token(b"e") not in (copy.allowed() or ())  # every "e" of the source is inside a word
    follow(copy, [b"D", b"e"])
    allowed = set(copy.allowed() or ())
    assert token(b"n") in allowed and STOP not in allowed and token(b" [") not in allowed
    follow(copy, [b"n", b"v", b"e", b"r"])
    assert STOP in (copy.allowed() or ())


def test_a_token_may_start_with_a_space_the_passage_lacks() -> None:
    copy = state(("Denver Broncos",))
    assert token(b" Denver") in (copy.allowed() or ())
    follow(copy, [b" Denver", b" Broncos"])
    assert set(copy.allowed() or ()) >= {STOP, token(b" [")}


def test_whole_replies_only_from_their_start() -> None:
    copy = state(("Broncos",), replies=("No answer.",))
    assert token(b" answer") not in (copy.allowed() or ())
    follow(copy, [b"No", b" answer", b"."])
    assert STOP in (copy.allowed() or ())


def test_the_citation_opens_a_short_free_tail() -> None:
    copy = state(("Denver Broncos",), tail=2)
    follow(copy, [b"Denver", b" ["])
    assert copy.allowed() is None  # the citation's digits and bracket are free
    follow(copy, [b"2", b"]"])
    assert copy.allowed() == [STOP]


def test_characters_split_across_byte_tokens_are_copied() -> None:
    text = "大语言模型"
    copy = state((text,))
    first = set(copy.allowed() or ())
    assert token(text.encode()[:1]) in first
    assert token(text.encode()[1:2]) not in first  # never in the middle of a character
    follow(copy, [bytes([b]) for b in "语言".encode()])
    assert set(copy.allowed() or ()) >= {token("模".encode()[:1]), STOP}
    assert token("大".encode()[:1]) not in (copy.allowed() or ())


def test_several_spans_are_followed_until_they_part() -> None:
    copy = state(("Denver won", "Denver lost"))
    follow(copy, [b"Denver", b" "])
    allowed = set(copy.allowed() or ())
    assert {token(b"w"), token(b"l")} <= allowed
    follow(copy, [b"l"])
    assert token(b"o") in (copy.allowed() or ()) and token(b"w") not in (copy.allowed() or ())


def test_empty_spans_are_refused() -> None:
    with pytest.raises(ValueError, match="copy_spans"):
        CopySpans(("",), ())
    with pytest.raises(ValueError, match="copy_spans"):
        CopySpans(("a",), (), max_tail_tokens=-1)


PASSAGES = (
    "Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.",
)


def rag_messages(question: str) -> list[ChatMessage]:
    passages = "\n\n".join(f"[{n}] (from Super Bowl 50)\n{text}" for n, text in enumerate(PASSAGES, 1))
    return [ChatMessage("user", f"Passages:\n\n{passages}\n\nQuestion: {question}\nAnswer with a quote.")]


def copied_part(text: str) -> str:
    return text.split("[", 1)[0].strip()


@pytest.fixture(scope="module")
def engine_of_its_own(gguf_path):  # type: ignore[no-untyped-def]
    """The engine as served, not the session's: these prompts would fill its prefix cache, and a later
    prefix hit computes other tests' prompts with other shapes (bfloat16 rounding can flip a near-tie)."""
    from llm.config import EngineConfig
    from llm.engine import create_engine

    engine, tokenizer, _ = create_engine(
        EngineConfig(model_path=gguf_path, num_kv_blocks=256, max_model_len=1024, enforce_eager=True)
    )
    return engine, tokenizer


@pytest.mark.slow
def test_the_engine_copies_from_the_passages_beside_a_free_request(engine_of_its_own) -> None:
    engine, tokenizer = engine_of_its_own
    prompt = tokenizer.apply_chat_template(rag_messages("Who won Super Bowl 50?"))
    spans = CopySpans(PASSAGES, (NO_ANSWER,))
    free_alone = engine.generate([prompt], SamplingParams(max_new_tokens=24))[0]
    copied = engine.generate([prompt], SamplingParams(max_new_tokens=24, copy_spans=spans))[0]
    assert copied.text.strip(), copied.text
    assert any(copied_part(copied.text) in text for text in (*PASSAGES, NO_ANSWER)), copied.text
    # In one batch, a constrained request and a free one: the free one is unaffected.
    mixed = [
        engine.add_request(prompt, SamplingParams(max_new_tokens=24, copy_spans=spans)),
        engine.add_request(prompt, SamplingParams(max_new_tokens=24)),
    ]
    while engine.has_unfinished:
        engine.step()
    assert [r.text for r in mixed] == [copied.text, free_alone.text]


@pytest.mark.slow
def test_the_transformers_backend_copies_too(gguf_path) -> None:
    from llm.hf import HFGenerator

    generator = HFGenerator(gguf_path)
    reply = collect(
        generator.stream(
            rag_messages("Where was Super Bowl 50 played?"),
            SamplingParams(max_new_tokens=24, copy_spans=CopySpans(PASSAGES, (NO_ANSWER,))),
        )
    )
    assert reply.text.strip()
    assert any(copied_part(reply.text) in text for text in (*PASSAGES, NO_ANSWER)), reply.text
