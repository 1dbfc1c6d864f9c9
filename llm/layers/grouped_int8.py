"""`GroupedInt8`: a tied group-32 int8 output head (GGUF Q8_0) on the CPU, kept as stored, and its matmul.

The output head of a small model is most of its weight (Gemma 3 270M: a 262k x 640 table, 178 MB of its
253 MB), and a decode step reads all of it once per token, so its batch-1 speed is the model's. The table
keeps the checkpoint's int8 values and float16 scales exactly, so that the tied embedding reads its rows
from it instead of keeping a copy, laid out in tiles of 64 outputs (`TILE`) for `grouped_int8.cpp`: a C++
kernel built on first use by inductor's toolchain (the compiler, flags and OpenMP runtime `torch.compile`
uses on the CPU, and its on-disk cache). It streams each tile once for up to four rows: on 2 cores, Gemma 3's
head takes 11 ms for one row and 14 ms for four, against 25 and 45 ms for torch's per-channel int8 matmul run
once per group of 32 inputs (the layout before), and about what the memory bandwidth allows.

Without a C++ compiler (or where the build fails, which is logged once) the product falls back to expanding
the table a slice at a time and multiplying in float32, about 3x slower at batch 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.layout import GGUF_BLOCK, Int8Weight
from llm import cpu

TILE = 64  # outputs per tile: four AVX-512 registers of float32
FALLBACK_ROWS = 8192  # table rows expanded at a time without the kernel (a 640-wide slice: 21 MB of float32)
KERNEL_ARGS = ["const int8_t*", "const at::Half*", "const float*", "float*", "int64_t", "int64_t", "int64_t"]

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int, int], None]


@dataclass(frozen=True)
class GroupedInt8:
    """Group-32 int8 weights with one float16 scale per group, in tiles of `TILE` outputs (see the module
    docstring); the last tile is padded with zero rows where the vocabulary is not a multiple of `TILE`."""

    qweight: torch.Tensor  # (tiles, in // 32, 32, TILE) int8
    scales: torch.Tensor  # (tiles, in // 32, TILE) as stored (float16 for GGUF)
    out_features: int

    @classmethod
    def pack(cls, w: Int8Weight) -> GroupedInt8:
        out, groups = w.out_features, w.in_features // GGUF_BLOCK
        padding = -out % TILE
        q = F.pad(w.qweight, (0, 0, 0, padding)).view(-1, TILE, groups, GGUF_BLOCK)
        scales = F.pad(w.scales, (0, 0, 0, padding)).view(-1, TILE, groups)
        return cls(q.permute(0, 2, 3, 1).contiguous(), scales.permute(0, 2, 1).contiguous(), out)

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * GGUF_BLOCK

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scales": self.scales}

    def rows(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """float32 rows `ids` of the weight (all of them: None), `(len(ids), in)`: the stored values."""
        groups = self.qweight.shape[1]
        if ids is None:  # every row: the tiles unfolded, the padding cut off
            q = self.qweight.permute(0, 3, 1, 2).reshape(-1, groups, GGUF_BLOCK)[: self.out_features]
            scales = self.scales.permute(0, 2, 1).reshape(-1, groups)[: self.out_features]
        else:  # (n, groups, 32) and (n, groups)
            tiles, lanes = ids // TILE, ids % TILE
            q, scales = self.qweight[tiles, :, :, lanes], self.scales[tiles, :, lanes]
        return (q.float() * scales.float()[..., None]).view(q.shape[0], -1)

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The whole weight `(out, in)` in `dtype`, for a prefill chunk's dense GEMM."""
        return self.rows().to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in) -> (rows, out) in x's dtype, float32 sums."""
        if x.dim() != 2 or x.shape[1] != self.in_features:  # the kernel would read past the rows
            raise ValueError(f"input of shape {tuple(x.shape)} for a {self.in_features}-wide int8 table")
        kernel = cpu_kernel()
        if kernel is None:
            chunks = torch.arange(self.out_features).split(FALLBACK_ROWS)
            return torch.cat([x.float() @ self.rows(ids).t() for ids in chunks], dim=1).to(x.dtype)
        tiles, groups = self.qweight.shape[:2]
        y = torch.empty(x.shape[0], tiles * TILE)
        kernel(self.qweight, self.scales, x.float().contiguous(), y, x.shape[0], tiles, groups)
        return y[:, : self.out_features].to(x.dtype)


@cache
def cpu_kernel() -> Kernel | None:
    """`grouped_int8.cpp` built for this CPU (AVX-512 intrinsics where inductor targets AVX-512, the portable
    loops elsewhere), or None without a compiler or where the build fails."""
    return cpu.kernel_or_none(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, "a tied int8 output head is")


def build_kernel(*defines: str) -> Kernel:
    """`grouped_int8.cpp` built (or loaded from inductor's cache) with `-D` `defines`."""
    return cpu.build_kernel(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, *defines)
