"""Chunking: exact offsets, token budgets that hold, overlap, and sentence splits in English and Chinese."""

from __future__ import annotations

import pytest

from ingest.chunker import Chunker
from ingest.cleaning import clean_text
from ingest.config import ChunkerConfig
from retriever.embedder import Embedder


@pytest.fixture(scope="module")
def chunker(embedder: Embedder) -> Chunker:
    return Chunker(ChunkerConfig(chunk_tokens=60, overlap_tokens=12), embedder.count_tokens, 254)


def test_chunks_are_exact_slices_within_budget(chunker: Chunker, embedder: Embedder) -> None:
    paragraphs = [
        " ".join(f"Sentence {p}.{s} tells about topic {p} in some words." for s in range(1, 8))
        for p in range(6)
    ]
    text = "\n\n".join(paragraphs)
    chunks = chunker.chunk(text)
    assert len(chunks) > 3
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.token_count == embedder.count_tokens([chunk.text])[0]
        assert chunk.token_count <= 60
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    # Every part of the text is covered, in order.
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.char_start <= before.char_end


def test_consecutive_chunks_overlap(chunker: Chunker) -> None:
    text = " ".join(f"Fact number {i} is short." for i in range(60))
    chunks = chunker.chunk(text)
    overlaps = [after.char_start < before.char_end for before, after in zip(chunks, chunks[1:], strict=False)]
    assert overlaps and all(overlaps)


def test_chinese_sentences_and_unspaced_text(chunker: Chunker) -> None:
    text = "大语言模型是一种深度学习模型。它可以生成文本！它能回答问题吗？可以；也能翻译。" * 12
    chunks = chunker.chunk(text)
    assert len(chunks) > 1
    assert all(c.token_count <= 60 for c in chunks)
    # Splits fall after a CJK sentence mark, not in the middle of a sentence.
    assert all(c.text[-1] in "。！？；" for c in chunks[:-1])


def test_a_word_longer_than_the_budget_is_cut(chunker: Chunker) -> None:
    text = "x" * 3000
    chunks = chunker.chunk(text)
    assert all(c.token_count <= 60 for c in chunks)
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    assert all(after.char_start <= before.char_end for before, after in zip(chunks, chunks[1:], strict=False))


def test_cleaning_normalizes_and_keeps_indentation() -> None:
    raw = "Ｆｕｌｌwidth\x00 text\r\n\r\n\r\n\r\nnext   para\n    indented code\t \n"
    assert clean_text(raw) == "Fullwidth text\n\nnext para\n    indented code"
