"""`TiledLowBit`: 5- and 6-bit weights (GGUF Q5_0, Q5_1, Q5_K, Q6_K) on the CPU in their own bits, and their
matmul.

torch has CPU matmuls for int4 and int8 weights only, so these used to be requantized to per-channel int8:
more bytes than the file (Q5_0: 8 bits a weight instead of 5.5) and values that are no longer the
checkpoint's. A decode step reads every weight once, so on a few cores its time is the bytes it reads. Here
the checkpoint's own values stay, laid out in tiles of 64 outputs for `tiled_lowbit.cpp` (built like
`llm.layers.grouped_int8`'s kernel): per input, 32 bytes of low nibbles and one 64-bit mask per high bit,
with the group's scales (float16 where they are float16 in the file, float32 where a K-quant's two levels
multiply out) and mins. Q5_0 then reads 5.5 bits a weight plus its scale.

The matmul is the op `archivist::lowbit_matmul`, so that a `torch.compile`d decode step calls the
kernel from inside its graph. Without a C++ compiler (or where the build fails) the op expands the weight
a slice of rows at a time and multiplies in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kernels.layout import Int4Weight
from llm import cpu

TILE = 64  # outputs per tile: four AVX-512 registers of float32
HALF = TILE // 2  # a tile's low nibbles take 32 bytes per input: lanes l and l + 32 share a byte
FALLBACK_ROWS = 8192  # weight rows expanded to float32 at a time without the kernel
NO_OFFSETS = torch.empty(0)  # its data pointer is null: the kernel takes the offsets as -zero * scale
KERNEL_ARGS = [
    "const uint8_t*",  # low nibbles
    "const uint8_t*",  # high-bit masks
    "const void*",  # scales
    "const void*",  # offsets, or null
    "const void*",  # x
    "void*",  # y
    # rows, out_features, groups, group size, high planes, float16 scales, zero point, bf16, expand the weight
    *["int64_t"] * 9,
]


@dataclass(frozen=True)
class TiledLowBit:
    """A 5- or 6-bit grouped weight in tiles of `TILE` outputs (see `tiled_lowbit.cpp` for the layout); the
    last tile is padded with zero rows where the outputs are not a multiple of `TILE`."""

    low: torch.Tensor  # (tiles, groups, group_size, 32) uint8
    high: torch.Tensor  # (tiles, groups, group_size, 8 * planes) uint8
    scales: torch.Tensor  # (tiles, groups, 64) float16 or float32
    offsets: torch.Tensor | None  # like scales (w = scale * q + offset), or None: -zero_point * scale
    zero_point: int
    out_features: int

    @classmethod
    def pack(cls, w: Int4Weight) -> TiledLowBit:
        if w.bits <= 4:  # torch's int4 matmul is as fast as this kernel on 4 bits (measured on SmolLM2)
            raise ValueError(f"TiledLowBit holds 5- and 6-bit weights, got {w.bits} bits")
        group, groups = w.group_size, w.in_features // w.group_size
        padding = -w.out_features % TILE
        q = F.pad(w.values(), (0, 0, 0, padding)).view(-1, TILE, groups, group).permute(0, 2, 3, 1)
        low = (q[..., :HALF] & 15) | ((q[..., HALF:] & 15) << 4)
        lane_bits = torch.arange(8, dtype=torch.uint8)
        planes = [
            (((q >> bit) & 1).view(*q.shape[:-1], 8, 8) << lane_bits).sum(-1, dtype=torch.uint8)
            for bit in range(4, w.bits)
        ]
        scales, offsets = w.group_scales()
        if all(torch.equal(t.half().float(), t) for t in (scales, offsets) if t is not None):
            scales, offsets = scales.half(), None if offsets is None else offsets.half()

        def tiled(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (0, 0, 0, padding)).view(-1, TILE, groups).permute(0, 2, 1).contiguous()

        return cls(
            low.contiguous(),
            torch.cat(planes, dim=-1).contiguous(),
            tiled(scales),
            None if offsets is None else tiled(offsets),
            w.zero_point,
            w.out_features,
        )

    @property
    def group_size(self) -> int:
        return self.low.shape[2]

    @property
    def in_features(self) -> int:
        return self.low.shape[1] * self.group_size

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"low": self.low, "high": self.high, "scales": self.scales}
        return named if self.offsets is None else {**named, "offsets": self.offsets}

    def rows(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """float32 rows `ids` of the weight (all of them: None), `(len(ids), in)`: the stored values."""
        ids = torch.arange(self.out_features) if ids is None else ids
        tiles, lanes = ids // TILE, ids % TILE
        column = lanes[:, None, None]  # broadcast over (groups, group)
        nibbles = self.low[tiles, :, :, lanes % HALF] >> (4 * (column >= HALF)).to(torch.uint8)
        q = nibbles & 15
        for plane in range(self.high.shape[-1] // 8):
            masks = self.high[tiles, :, :, 8 * plane + lanes // 8]
            q |= ((masks >> (column % 8).to(torch.uint8)) & 1) << (4 + plane)
        scales = self.scales[tiles, :, lanes].float()[..., None]
        offsets = (
            -self.zero_point * scales
            if self.offsets is None
            else self.offsets[tiles, :, lanes].float()[..., None]
        )
        return (q.float() * scales + offsets).view(len(ids), -1)

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The whole weight `(out, in)` in `dtype`, for a prefill chunk's dense GEMM: expanded by the kernel
        in one pass (float32 and bfloat16), else by `rows`."""
        kernel = cpu_kernel()
        if kernel is None or dtype not in (torch.float32, torch.bfloat16):
            return self.rows().to(dtype)
        weight = torch.empty(self.out_features, self.in_features, dtype=dtype)
        _call(kernel, self.low, self.high, self.scales, self.offsets, self.zero_point, weight, weight, 1)
        return weight

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in) -> (rows, out) in x's dtype, float32 sums."""
        if x.dim() != 2 or x.shape[1] != self.in_features:  # the kernel would read past the rows
            raise ValueError(f"input of shape {tuple(x.shape)} for a {self.in_features}-wide weight")
        return torch.ops.archivist.lowbit_matmul(
            x, self.low, self.high, self.scales, self.offsets, self.zero_point, self.out_features
        )


# A plain `torch.library` op (a Python kernel behind the dispatcher, ~3 us a call) rather than
# `torch.library.custom_op`, whose checks cost ~10 us a call: a decode step calls it a hundred times.
_LIBRARY = torch.library.Library("archivist", "DEF")
_LIBRARY.define(
    "lowbit_matmul(Tensor x, Tensor low, Tensor high, Tensor scales, Tensor? offsets, int zero_point, "
    "int out_features) -> Tensor"
)


def lowbit_matmul(
    x: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor | None,
    zero_point: int,
    out_features: int,
) -> torch.Tensor:
    """`TiledLowBit.matmul` as an op a compiled graph can call (its arguments: the weight's tensors)."""
    kernel = cpu_kernel()
    if kernel is None or x.dtype not in (torch.float32, torch.bfloat16):
        weight = TiledLowBit(low, high, scales, offsets, zero_point, out_features)
        chunks = torch.arange(out_features).split(FALLBACK_ROWS)
        return torch.cat([x.float() @ weight.rows(ids).t() for ids in chunks], dim=1).to(x.dtype)
    x = x.contiguous()
    y = x.new_empty(x.shape[0], out_features)
    _call(kernel, low, high, scales, offsets, zero_point, x, y, 0)
    return y


def _call(
    kernel: Callable[..., None],
    low: torch.Tensor,
    high: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor | None,
    zero_point: int,
    x: torch.Tensor,
    y: torch.Tensor,
    expand: int,
) -> None:
    """The kernel on a tiled weight: y = x @ W.T, or with `expand` y = W (x unread); y's dtype is x's."""
    groups, group = low.shape[1:3]
    out_features = y.shape[0] if expand else y.shape[1]
    kernel(
        low,
        high,
        scales,
        NO_OFFSETS if offsets is None else offsets,
        x,
        y,
        x.shape[0],
        out_features,
        groups,
        group,
        high.shape[-1] // 8,
        int(scales.dtype == torch.float16),
        zero_point,
        int(x.dtype == torch.bfloat16),
        expand,
    )


_LIBRARY.impl("lowbit_matmul", lowbit_matmul, "CPU")


@torch.library.register_fake("archivist::lowbit_matmul")
def _(x: torch.Tensor, *weight: Any) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight[-1])  # the op's last argument: out_features


@cache
def cpu_kernel() -> Callable[..., None] | None:
    """`tiled_lowbit.cpp` built for this CPU, or None without a compiler or where the build fails."""
    return cpu.kernel_or_none(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, "5- and 6-bit weights are")


def build_kernel(*defines: str) -> Callable[..., None]:
    """`tiled_lowbit.cpp` built (or loaded from inductor's cache) with `-D` `defines`."""
    return cpu.build_kernel(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, *defines)
