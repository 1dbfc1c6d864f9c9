"""Copy-constrained decoding: a reply that copies its words from given texts.

A RAG answer should be the words of a passage. `CopySpans` (a field of `SamplingParams`) names the texts to
copy from; `CopyState` follows one reply token by token and says which tokens may come next:
- at first, any token that starts a span of a source or starts one of the whole `replies` (from their
  beginning only, e.g. the no-answer sentence); a leading space is free;
- then the tokens that continue one of the spans matched so far;
- once a token has been copied, also the end of the reply (a stop token) and any token that opens the free
  tail (it starts with `tail_opener`, the citation ` [2]`), after which at most `max_tail_tokens` tokens
  follow unconstrained before the reply must end.

A span starts and ends at a character, and never inside a word of ASCII letters and digits (`roncos` is
no answer); Chinese, written without spaces, may be cut at any character.

Matching is on bytes, so the tokens of a byte-level vocabulary that split a character (Chinese in an
English BPE vocabulary) copy it as well. `CopyTable` is the vocabulary as bytes, built once per tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_ASCII_WORD = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_LONGEST_PIECE = 64  # bytes; longer vocabulary entries (whitespace runs) are never needed to copy text


@dataclass(frozen=True)
class CopySpans:
    sources: tuple[str, ...]
    replies: tuple[str, ...] = ()
    tail_opener: str = "["
    max_tail_tokens: int = 8

    def __post_init__(self) -> None:
        if not any(self.sources) and not any(self.replies):
            raise ValueError("copy_spans needs at least one non-empty source or reply")
        if not self.tail_opener or self.max_tail_tokens < 0:
            raise ValueError("copy_spans needs a non-empty tail_opener and max_tail_tokens >= 0")


class CopyTable:
    """The vocabulary as bytes: each token's bytes (None for special tokens), the tokens by their bytes, and
    every prefix of every token (to stop extending a candidate piece as soon as no token starts with it)."""

    def __init__(self, pieces: Sequence[bytes | None]) -> None:
        self.pieces = list(pieces)
        self.by_bytes: dict[bytes, list[int]] = {}
        self.prefixes: set[bytes] = set()
        for token, piece in enumerate(pieces):
            if not piece or len(piece) > _LONGEST_PIECE:
                continue
            self.by_bytes.setdefault(piece, []).append(token)
            self.prefixes.update(piece[:k] for k in range(1, len(piece) + 1))
        self._openers: dict[bytes, list[int]] = {}

    def openers(self, opener: bytes) -> list[int]:
        """Tokens whose bytes, leading whitespace aside, start with `opener`."""
        if opener not in self._openers:
            self._openers[opener] = [
                t for t, piece in enumerate(self.pieces) if piece and piece.lstrip().startswith(opener)
            ]
        return self._openers[opener]

    def tokens_starting(self, text: bytes, at: int, allowed: set[int], lead: bytes = b"") -> None:
        """Add to `allowed` every token whose bytes are `lead + text[at:at + k]` for some k >= 1."""
        end = min(len(text), at + _LONGEST_PIECE - len(lead))
        for stop in range(at + 1, end + 1):
            piece = lead + text[at:stop]
            if piece not in self.prefixes:
                return
            allowed.update(self.by_bytes.get(piece, ()))


def _is_char_start(text: bytes, at: int) -> bool:
    return at < len(text) and text[at] & 0xC0 != 0x80


def _is_word_edge(text: bytes, at: int) -> bool:
    """Whether a span may start or end at `at`: not between two ASCII letters or digits (a word of a
    script without spaces, like Chinese, may be cut anywhere)."""
    return not (0 < at < len(text) and text[at - 1] in _ASCII_WORD and text[at] in _ASCII_WORD)


def _occurrences(text: bytes, piece: bytes) -> Iterable[int]:
    at = text.find(piece)
    while at >= 0:
        if _is_char_start(text, at) and _is_word_edge(text, at):
            yield at
        at = text.find(piece, at + 1)


class CopyState:
    """Where one reply stands in its `CopySpans`: the spans its copied bytes match (source, end offset), or
    the free tail's length once the tail has opened."""

    def __init__(self, spans: CopySpans, table: CopyTable, stop_ids: Iterable[int]) -> None:
        self.table = table
        # The sources, then the whole replies: a text's index says which it is.
        self.texts = [t.encode() for t in (*spans.sources, *spans.replies)]
        self.source_count = len(spans.sources)
        self.opener = spans.tail_opener.encode()
        self.max_tail_tokens = spans.max_tail_tokens
        self.stop_ids = sorted(set(stop_ids))
        self.heads: set[tuple[int, int]] | None = None  # None until the first token
        self.tail: int | None = None  # tokens generated since the tail opened

    def allowed(self) -> list[int] | None:
        """The tokens that may come next (never none of them); None when any token may."""
        if self.tail is not None:
            return None if self.tail < self.max_tail_tokens or not self.stop_ids else self.stop_ids
        allowed: set[int] = set()
        if self.heads is None:
            for index, text in enumerate(self.texts):
                starts = range(len(text)) if index < self.source_count else range(1)
                for at in starts:
                    if _is_char_start(text, at) and _is_word_edge(text, at):
                        self.table.tokens_starting(text, at, allowed)
                        self.table.tokens_starting(text, at, allowed, lead=b" ")
            return sorted(allowed) or None
        texts = self.texts
        for index, end in self.heads:
            self.table.tokens_starting(texts[index], end, allowed)
        if not self.heads or any(_is_word_edge(texts[index], end) for index, end in self.heads):
            allowed.update(self.table.openers(self.opener))
            allowed.update(self.stop_ids)
        return sorted(allowed) or None

    def advance(self, token: int) -> None:
        """Follow the reply past `token` (one of the tokens `allowed` offered)."""
        if self.tail is not None:
            self.tail += 1
            return
        piece = self.table.pieces[token] if 0 <= token < len(self.table.pieces) else None
        if piece is None:
            self.heads = set()
            return
        if self.heads is not None and piece.lstrip().startswith(self.opener):
            self.tail = 0
            return
        texts = self.texts
        if self.heads is None:
            self.heads = set()
            variants = [piece, piece[1:]] if piece.startswith(b" ") and len(piece) > 1 else [piece]
            for index, text in enumerate(texts):
                for variant in variants:
                    ends = {at + len(variant) for at in _occurrences(text, variant)}
                    if index >= self.source_count:
                        ends = {len(variant)} if text.startswith(variant) else set()
                    self.heads.update((index, end) for end in ends)
            return
        self.heads = {(i, end + len(piece)) for i, end in self.heads if texts[i].startswith(piece, end)}
