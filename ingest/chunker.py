"""Token-aware chunking: paragraphs, then sentences, then token windows, packed up to a token budget.

Chunks are exact slices of the cleaned text (`text[char_start:char_end]`), so citations can point back
to the source. Sizes are counted with the embedder's tokenizer and never exceed what it can embed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.config import ChunkerConfig
from retriever.store import ChunkDraft

TokenCounter = Callable[[Sequence[str]], list[int]]

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? followed by space, or at a CJK full stop / exclamation / question mark / semicolon.
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[。！？；])")
WORD = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    tokens: int


class Chunker:
    def __init__(self, config: ChunkerConfig, count_tokens: TokenCounter, max_tokens: int) -> None:
        self.count_tokens = count_tokens
        self.budget = min(config.chunk_tokens, max_tokens)
        self.overlap = min(config.overlap_tokens, self.budget // 4)

    def chunk(self, text: str) -> list[ChunkDraft]:
        units = self._units(text)
        drafts: list[ChunkDraft] = []
        for start, end in self._pack(units):
            piece_start, piece_end = _strip(text, start, end)
            if piece_start >= piece_end:
                continue
            piece = text[piece_start:piece_end]
            drafts.append(ChunkDraft(len(drafts), piece, piece_start, piece_end, 0))
        counts = self.count_tokens([draft.text for draft in drafts])
        return [
            ChunkDraft(d.ordinal, d.text, d.char_start, d.char_end, count)
            for d, count in zip(drafts, counts, strict=True)
        ]

    def _units(self, text: str) -> list[Span]:
        """Split into spans that each fit the budget: paragraphs, else sentences, else word windows."""
        paragraphs = _split(text, PARAGRAPH_BREAK, 0, len(text))
        units: list[Span] = []
        for span in self._measure(text, paragraphs):
            if span.tokens <= self.budget:
                units.append(span)
                continue
            for sentence in self._measure(text, _split(text, SENTENCE_END, span.start, span.end)):
                if sentence.tokens <= self.budget:
                    units.append(sentence)
                else:
                    units.extend(self._windows(text, sentence))
        return units

    def _measure(self, text: str, bounds: list[tuple[int, int]]) -> list[Span]:
        counts = self.count_tokens([text[start:end] for start, end in bounds])
        return [Span(start, end, count) for (start, end), count in zip(bounds, counts, strict=True)]

    def _windows(self, text: str, span: Span) -> list[Span]:
        """Cut an over-long sentence at word boundaries (or characters, for unspaced scripts)."""
        words = [(m.start(), m.end()) for m in WORD.finditer(text, span.start, span.end)]
        if len(words) <= 1:
            words = [(i, i + 1) for i in range(span.start, span.end)]
        counts = self.count_tokens([text[start:end] for start, end in words])
        windows: list[Span] = []
        start, used = words[0][0], 0
        for (word_start, word_end), count in zip(words, counts, strict=True):
            if used and used + count > self.budget:
                windows.append(Span(start, word_start, used))
                start, used = word_start, 0
            used += count
            end = word_end
        windows.append(Span(start, end, used))
        return windows

    def _pack(self, units: list[Span]) -> list[tuple[int, int]]:
        """Greedily pack consecutive units into chunks; start each new chunk with trailing overlap units."""
        chunks: list[tuple[int, int]] = []
        current: list[Span] = []
        used = 0
        for unit in units:
            if current and used + unit.tokens > self.budget:
                chunks.append((current[0].start, current[-1].end))
                current, used = self._overlap_tail(current, unit.tokens)
            current.append(unit)
            used += unit.tokens
        if current:
            chunks.append((current[0].start, current[-1].end))
        return chunks

    def _overlap_tail(self, units: list[Span], incoming: int) -> tuple[list[Span], int]:
        tail: list[Span] = []
        used = 0
        for unit in reversed(units):
            if used + unit.tokens > self.overlap or used + unit.tokens + incoming > self.budget:
                break
            tail.insert(0, unit)
            used += unit.tokens
        return tail, used


def _split(text: str, separator: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    bounds = []
    position = start
    for match in separator.finditer(text, start, end):
        if match.end() > position:
            bounds.append((position, match.end()))
            position = match.end()
    if position < end:
        bounds.append((position, end))
    return [(s, e) for s, e in bounds if text[s:e].strip()]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
