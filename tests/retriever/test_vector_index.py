"""The FAISS index: type by size (Flat → IVF → Flat), filters inside the search, persistence, GPU replica."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from retriever.device_search import DeviceExactSearch
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


class FakeGpuFaiss:
    """faiss-gpu's API as `VectorIndex` calls it (`get_num_gpus`, `StandardGpuResources`, `index_cpu_to_gpu`),
    recording the calls; the "GPU replica" searches the CPU index it was cloned from, as a real one would.
    Only for the machines without faiss-gpu; the test above runs the real thing where it can."""

    def __init__(self, clone_error: str | None = None) -> None:
        self.clones: list[tuple[object, int, object]] = []
        self.replica_searches = 0
        self.clone_error = clone_error

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import retriever.vector_index as module

        monkeypatch.setattr(module, "_gpu_resources", None)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "gpu-resources", raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self.index_cpu_to_gpu, raising=False)

    def index_cpu_to_gpu(self, resources: object, device: int, index: object) -> object:
        if self.clone_error:
            raise RuntimeError(self.clone_error)
        self.clones.append((resources, device, index))
        fake = self

        class Replica:
            def search(self, vectors: np.ndarray, k: int):  # type: ignore[no-untyped-def]
                fake.replica_searches += 1
                return index.search(vectors, k)  # type: ignore[attr-defined]

        return Replica()


def test_gpu_branch_against_a_faiss_api_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpuFaiss()
    fake.install(monkeypatch)
    vectors, ids = unit_vectors(300, seed=5), np.arange(300, dtype=np.int64)
    index = VectorIndex(DIMENSION)
    index.add(ids[:200], vectors[:200])
    query = vectors[7]
    assert index.search(query, 3)[0][0] == 7
    assert index.search(query, 3)[0][0] == 7
    assert [(r, d) for r, d, _ in fake.clones] == [("gpu-resources", 0)]  # cloned once, to device 0
    assert fake.replica_searches == 2
    index.add(ids[200:], vectors[200:])  # a write drops the replica: the next search clones the new index
    assert index.search(vectors[250], 1)[0][0] == 250 and len(fake.clones) == 2
    assert index.search(query, 3, allowed=ids[100:110])[0][0] in range(100, 110)  # filters: the CPU index
    assert fake.replica_searches == 3
    assert index.remove([250]) == 1 and index.search(vectors[250], 1)[0][0] != 250 and len(fake.clones) == 3


def test_gpu_clone_failure_falls_back_to_the_cpu_index(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGpuFaiss(clone_error="this index type cannot be cloned").install(monkeypatch)
    index = VectorIndex(DIMENSION)
    index.add(np.arange(50, dtype=np.int64), unit_vectors(50, seed=6))
    assert index.search(unit_vectors(50, seed=6)[3], 1)[0][0] == 3
    assert index._faiss_gpu is False and index._gpu_index is None


def test_device_exact_search_matches_the_flat_index() -> None:
    vectors, ids = unit_vectors(1000, seed=7), np.arange(1000, dtype=np.int64) * 5 + 2
    flat = VectorIndex(DIMENSION, use_gpu=False)
    flat.add(ids, vectors)
    device = DeviceExactSearch(ids, vectors, "cpu")
    allowed = ids[::37]
    for query in unit_vectors(10, seed=8):
        theirs, ours = flat.search(query, 10), device.search(query, 10)
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-3)  # flat scans float16
        assert [i for i, _ in device.search(query, 5, allowed)] == exact(vectors[::37], allowed, query, 5)
    assert device.search(vectors[0], 5, np.array([2, 7], dtype=np.int64))[0][0] == 2
    assert len(device.search(vectors[0], 5, np.array([2, 7], dtype=np.int64))) == 2  # no filler past them
    assert DeviceExactSearch(ids[:0], vectors[:0], "cpu").search(vectors[0], 3) == []


def use_device_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch sees a GPU: the device copy is searched (on the CPU here, the same code and tensors)."""
    import retriever.vector_index as module

    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(module, "SEARCH_DEVICE", "cpu")


@pytest.mark.parametrize("threshold", [10**6, 500])
def test_searches_run_on_the_device_copy_when_faiss_has_no_gpu(
    monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    use_device_copy(monkeypatch)
    vectors, ids = unit_vectors(1200, seed=9), np.arange(1200, dtype=np.int64)
    index = VectorIndex(DIMENSION, flat_max_vectors=threshold, nprobe=2)
    index.add(ids[:1000], vectors[:1000])
    query = vectors[11]
    assert [i for i, _ in index.search(query, 5)] == exact(vectors[:1000], ids[:1000], query, 5)
    assert index._device_copy is not None and index._device_copy.size == 1000
    index.add(ids[1000:], vectors[1000:])  # a write drops the copy; the next search copies the new contents
    assert index._device_copy is None
    assert index.search(vectors[1100], 1)[0][0] == 1100 and index._device_copy.size == 1200
    allowed = ids[600:620]
    assert [i for i, _ in index.search(query, 5, allowed)] == exact(vectors[allowed], allowed, query, 5)
    assert index.remove([1100]) == 1 and index.search(vectors[1100], 1)[0][0] != 1100


def test_an_index_faiss_gpu_cannot_clone_is_searched_on_the_device_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeGpuFaiss(clone_error="this index type cannot be cloned").install(monkeypatch)
    use_device_copy(monkeypatch)
    index = VectorIndex(DIMENSION)
    index.add(np.arange(50, dtype=np.int64), unit_vectors(50, seed=6))
    assert index.search(unit_vectors(50, seed=6)[3], 1)[0][0] == 3
    assert index._faiss_gpu is False and index._device_copy is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_copy_on_a_real_gpu_returns_what_the_cpu_index_returns() -> None:
    vectors, ids = unit_vectors(20_000, seed=10), np.arange(20_000, dtype=np.int64)
    device = DeviceExactSearch(ids, vectors, "cuda")
    cpu = VectorIndex(DIMENSION, use_gpu=False)
    cpu.add(ids, vectors)
    for query in unit_vectors(20, seed=11):
        assert [i for i, _ in device.search(query, 10)] == [i for i, _ in cpu.search(query, 10)]
