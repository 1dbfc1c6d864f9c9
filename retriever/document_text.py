"""A document's cleaned text put back together from its chunks, for documents stored without it.

Chunks are exact slices of the cleaned text (`text[char_start:char_end]`) and overlap, so the text between
their offsets is known wherever a chunk covers it. What no chunk covers (the blank lines between blocks,
or chunks left out as near-duplicates) comes back as line breaks of the same length, so that every stored
offset still points at its passage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

UNCOVERED = "\n"


class TextSlice(Protocol):
    @property
    def char_start(self) -> int: ...
    @property
    def char_end(self) -> int: ...
    @property
    def text(self) -> str: ...


def reassemble(chunks: Sequence[TextSlice]) -> str:
    """The text the chunks are slices of, uncovered stretches as line breaks."""
    parts: list[str] = []
    position = 0
    for chunk in sorted(chunks, key=lambda c: (c.char_start, c.char_end)):
        if chunk.char_end <= position:
            continue
        if chunk.char_start > position:
            parts.append(UNCOVERED * (chunk.char_start - position))
            position = chunk.char_start
        parts.append(chunk.text[position - chunk.char_start :])
        position = chunk.char_end
    return "".join(parts)
