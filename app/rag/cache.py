"""The answer cache: the same question about the same version of a collection, with the same settings,
gets the stored answer instead of a new generation.

Keys hold the collection's version, which every change to the collection bumps (in SQL, by whichever
process made it), so an answer about an older version is never served; storing a newer version's answer
evicts the older ones of that collection.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from app.rag.pipeline import Answer

SPACE = re.compile(r"\s+")


def normalize_question(question: str) -> str:
    """Case, width, spacing and trailing punctuation do not change what is asked."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return SPACE.sub(" ", text).strip().rstrip("?!.。？！ ")


@dataclass(frozen=True)
class CacheKey:
    collection: str
    version: int
    question: str  # normalized
    settings: str  # everything else that shapes the answer, serialized


class CacheCounters:
    """This process's hits and misses, for the metrics (each replica reports its own)."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class AnswerCache(CacheCounters):
    """The embedded default: this process's memory, the least recently used answer evicted first."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, Answer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Answer | None:
        with self._lock:
            answer = self._entries.get(key)
            if answer is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return answer

    def put(self, key: CacheKey, answer: Answer) -> None:
        if not self.max_entries:
            return
        with self._lock:
            stale = [k for k in self._entries if k.collection == key.collection and k.version < key.version]
            for old in stale:
                del self._entries[old]
            self._entries[key] = answer
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
