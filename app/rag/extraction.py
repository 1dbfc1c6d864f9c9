"""Extracted answers, for questions and passages in a script the model cannot read.

The default model (SmolLM2) was trained on English text. Asked in Chinese, or over Chinese passages, it
copies a span it cannot understand (an accepted keyword in 0.17 of the answers of the Chinese evaluation
set). When the question or the best passage is CJK text and the model does not read CJK (`AnswerStyle`),
the answer is instead the sentence of the best passage that the collection's embedder (the multilingual
e5 for a CJK collection) places closest to the question, cited: the retriever chooses the passage, the
embedder the sentence within it. Headings (a line opening with `#`) are never the answer, nor are the
header rows of tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.rag.grounding import sentence_spans
from retriever.embedder import TextEmbedder
from retriever.language import CJK_SHARE, cjk_share

TABLE_RULE = re.compile(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*")  # | --- | :---: | under a header row


@dataclass(frozen=True)
class Extract:
    """The sentence `text` of passage `n`, at `span` (character offsets) in it."""

    n: int
    span: tuple[int, int]
    text: str


def reads_as_cjk(text: str) -> bool:
    return cjk_share(text) >= CJK_SHARE


def closest_sentence(embedder: TextEmbedder, question: str, n: int, passage: str) -> Extract | None:
    """The sentence of `passage` (numbered `n`) whose embedding is closest to the question's; None when the
    passage holds no sentence but headings."""
    candidates = _sentences(passage)
    if not candidates:
        return None
    query = embedder.embed_query(embedder.truncate(question))
    vectors = embedder.embed([embedder.truncate(scored) for _, scored in candidates])
    (start, end), _ = candidates[int(np.argmax(vectors @ query))]
    return Extract(n, (start, end), passage[start:end])


def _sentences(passage: str) -> Sequence[tuple[tuple[int, int], str]]:
    """The passage's sentences (`app.rag.grounding`'s split, so a table row or a list item is one too), each
    trimmed of surrounding whitespace, with the text it is scored by: a table's data row is scored with the
    table's header row before it (a row of bare values says little alone); headings, header rows and the
    rows of dashes under them are left out."""
    lines = []
    for start, end in sentence_spans(passage):
        text = passage[start:end]
        start += len(text) - len(text.lstrip())
        end -= len(text) - len(text.rstrip())
        if start < end:
            lines.append((start, end))
    candidates = []
    header = ""
    for i, (start, end) in enumerate(lines):
        text = passage[start:end]
        following = passage[slice(*lines[i + 1])] if i + 1 < len(lines) else ""
        if text.startswith("#") or TABLE_RULE.fullmatch(text):
            continue
        if text.startswith("|") and TABLE_RULE.fullmatch(following):
            header = text
            continue
        scored = f"{header}\n{text}" if header and text.startswith("|") else text
        candidates.append(((start, end), scored))
    return candidates
