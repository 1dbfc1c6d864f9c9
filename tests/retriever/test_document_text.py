"""Putting a document's text back together from its chunks (`retriever.document_text`)."""

from __future__ import annotations

from retriever.document_text import reassemble
from retriever.records import ChunkInfo


def chunks_of(text: str, spans: list[tuple[int, int]]) -> list[ChunkInfo]:
    return [ChunkInfo(i, i, text[s:e], s, e, 0, None, "") for i, (s, e) in enumerate(spans)]


def test_overlapping_chunks_in_any_order_give_the_text_back() -> None:
    text = "Alpha beta gamma. Delta epsilon zeta. Eta theta."
    assert reassemble(chunks_of(text, [(18, 48), (0, 25), (10, 37)])) == text


def test_what_no_chunk_covers_keeps_its_length_as_line_breaks() -> None:
    text = "# Title\n\nFirst paragraph.\n\nA copy left out.\n\nLast one."
    spans = [(0, 7), (9, 25), (45, 54)]
    rebuilt = reassemble(chunks_of(text, spans))
    assert len(rebuilt) == len(text)
    for start, end in spans:
        assert rebuilt[start:end] == text[start:end]
    assert rebuilt[25:45] == "\n" * 20
    assert reassemble([]) == ""
