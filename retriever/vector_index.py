"""FAISS vector index per collection, keyed by chunk id and persisted atomically under the data dir.

The index is a cache of the embeddings stored in SQL: `sync` brings it back in line with a set of ids
from SQL (adding what is missing, removing what is gone), so a crash between a SQL commit and an index save
never leaves a deleted chunk retrievable.

Its type follows the collection's size: an exhaustive inner-product scan up to `flat_max_vectors`, then an
inverted file (`IndexIVFFlat`, about 4·√n lists, `nprobe` of them searched). The exhaustive index stores
the vectors in float16 (`IndexScalarQuantizer` QT_fp16 under an id map): every vector is still scored, the
scan reads half the memory (2x faster at 100k vectors), and the rounding (~1e-4 per score, below the bf16
embedder's own noise) leaves recall@10 against a float32 `IndexFlatIP` at 1.000 in `bench/retrieval.py`.
IVF rather than HNSW because FAISS's HNSW cannot remove vectors, and a delete here must really delete.
The switch back to Flat waits until the collection shrinks to half the threshold, so a collection that
hovers around the threshold is not retrained on every write. When FAISS sees a GPU, searches run on a GPU
replica made with `index_cpu_to_gpu`; when only torch sees one (the registry's faiss-cpu, or an index
faiss-gpu cannot clone), on an exact copy on the device (`retriever.device_search`). Either way the CPU index
stays the master that is written and saved.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from retriever.device_search import DeviceExactSearch

log = logging.getLogger(__name__)

_gpu_resources: Any = None
SEARCH_DEVICE = "cuda"  # where the exact device copy lives when torch sees a GPU


class IndexMismatchError(RuntimeError):
    """The index on disk is unreadable or was built by another embedder."""


def ivf_lists(size: int) -> int:
    """Number of IVF lists for `size` vectors: the FAISS guideline of about 4·√n."""
    return max(16, min(65536, int(4 * math.sqrt(size))))


class VectorIndex:
    evaluates_filters = False  # searches take the ids of the chunks that pass them (`retriever.store`)

    def __init__(
        self,
        dimension: int,
        path: Path | None = None,
        flat_max_vectors: int = 100_000,
        nprobe: int = 32,
        use_gpu: bool = True,
    ) -> None:
        self.dimension = dimension
        self.path = path
        self.flat_max_vectors = flat_max_vectors
        self.nprobe = nprobe
        self.use_gpu = use_gpu
        self.lock = threading.RLock()
        self._index: Any = self._flat()
        self._gpu_index: Any = None  # search replica, dropped on every write
        self._device_copy: DeviceExactSearch | None = None  # the same, when only torch sees the GPU
        self._faiss_gpu = True  # False once faiss-gpu failed to clone the index
        self.version = -1  # the collection version this index reflects; -1 = unknown
        if path is not None and path.exists():
            self._load(path)

    def _flat(self) -> Any:
        fp16 = faiss.ScalarQuantizer.QT_fp16
        scan = faiss.IndexScalarQuantizer(self.dimension, fp16, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(scan)

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
        if isinstance(index, faiss.IndexIVF):
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            index.nprobe = self.nprobe
        elif not isinstance(index, faiss.IndexIDMap2):
            index = faiss.IndexIDMap2(index)
        self._index = index
        version_file = path.with_suffix(".version")
        self.version = int(version_file.read_text()) if version_file.exists() else -1

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """`flat` or `ivf<lists>`, for reports and benchmarks."""
        return f"ivf{self._index.nlist}" if self._is_ivf else "flat"

    @property
    def _is_ivf(self) -> bool:
        return isinstance(self._index, faiss.IndexIVF)

    def ids(self) -> np.ndarray:
        with self.lock:
            if not self._is_ivf:
                return faiss.vector_to_array(self._index.id_map).astype(np.int64)
            lists = self._index.invlists
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(lists.nlist)
                if lists.list_size(i)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The `k` nearest (chunk id, inner product) pairs. `allowed` restricts the search to those chunk
        ids inside FAISS (an IDSelector), so a filter never empties an already truncated list."""
        vector = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        with self.lock:
            if self.size == 0:
                return []
            k = min(k, self.size)
            device_copy = self._device_search()
            if device_copy is not None:
                return device_copy.search(vector, k, allowed)
            if allowed is None:
                scores, ids = self._search_index().search(vector, k)
            else:
                selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
                # A selective filter leaves few allowed vectors in the nprobe nearest lists: probe them all
                # (cost: an id check per vector, distances only for allowed ones) to stay exact.
                nprobe = self._index.nlist if self._is_ivf and len(allowed) * 10 < self.size else self.nprobe
                scores, ids = self._index.search(vector, k, params=self._params(selector, nprobe))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    def _params(self, selector: Any, nprobe: int) -> Any:
        if self._is_ivf:
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]
        return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]

    def _device_search(self) -> DeviceExactSearch | None:
        """The exact copy on the GPU, when searches should run there and FAISS cannot run them."""
        if not self.use_gpu or not torch.cuda.is_available():
            return None
        if faiss.get_num_gpus() > 0 and self._search_index() is not self._index:
            return None  # faiss-gpu's replica serves
        if self._device_copy is None:
            ids, vectors = self._contents()
            self._device_copy = DeviceExactSearch(ids, vectors, SEARCH_DEVICE)
        return self._device_copy

    def _search_index(self) -> Any:
        """The GPU replica when FAISS has a GPU (made again after each write), else the CPU index.
        Filtered searches always use the CPU index: FAISS GPU indexes take no IDSelector."""
        global _gpu_resources
        if not self.use_gpu or not self._faiss_gpu or faiss.get_num_gpus() == 0:
            return self._index
        if self._gpu_index is None:
            try:
                if _gpu_resources is None:
                    _gpu_resources = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources, 0, self._index)
            except RuntimeError as error:  # e.g. an index type this faiss-gpu build cannot clone
                log.warning("FAISS cannot put this vector index on the GPU: %s", error)
                self._faiss_gpu = False
                return self._index
        return self._gpu_index

    # -- writing -----------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index expects {self.dimension}")
        with self.lock:
            self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
            self._gpu_index = self._device_copy = None
            self._fit_type()

    def remove(self, ids: Iterable[int]) -> int:
        id_array = np.fromiter(ids, dtype=np.int64)
        if len(id_array) == 0:
            return 0
        with self.lock:
            # IVF's id hashtable can only remove through an explicit id array.
            selector = faiss.IDSelectorArray if self._is_ivf else faiss.IDSelectorBatch
            removed = int(self._index.remove_ids(selector(id_array)))
            self._gpu_index = self._device_copy = None
            self._fit_type()
        return removed

    def _fit_type(self) -> None:
        """Switch between Flat and IVF as the size crosses the thresholds; retrain IVF once the collection
        has grown enough that about 4·√n lists means at least twice the lists it was trained with."""
        size = self.size
        if self._is_ivf:
            shrunk = size < self.flat_max_vectors // 2
            grown = ivf_lists(size) >= 2 * self._index.nlist
            if not (shrunk or grown):
                return
        elif size <= self.flat_max_vectors:
            return
        ids, vectors = self._contents()
        if size < self.flat_max_vectors // 2:
            index = self._flat()
        else:
            index = self._train_ivf(vectors)
        index.add_with_ids(vectors, ids)
        self._index = index
        self._gpu_index = None

    def _train_ivf(self, vectors: np.ndarray) -> Any:
        nlist = ivf_lists(len(vectors))
        quantizer = faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexIVFFlat(quantizer, self.dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample: 64 points per list is plenty (FAISS itself caps at 256) and keeps the
        # one-off training to seconds at a few hundred thousand vectors.
        sample = vectors
        if len(vectors) > 64 * nlist:
            rows = np.random.default_rng(0).choice(len(vectors), 64 * nlist, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        index.nprobe = self.nprobe
        log.info("vector index switched to IVF with %d lists for %d vectors", nlist, len(vectors))
        return index

    def _contents(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) held, read back from the index itself (flat storage or IVF-Flat codes)."""
        ids = self.ids()
        if self._is_ivf:
            vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids]) if len(ids) else None
        else:
            vectors = self._index.index.reconstruct_n(0, self.size)  # in id-map order, like ids()
        if vectors is None:
            vectors = np.zeros((0, self.dimension), dtype=np.float32)
        return ids, np.ascontiguousarray(vectors, dtype=np.float32).copy()

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
            atomic_write(self.path, faiss.serialize_index(self._index).tobytes())
            atomic_write(self.path.with_suffix(".version"), str(version).encode())
            self.version = version


def atomic_write(path: Path, payload: bytes) -> None:
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
