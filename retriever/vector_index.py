"""FAISS vector index per collection, keyed by chunk id and persisted atomically under the data dir.

The index is a cache of the embeddings stored in SQL: `sync` brings it back in line with a set of ids
from SQL (adding what is missing, removing what is gone), so a crash between a SQL commit and an index save
never leaves a deleted chunk retrievable.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np


class IndexMismatchError(RuntimeError):
    """The index on disk is unreadable or was built by another embedder."""


class VectorIndex:
    def __init__(self, dimension: int, path: Path | None = None) -> None:
        self.dimension = dimension
        self.path = path
        self.lock = threading.RLock()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self.version = -1  # the collection version this index reflects; -1 = unknown
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise IndexMismatchError(
                f"vector index {path} is corrupt ({error}); run `archivist reindex` to rebuild it from SQL"
            ) from error
        if index.d != self.dimension:
            raise IndexMismatchError(
                f"vector index {path} has dimension {index.d} but the embedder produces {self.dimension}; "
                "it was built by another embedder: run `archivist reindex` to rebuild it from SQL"
            )
        self._index = faiss.IndexIDMap2(index) if not isinstance(index, faiss.IndexIDMap2) else index
        version_file = path.with_suffix(".version")
        self.version = int(version_file.read_text()) if version_file.exists() else -1

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        with self.lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index expects {self.dimension}")
        with self.lock:
            self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> int:
        id_array = np.fromiter(ids, dtype=np.int64)
        if len(id_array) == 0:
            return 0
        with self.lock:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(id_array)))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        with self.lock:
            if self.size == 0:
                return []
            scores, ids = self._index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    def sync(
        self, wanted_ids: Iterable[int], load_vectors: Callable[[list[int]], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[int, int]:
        """Make the index hold exactly `wanted_ids`; returns (added, removed)."""
        wanted = set(wanted_ids)
        with self.lock:
            present = set(self.ids().tolist())
            stale = present - wanted
            missing = sorted(wanted - present)
            removed = self.remove(stale)
            if missing:
                ids, vectors = load_vectors(missing)
                self.add(ids, vectors)
        return len(missing), removed

    def save(self, version: int) -> None:
        """Write to a temporary file, fsync, then rename, so a crash never leaves a torn index."""
        if self.path is None:
            self.version = version
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            _atomic_write(self.path, faiss.serialize_index(self._index).tobytes())
            _atomic_write(self.path.with_suffix(".version"), str(version).encode())
            self.version = version


def _atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
