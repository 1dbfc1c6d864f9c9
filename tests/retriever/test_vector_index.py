"""The FAISS index: type by size (Flat → IVF → Flat), filters inside the search, persistence, GPU replica."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from retriever.vector_index import VectorIndex, ivf_lists

DIMENSION = 16


def unit_vectors(count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return ids[np.argsort(-(vectors @ query), kind="stable")[:k]].tolist()


def test_ivf_lists_follow_four_root_n() -> None:
    assert ivf_lists(100_000) == 1264 and ivf_lists(10) == 16


def test_switches_to_ivf_above_the_threshold_and_back(tmp_path: Path) -> None:
    vectors, ids = unit_vectors(3000), np.arange(3000, dtype=np.int64) * 3 + 1
    index = VectorIndex(DIMENSION, tmp_path / "c.faiss", flat_max_vectors=1000, nprobe=8)
    index.add(ids[:1000], vectors[:1000])
    assert index.kind == "flat"
    index.add(ids[1000:], vectors[1000:])
    assert index.kind == f"ivf{ivf_lists(3000)}" and index.size == 3000
    assert sorted(index.ids().tolist()) == ids.tolist()
    hits = [index.search(vectors[i], 1)[0][0] for i in range(0, 3000, 100)]
    assert hits == ids[::100].tolist()  # a stored vector finds itself

    index.save(5)
    loaded = VectorIndex(DIMENSION, tmp_path / "c.faiss", flat_max_vectors=1000, nprobe=8)
    assert (loaded.kind, loaded.size, loaded.version) == (index.kind, 3000, 5)
    assert loaded.remove(ids[:2600]) == 2600  # below half the threshold: back to exact search
    assert loaded.kind == "flat" and sorted(loaded.ids().tolist()) == ids[2600:].tolist()
    expected = exact(vectors[2600:], ids[2600:], vectors[2700], 3)
    assert [i for i, _ in loaded.search(vectors[2700], 3)] == expected


@pytest.mark.parametrize("threshold", [10**6, 500])
def test_filters_are_applied_inside_the_search(threshold: int) -> None:
    vectors, ids = unit_vectors(2000, seed=1), np.arange(2000, dtype=np.int64)
    index = VectorIndex(DIMENSION, flat_max_vectors=threshold, nprobe=4)
    index.add(ids, vectors)
    query = unit_vectors(1, seed=2)[0]
    allowed = ids[1500:1510]  # ten vectors, almost surely none of them among the unfiltered top 10
    assert [i for i, _ in index.search(query, 5, allowed)] == exact(vectors[allowed], allowed, query, 5)
    assert index.search(query, 5, np.array([], dtype=np.int64)) == []


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="no GPU visible to FAISS (faiss-gpu + CUDA needed)")
def test_gpu_replica_returns_what_the_cpu_index_returns() -> None:
    vectors, ids = unit_vectors(5000, seed=3), np.arange(5000, dtype=np.int64)
    gpu, cpu = VectorIndex(DIMENSION), VectorIndex(DIMENSION, use_gpu=False)
    for index in (gpu, cpu):
        index.add(ids, vectors)
    for query in unit_vectors(20, seed=4):
        assert [i for i, _ in gpu.search(query, 10)] == [i for i, _ in cpu.search(query, 10)]
    assert gpu._gpu_index is not None
