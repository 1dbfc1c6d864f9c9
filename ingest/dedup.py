"""Duplicate detection: exact (SHA-256 of the cleaned text) and near-duplicate (MinHash + LSH).

Shingles are 3-grams of words, where each CJK character counts as a word, so the same measure works for
English and for Chinese. A MinHash signature (128 values) estimates the Jaccard similarity of two shingle
sets; locality-sensitive hashing over bands of the signature finds the candidates worth comparing, so a
lookup costs a few probes however many signatures are indexed. Signatures are stored in SQL with documents
and chunks, and so are the band keys of the chunks' (`retriever.bands`, the same keys `NearDuplicateIndex`
uses in memory): later ingests compare against everything already in the collection, and find a chunk's
stored candidates by an index lookup of its keys.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from retriever.bands import band_keys

NUM_PERM = 128
SHINGLE = 3
# A word of Latin (or any spaced) script, or one CJK ideograph, kana or hangul syllable.
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+")
_RNG = np.random.default_rng(20240611)  # fixed: signatures are stored and compared across runs
_A = _RNG.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _RNG.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)

Key = TypeVar("Key")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Signature:
    values: np.ndarray  # (NUM_PERM,) uint32
    shingles: int  # how many distinct shingles it summarizes; 0 when loaded from storage

    def to_bytes(self) -> bytes:
        return self.values.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Signature:
        return cls(np.frombuffer(blob, dtype="<u4").astype(np.uint32), 0)

    def similarity(self, other: Signature) -> float:
        return float(np.mean(self.values == other.values))

    def union(self, other: Signature) -> Signature:
        """The signature of the union of both shingle sets (MinHash of a union is the element-wise min)."""
        return Signature(np.minimum(self.values, other.values), self.shingles + other.shingles)

    def band_keys(self, rows: int) -> list[int]:
        """The LSH key of each band of `rows` values (`retriever.bands`): equal bands, equal keys."""
        return band_keys(self.to_bytes(), rows)


def shingle_hashes(text: str) -> np.ndarray:
    """Distinct 64-bit hashes of the text's word 3-grams (fewer words: one shingle of all of them)."""
    words = TOKEN.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.uint64)
    # crc32, not hash(): signatures are stored, and Python salts str hashes per process.
    ids = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
    n = min(SHINGLE, len(ids))
    combined = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for offset in range(n):
        combined = (combined ^ ids[offset : len(ids) - n + 1 + offset]) * _MIX[offset]
    return np.unique(combined)


def signature(text: str) -> Signature | None:
    hashes = shingle_hashes(text)
    if len(hashes) == 0:
        return None
    # Multiply-shift hashing, one (a, b) per permutation; uint64 arithmetic wraps, which is what it needs.
    permuted = (hashes[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)
    return Signature(permuted.min(axis=0).astype(np.uint32), len(hashes))


def lsh_shape(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) whose candidate curve 1 - (1 - s^rows)^bands best separates similarities below and
    above `threshold` (least area of false positives plus false negatives)."""
    grid = np.linspace(0.0, 1.0, 201)
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        probability = 1.0 - (1.0 - grid**rows) ** bands
        error = float(np.sum(np.where(grid < threshold, probability, 1.0 - probability)))
        if best is None or error < best[0]:
            best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


def best_match(
    sig: Signature,
    candidates: Iterable[tuple[Key, Signature]],
    threshold: float,
    ignore: Callable[[Key], bool] | None = None,
) -> tuple[Key, float] | None:
    """The candidate most similar to `sig` (estimated Jaccard >= threshold; the first of equals), skipping
    `ignore`d keys."""
    best: tuple[Key, float] | None = None
    for key, other in candidates:
        if ignore is not None and ignore(key):
            continue
        similarity = sig.similarity(other)
        if similarity >= threshold and (best is None or similarity > best[1]):
            best = (key, similarity)
    return best


class NearDuplicateIndex(Generic[Key]):
    """MinHash LSH in memory: add (key, signature) pairs, find the most similar earlier key at or above a
    threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        _, self.rows = lsh_shape(threshold)  # values per band, which gives the bands
        self._buckets: defaultdict[int, list[int]] = defaultdict(list)  # band key -> positions
        self._keys: list[Key] = []
        self._signatures: list[Signature] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Key, sig: Signature) -> None:
        position = len(self._keys)
        self._keys.append(key)
        self._signatures.append(sig)
        for band_key in sig.band_keys(self.rows):
            self._buckets[band_key].append(position)

    def candidates(self, sig: Signature) -> Iterator[tuple[Key, Signature]]:
        """The indexed pairs sharing a band with `sig`, in the order they were added."""
        positions: set[int] = set()
        for band_key in sig.band_keys(self.rows):
            positions.update(self._buckets.get(band_key, ()))
        for position in sorted(positions):
            yield self._keys[position], self._signatures[position]

    def best_match(
        self, sig: Signature, ignore: Callable[[Key], bool] | None = None
    ) -> tuple[Key, float] | None:
        """The indexed key most similar to `sig` (estimated Jaccard >= threshold), skipping `ignore`d keys."""
        return best_match(sig, self.candidates(sig), self.threshold, ignore)
