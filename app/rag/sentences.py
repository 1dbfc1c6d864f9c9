"""Sentences of passages and answers: where each starts and ends, in prose that a document hard-wraps and
among Markdown's block lines.

A sentence ends after `.`, `!` or `?` and whitespace; after 。！？； with or without whitespace (and after
the ASCII `!?;` that cleaning makes of the full-width forms, before a CJK character); and at the end of a
paragraph. A single line break inside a paragraph of prose does not end a sentence, since documents wrap
their lines. Every Markdown block line stands alone: a heading, a table row, a quote line, each line inside
a code fence; a list item goes on over the unmarked lines that continue it. Fence lines (```) are no
sentence.
"""

from __future__ import annotations

import re

from retriever.lexical import CJK_CHARACTERS

SENTENCE_END = re.compile(rf"(?<=[.!?])\s+|(?<=[。！？；])\s*|(?<=[!?;])(?=[{CJK_CHARACTERS}])")
FENCE = re.compile(r"\s*(?:```|~~~)")
ITEM = re.compile(r"\s*(?:[-*+]\s|\d{1,3}[.)]\s)\s*")  # the marker opening a list item
BLOCK_LINE = re.compile(r"\s*[#|>]")  # a heading, a table row, a quote line


def line_runs(text: str, code: bool = True) -> list[tuple[int, int]]:
    """The runs of lines that read on as one (a paragraph of prose, a list item with its continuation
    lines) and the block lines that stand alone, as character offsets; blank and fence lines are left out,
    and without `code` the lines inside code fences too."""
    runs: list[tuple[int, int]] = []
    in_fence = continues = False  # continues: whether an unmarked prose line extends the last run
    position = 0
    for line in text.split("\n"):
        start, end = position, position + len(line.rstrip("\r"))
        position += len(line) + 1
        if FENCE.match(line):
            in_fence, continues = not in_fence, False
        elif not line.strip():
            continues = False
        elif in_fence or BLOCK_LINE.match(line):
            if code or not in_fence:
                runs.append((start, end))
            continues = False
        elif ITEM.match(line):
            runs.append((start, end))
            continues = True
        elif continues and runs:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
            continues = True
    return runs


def sentence_spans(text: str, code: bool = True) -> list[tuple[int, int]]:
    """The sentences of `text` as character offsets, each without the whitespace that ends it; without
    `code`, the lines of code fences are left out."""
    spans = []
    for run_start, run_end in line_runs(text, code):
        start = run_start
        item = ITEM.match(text, run_start, run_end)  # "2. " opens an item; it does not end a sentence
        for match in SENTENCE_END.finditer(text, item.end() if item else run_start, run_end):
            if text[start : match.start()].strip():
                spans.append((start, match.start()))
            start = match.end()
        if text[start:run_end].strip():
            spans.append((start, run_end))
    return spans
