"""Chunking: exact offsets, token budgets that hold (with the heading path the embedder reads first),
overlap, Markdown structure, pages, and sentence splits in English and Chinese."""

from __future__ import annotations

import pytest

from ingest.chunker import Chunk, Chunker, parse_blocks
from ingest.cleaning import clean_text
from ingest.config import ChunkerConfig
from retriever.embedder import Embedder


def titled(title: str, text: str) -> str:
    return f"{title}\n\n{text}" if title else text


@pytest.fixture(scope="module")
def chunker(embedder: Embedder) -> Chunker:
    return Chunker(ChunkerConfig(chunk_tokens=60, overlap_tokens=12), embedder.count_tokens, 254, titled)


def check_slices(text: str, chunks: list[Chunk], embedder: Embedder, budget: int = 60) -> None:
    for chunk in chunks:
        draft = chunk.draft
        assert text[draft.char_start : draft.char_end] == draft.text
        assert draft.token_count == embedder.count_tokens([draft.text])[0]
        assert draft.token_count <= budget
    assert [c.draft.ordinal for c in chunks] == list(range(len(chunks)))


def test_chunks_are_exact_slices_within_budget(chunker: Chunker, embedder: Embedder) -> None:
    paragraphs = [
        " ".join(f"Sentence {p}.{s} tells about topic {p} in some words." for s in range(1, 8))
        for p in range(6)
    ]
    text = "\n\n".join(paragraphs)
    chunks = chunker.chunk(text)
    assert len(chunks) > 3
    check_slices(text, chunks, embedder)
    # Every part of the text is covered, in order.
    assert chunks[0].draft.char_start == 0 and chunks[-1].draft.char_end == len(text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.draft.char_start <= before.draft.char_end


def test_consecutive_chunks_overlap(chunker: Chunker) -> None:
    text = " ".join(f"Fact number {i} is short." for i in range(60))
    chunks = [c.draft for c in chunker.chunk(text)]
    overlaps = [after.char_start < before.char_end for before, after in zip(chunks, chunks[1:], strict=False)]
    assert overlaps and all(overlaps)


def test_chinese_sentences_before_and_after_nfkc(chunker: Chunker) -> None:
    raw = "大语言模型是一种深度学习模型。它可以生成文本！它能回答问题吗？可以；也能翻译。" * 12
    for text, marks in ((raw, "。！？；"), (clean_text(raw), "。!?;")):
        chunks = chunker.chunk(text)
        assert len(chunks) > 1
        assert all(c.draft.token_count <= 60 for c in chunks)
        # Splits fall after a sentence mark (full-width, or ASCII after NFKC), never inside a sentence.
        assert all(c.draft.text[-1] in marks for c in chunks[:-1])


def test_a_word_longer_than_the_budget_is_cut(chunker: Chunker, embedder: Embedder) -> None:
    text = "x" * 3000
    chunks = chunker.chunk(text)
    check_slices(text, chunks, embedder)
    assert chunks[0].draft.char_start == 0 and chunks[-1].draft.char_end == len(text)


MARKDOWN = """# Harbour guide

Welcome to the harbour. It is open all year.

## Boats

### Sailing

Sailing boats moor on the east pier. Ask the harbour master for a berth.

```python
def berth(boat):
    # the east pier takes boats under 12 m
    return "east" if boat.length < 12 else "west"
```

| pier | depth | length |
| --- | --- | --- |
| east | 3 m | 12 m |
| west | 6 m | 40 m |

## Fees

Fees are paid at the office."""


def test_markdown_headings_code_and_tables(chunker: Chunker, embedder: Embedder) -> None:
    chunks = chunker.chunk(MARKDOWN, title="Harbour guide")
    check_slices(MARKDOWN, chunks, embedder)
    by_text = {c.draft.text: c for c in chunks}
    # A chunk never crosses a heading; its heading path is kept as metadata.
    paths = [c.draft.heading_path for c in chunks]
    assert paths[0] == "Harbour guide"
    assert "Harbour guide > Boats > Sailing" in paths and paths[-1] == "Harbour guide > Fees"
    for chunk in chunks:
        assert chunk.draft.text.count("\n#") == 0 or chunk.draft.text.startswith("#")
    # The code block and the table each fit, so each stays whole in one chunk.
    code = MARKDOWN[MARKDOWN.index("```python") : MARKDOWN.index("```\n\n|") + 3]
    table = MARKDOWN[MARKDOWN.index("| pier") :].split("\n\n")[0]
    assert any(code in text for text in by_text) and any(table in text for text in by_text)
    # A heading with nothing under it before the next one opens the same chunk as that one.
    opening = next(c for c in chunks if c.draft.heading_path.endswith("Sailing"))
    assert opening.draft.text.startswith("## Boats\n\n### Sailing\n\nSailing boats")
    # The embedder reads the title, then the headings above the chunk that are not in its text.
    later = next(c for c in chunks if c.draft.heading_path.endswith("Sailing") and c is not opening)
    assert later.embed_text == f"Harbour guide\n\nBoats > Sailing\n{later.draft.text}"
    fees = chunks[-1]
    assert fees.draft.text.startswith("## Fees") and fees.embed_text == f"Harbour guide\n\n{fees.draft.text}"


def test_what_the_embedder_reads_never_exceeds_its_limit(embedder: Embedder) -> None:
    limit = embedder.max_content_tokens
    chunker = Chunker(ChunkerConfig(chunk_tokens=limit), embedder.count_tokens, limit, titled)
    heading = "Chapter " + "very long heading words " * 6
    text = f"# {heading}\n\n" + " ".join(f"Statement {i} holds for the harbour." for i in range(400))
    chunks = chunker.chunk(text, title="A long document title about harbours and boats")
    assert len(chunks) > 5
    counts = embedder.count_tokens([c.embed_text for c in chunks])
    assert max(counts) <= limit
    check_slices(text, chunks, embedder, budget=limit)


def test_an_oversized_code_block_is_cut_at_lines(chunker: Chunker, embedder: Embedder) -> None:
    body = "\n".join(f"    total_{i} = compute(value_{i}, factor={i})" for i in range(40))
    text = f"```python\n{body}\n```"
    chunks = chunker.chunk(text)
    check_slices(text, chunks, embedder)
    assert len(chunks) > 2
    # Cuts fall at line ends: no chunk ends in the middle of a line.
    assert all(text[c.draft.char_end] == "\n" for c in chunks[:-1])


def test_pages_follow_the_page_starts(chunker: Chunker) -> None:
    pages = [" ".join(f"Page {p} sentence {s} about tides." for s in range(12)) for p in (1, 2, 3)]
    text = "\n\n".join(pages)
    starts = [(0, 1), (len(pages[0]) + 2, 2), (len(pages[0]) + len(pages[1]) + 4, 3)]
    chunks = chunker.chunk(text, page_starts=starts)
    for chunk in chunks:
        first_page = int(chunk.draft.text.split()[1])
        assert chunk.draft.page == first_page


def test_blocks() -> None:
    kinds = [(b.kind, b.level) for b in parse_blocks(MARKDOWN)]
    assert kinds == [
        ("heading", 1), ("text", 0), ("heading", 2), ("heading", 3), ("text", 0), ("code", 0),
        ("table", 0), ("heading", 2), ("text", 0),
    ]  # fmt: skip
    # An unclosed fence runs to the end; a "#" line inside a fence is code, not a heading.
    assert [b.kind for b in parse_blocks("intro\n\n```\n# not a heading\nstill code")] == ["text", "code"]


def test_cleaning_normalizes_and_keeps_indentation() -> None:
    raw = "Ｆｕｌｌwidth\x00 text\r\n\r\n\r\n\r\nnext   para\n    indented code\t \n"
    assert clean_text(raw) == "Fullwidth text\n\nnext para\n    indented code"
