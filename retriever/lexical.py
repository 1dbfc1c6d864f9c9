"""BM25 lexical index per collection, keyed by chunk id, updated incrementally and persisted atomically.

Like the vector index it is a cache of SQL: `sync` brings it in line with the chunk ids stored in SQL, and a
write applies its delta. `bm25s` was not used because it precomputes every (term, document) score at index
time with the corpus-wide IDF and document-length average baked in, so adding or removing one chunk means
re-indexing the whole collection. Here postings hold raw term frequencies, document frequencies are kept as
counters, and IDF / length normalization are applied at query time, which makes an add or a remove cost
only the touched postings. Removed chunks leave dead slots that are masked at query time and dropped when
they outnumber the live ones.

Tokenization: lowercase; Latin-script words lose the Lucene English stop words and are Snowball-stemmed;
runs of CJK characters become their overlapping character bigrams plus the characters themselves (Lucene's
CJKBigramFilter with unigrams, the "1+2" indexing Kwok found best for Chinese retrieval in 1997), which
needs no dictionary and matches Chinese words of any length. Bigrams are precise; the characters match a
question that words a fact differently: on the paraphrased half of app/evalsets/zh-llm-notes.json they
raised BM25 hit@5 from 16 to 18 of 24 (literal half: 24 to 23 of 24).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import Stemmer

from retriever.vector_index import IndexMismatchError, atomic_write

logger = logging.getLogger(__name__)

# Lucene's classic English stop set (the one bm25s uses for its English baseline).
ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)
# Kana, CJK ideographs (with extension A and compatibility ideographs) and Hangul syllables.
CJK_CHARACTERS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
TOKEN = re.compile(rf"[{CJK_CHARACTERS}]+|[^\W_{CJK_CHARACTERS}]+")
CJK_RUN = re.compile(rf"[{CJK_CHARACTERS}]")


def cjk_bigrams(run: str) -> list[str]:
    """The overlapping bigrams of a run of CJK characters, or the character itself if it stands alone."""
    return [run[i : i + 2] for i in range(max(1, len(run) - 1))]


def cjk_terms(run: str) -> list[str]:
    """The index terms of a run of CJK characters: its bigrams and its characters."""
    return cjk_bigrams(run) + (list(run) if len(run) > 1 else [])


class Tokenizer:
    """Text → index terms, for documents and queries alike."""

    # Saved with the index: an index built by another tokenizer must be rebuilt, not silently misread.
    signature = "lucene-en-stop+snowball-en+cjk-bigram-unigram/2"

    def __init__(self) -> None:
        self._local = threading.local()  # a PyStemmer object is not safe to share between threads

    def _stemmer(self) -> Stemmer.Stemmer:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer("english")
        return stemmer

    def __call__(self, text: str) -> list[str]:
        words: list[str] = []
        terms: list[str] = []
        for match in TOKEN.finditer(text.lower()):
            run = match.group()
            if CJK_RUN.match(run):
                terms.extend(cjk_terms(run))
            elif run not in ENGLISH_STOP_WORDS:
                words.append(run)
        return self._stemmer().stemWords(words) + terms


class LexicalIndex:
    """Okapi BM25 (Lucene's IDF) over the chunks of one collection."""

    FORMAT = 1

    def __init__(
        self, path: Path | None = None, tokenizer: Tokenizer | None = None, k1: float = 1.2, b: float = 0.75
    ) -> None:
        self.path = path
        self.tokenizer = tokenizer or Tokenizer()
        self.k1 = k1
        self.b = b
        self.lock = threading.RLock()
        self.version = -1
        self._clear()
        if path is not None and path.exists():
            self._load(path)

    def _clear(self) -> None:
        self._vocabulary: dict[str, int] = {}
        self._df: list[int] = []
        self._posting_slots: list[array[int]] = []
        self._posting_tfs: list[array[int]] = []
        self._slot_of: dict[int, int] = {}
        self._slot_ids = array("q")  # chunk id per slot; -1 once removed
        self._slot_lengths = array("i")  # tokens per slot; 0 once removed
        self._slot_terms: list[tuple[np.ndarray, np.ndarray] | None] = []  # (term ids, tfs), for removal
        self._total_length = 0

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._slot_of)

    def ids(self) -> np.ndarray:
        with self.lock:
            return np.fromiter(self._slot_of, dtype=np.int64, count=len(self._slot_of))

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The `k` best (chunk id, BM25 score) pairs with a score above zero; `allowed` restricts the
        candidates to those chunk ids before ranking, so a filter never empties a truncated list."""
        terms = set(self.tokenizer(query))
        with self.lock:
            term_ids = sorted({self._vocabulary.get(term, -1) for term in terms} - {-1})
            if not term_ids or not self._slot_of:
                return []
            scores = self._scores(term_ids)
            slot_ids = np.frombuffer(self._slot_ids, dtype=np.int64).copy()
        keep = slot_ids >= 0
        if allowed is not None:
            keep &= np.isin(slot_ids, allowed)
        scores[~keep] = 0.0
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        return [(int(slot_ids[slot]), float(scores[slot])) for slot in order]

    def _scores(self, term_ids: Sequence[int]) -> np.ndarray:
        """BM25 of every slot; the caller holds the lock (the numpy views below borrow array buffers)."""
        live = len(self._slot_of)
        lengths = np.frombuffer(self._slot_lengths, dtype=np.int32)
        average = self._total_length / live
        scores = np.zeros(len(lengths), dtype=np.float32)
        for term in term_ids:
            df = self._df[term]
            if df == 0:
                continue
            idf = math.log(1.0 + (live - df + 0.5) / (df + 0.5))
            slots = np.frombuffer(self._posting_slots[term], dtype=np.int32)
            tfs = np.frombuffer(self._posting_tfs[term], dtype=np.int32).astype(np.float32)
            norm = self.k1 * (1.0 - self.b + self.b * lengths[slots] / average)
            # A slot occurs once per posting list, so fancy-index += is safe (no repeated indices).
            scores[slots] += idf * tfs * (self.k1 + 1.0) / (tfs + norm)
        return scores

    # -- writing -----------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray | Sequence[int], texts: Sequence[str]) -> None:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        analyzed = [Counter(self.tokenizer(text)) for text in texts]
        with self.lock:
            for chunk_id, counts in zip(ids, analyzed, strict=True):
                self._add_one(int(chunk_id), counts)

    def _add_one(self, chunk_id: int, counts: Counter[str]) -> None:
        if chunk_id in self._slot_of:
            self._remove_one(chunk_id)
        slot = len(self._slot_ids)
        term_ids = np.empty(len(counts), dtype=np.int32)
        tfs = np.empty(len(counts), dtype=np.int32)
        for position, (term, tf) in enumerate(counts.items()):
            term_id = self._vocabulary.get(term)
            if term_id is None:
                term_id = self._vocabulary[term] = len(self._df)
                self._df.append(0)
                self._posting_slots.append(array("i"))
                self._posting_tfs.append(array("i"))
            self._df[term_id] += 1
            self._posting_slots[term_id].append(slot)
            self._posting_tfs[term_id].append(tf)
            term_ids[position], tfs[position] = term_id, tf
        length = int(tfs.sum())
        self._slot_of[chunk_id] = slot
        self._slot_ids.append(chunk_id)
        self._slot_lengths.append(length)
        self._slot_terms.append((term_ids, tfs))
        self._total_length += length

    def remove(self, ids: Iterable[int]) -> int:
        removed = 0
        with self.lock:
            for chunk_id in ids:
                removed += self._remove_one(int(chunk_id))
            if len(self._slot_ids) > 1024 and len(self._slot_ids) > 2 * len(self._slot_of):
                self._compact()
        return removed

    def _remove_one(self, chunk_id: int) -> int:
        slot = self._slot_of.pop(chunk_id, None)
        if slot is None:
            return 0
        terms = self._slot_terms[slot]
        assert terms is not None
        for term_id in terms[0].tolist():
            self._df[term_id] -= 1
        self._total_length -= self._slot_lengths[slot]
        self._slot_ids[slot] = -1
        self._slot_lengths[slot] = 0
        self._slot_terms[slot] = None
        return 1

    def _compact(self) -> None:
        """Renumber the live slots densely and rebuild the postings without the dead ones."""
        live = [(int(self._slot_ids[s]), t) for s, t in enumerate(self._slot_terms) if t is not None]
        vocabulary = self._vocabulary
        self._clear()
        self._restore(vocabulary, live)

    def _restore(
        self, vocabulary: dict[str, int], slots: Sequence[tuple[int, tuple[np.ndarray, np.ndarray]]]
    ) -> None:
        """Fill an empty index from per-slot (term ids, tfs), postings built in one vectorized pass."""
        self._vocabulary = vocabulary
        n_terms = len(vocabulary)
        self._slot_of = {chunk_id: slot for slot, (chunk_id, _) in enumerate(slots)}
        self._slot_ids = array("q", [chunk_id for chunk_id, _ in slots])
        self._slot_terms = [terms for _, terms in slots]
        lengths = [int(tfs.sum()) for _, (_, tfs) in slots]
        self._slot_lengths = array("i", lengths)
        self._total_length = sum(lengths)
        if slots:
            all_terms = np.concatenate([terms for _, (terms, _) in slots])
            all_tfs = np.concatenate([tfs for _, (_, tfs) in slots])
            all_slots = np.repeat(np.arange(len(slots), dtype=np.int32), [len(t) for _, (t, _) in slots])
        else:
            all_terms = all_tfs = all_slots = np.zeros(0, dtype=np.int32)
        order = np.argsort(all_terms, kind="stable")  # stable: postings stay in slot order
        bounds = np.searchsorted(all_terms[order], np.arange(n_terms + 1))
        sorted_slots = all_slots[order].astype(np.int32)
        sorted_tfs = all_tfs[order].astype(np.int32)
        self._df = np.diff(bounds).tolist()
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        self._posting_slots = [array("i", sorted_slots[s:e].tobytes()) for s, e in spans]
        self._posting_tfs = [array("i", sorted_tfs[s:e].tobytes()) for s, e in spans]

    def sync(
        self,
        wanted_ids: Iterable[int],
        load_texts: Callable[[list[int]], tuple[np.ndarray, Sequence[str]]],
    ) -> tuple[int, int]:
        """Make the index hold exactly `wanted_ids`; returns (added, removed)."""
        wanted = set(wanted_ids)
        with self.lock:
            present = set(self._slot_of)
            removed = self.remove(present - wanted)
            missing = sorted(wanted - present)
            if missing:
                self.add(*load_texts(missing))
        return len(missing), removed

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, version: int) -> None:
        """Write to a temporary file, fsync, then rename, so a crash never leaves a torn index."""
        if self.path is None:
            self.version = version
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            live = [(int(self._slot_ids[s]), t) for s, t in enumerate(self._slot_terms) if t is not None]
            terms = [t for _, (t, _) in live]
            meta = {"format": self.FORMAT, "tokenizer": self.tokenizer.signature, "version": version}
            buffer = io.BytesIO()
            np.savez(
                buffer,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                vocabulary=np.frombuffer(json.dumps(list(self._vocabulary)).encode(), dtype=np.uint8),
                chunk_ids=np.asarray([chunk_id for chunk_id, _ in live], dtype=np.int64),
                lengths=np.asarray([len(t) for t in terms], dtype=np.int64),
                terms=np.concatenate(terms) if terms else np.zeros(0, dtype=np.int32),
                tfs=np.concatenate([f for _, (_, f) in live]) if live else np.zeros(0, dtype=np.int32),
            )
            atomic_write(self.path, buffer.getvalue())
            self.version = version

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes())
                vocabulary_list = json.loads(data["vocabulary"].tobytes())
                chunk_ids, lengths = data["chunk_ids"], data["lengths"]
                terms, tfs = data["terms"].astype(np.int32), data["tfs"].astype(np.int32)
        except (OSError, ValueError, KeyError) as error:
            raise IndexMismatchError(
                f"lexical index {path} is corrupt ({error}); run `archivist reindex` to rebuild it from SQL"
            ) from error
        if meta.get("format") != self.FORMAT:
            raise IndexMismatchError(
                f"lexical index {path} has format {meta.get('format')}, not {self.FORMAT}; "
                "run `archivist reindex` to rebuild it from SQL"
            )
        if meta.get("tokenizer") != self.tokenizer.signature:
            # Terms of another tokenizer must not be searched; the index stays empty at version -1, so the
            # knowledge base rebuilds it from SQL before its first search, as after a lost file.
            logger.info("lexical index %s was built by another tokenizer: it is rebuilt from SQL", path)
            return
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        slots = [
            (int(chunk_id), (terms[s:e], tfs[s:e]))
            for chunk_id, s, e in zip(
                chunk_ids.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True
            )
        ]
        self._restore({term: i for i, term in enumerate(vocabulary_list)}, slots)
        self.version = int(meta["version"])
