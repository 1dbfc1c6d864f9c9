"""Exact inner-product search on a torch device: the GPU path when FAISS has no GPU build.

The registry's FAISS wheel (`faiss-cpu`) cannot see a GPU, and faiss-gpu cannot clone every index type. On a
CUDA machine the collection's vectors are then copied to the device once (float16, refreshed after each
write) and every search is one matrix-vector product and a top-k there: an exact scan, so it returns what the
flat CPU index returns (up to float16 rounding of near-equal scores), and better than IVF's approximate
probe. Filters are a mask over the same scan, so a filtered search is exact too. 1M vectors of dimension 384
take 0.77 GB of device memory.
"""

from __future__ import annotations

import numpy as np
import torch


class DeviceExactSearch:
    """A read-only copy of (ids, vectors) on `device`, searched exhaustively."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, device: torch.device | str) -> None:
        self.device = torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.vectors = torch.from_numpy(vectors).to(self.device, dtype)

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The `k` best (id, inner product) pairs, best first; with `allowed`, among those ids only."""
        if self.size == 0:
            return []
        vector = torch.from_numpy(np.ascontiguousarray(query.reshape(-1), dtype=np.float32))
        scores = (self.vectors @ vector.to(self.device, self.vectors.dtype)).float()
        if allowed is not None:
            wanted = torch.from_numpy(np.ascontiguousarray(allowed, dtype=np.int64)).to(self.device)
            scores = scores.masked_fill(~torch.isin(self.ids, wanted), float("-inf"))
        best, rows = torch.topk(scores, min(k, self.size))
        keep = torch.isfinite(best)
        return list(zip(self.ids[rows[keep]].tolist(), best[keep].tolist(), strict=True))
