"""Turning a growing list of token ids into text deltas: UTF-8 safe and stop-string aware (pure Python).

Byte-level BPE splits a multi-byte character (most Chinese ones) across tokens, and decoding half of it yields
U+FFFD. We decode a short window of recent tokens and release text only once the window decodes cleanly
(the approach of vLLM's incremental detokenizer). A few prompt tokens seed the window so that tokenizers that
strip a leading space (SentencePiece) still produce the space of the first generated word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(
        self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int], stop: Sequence[str] = ()
    ) -> None:
        self._decode = decode
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""  # the answer so far (cut before a stop string once one is found)
        self._emitted = 0  # characters of `text` already handed out

    def add(self, token_id: int) -> tuple[str, bool]:
        """Feed one generated token; returns (text safe to emit now, whether a stop string was hit)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        if self._stop:
            # A stop string can only end in the new text, so search from where its longest start could be.
            search_from = max(0, self._emitted - self._hold)
            hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self._release(len(self.text)), True
        # Hold back a tail that could still grow into a stop string.
        return self._release(len(self.text) - self._hold if self._stop else len(self.text)), False

    def flush(self) -> str:
        """The held-back tail, at the end of generation."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta
