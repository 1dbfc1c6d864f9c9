"""Text cleaning before chunking: Unicode normalization, control characters, runs of blank space."""

from __future__ import annotations

import re
import unicodedata

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
TRAILING_SPACE = re.compile(r"[ \t]+\n")
INLINE_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u3000]{2,}")  # leading indentation is kept
BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = CONTROL.sub("", text)
    text = TRAILING_SPACE.sub("\n", text)
    text = INLINE_SPACE.sub(" ", text)
    text = BLANK_LINES.sub("\n\n", text)
    return text.strip()
