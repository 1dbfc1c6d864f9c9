"""Loaders: read a file into plain text and a title, or fail with a reason the user can act on."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 50 * 1024 * 1024


class LoadError(ValueError):
    """A file that cannot be ingested; the message says why."""


@dataclass(frozen=True)
class LoadedDocument:
    text: str
    title: str
    file_type: str


def _decode_text(raw: bytes, name: str) -> str:
    if b"\x00" in raw[:8192]:
        raise LoadError(f"{name}: binary content (NUL bytes), not a text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LoadError(f"{name}: not valid UTF-8 text (byte {error.start})") from error
    sample = text[:8192]
    control = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    if sample and control / len(sample) > 0.05:
        raise LoadError(f"{name}: binary content (control characters), not a text file")
    return text


MARKDOWN_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def load_text(path: Path, raw: bytes) -> LoadedDocument:
    return LoadedDocument(text=_decode_text(raw, path.name), title=path.stem, file_type="txt")


def load_markdown(path: Path, raw: bytes) -> LoadedDocument:
    text = _decode_text(raw, path.name)
    heading = MARKDOWN_TITLE.search(text)
    return LoadedDocument(text=text, title=heading.group(1) if heading else path.stem, file_type="md")


LOADERS: dict[str, Callable[[Path, bytes], LoadedDocument]] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
}


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in LOADERS


def load_file(path: Path, raw: bytes | None = None) -> LoadedDocument:
    """Load one file; `raw` lets callers pass bytes they already read (and hashed)."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        supported = ", ".join(sorted(LOADERS))
        raise LoadError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'!r} (supported: {supported})"
        )
    if raw is None:
        raw = read_bytes(path)
    return loader(path, raw)


def read_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LoadError(f"{path.name}: {size} bytes is over the {MAX_FILE_BYTES} byte limit")
    return path.read_bytes()
