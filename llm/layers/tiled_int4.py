"""`TiledInt4`: 4-bit weights (GGUF Q4_0, Q4_1) on CPUs with AVX512-VNNI, multiplied by integer dot products.

torch's CPU int4 matmul (`_weight_int4pack_mm_for_cpu`) widens every weight to float and multiplies in float:
on 2 cores it streams SmolLM2's 53 MB of int4 weights at about 13 GB/s whether or not they are in the cache,
so it is bound by that arithmetic, not by memory, and it is half of a decode step. `tiled_int4.cpp` does what
llama.cpp does instead: the activations are quantized to int8 per block of 32 inputs (one float scale a
block), and `vpdpbusd` multiplies four unsigned 4-bit weights by four signed 8-bit activations per 32-bit
lane. The weight keeps the checkpoint's values (its nibbles, its float16 scales and mins) in tiles of 16
outputs: per 8 inputs, 64 bytes whose low nibbles are inputs 0-3 and high nibbles inputs 4-7 of each output.
Quantizing the activations is lossy; the perplexity cost is measured in `tests/llm/test_tiled_int4.py`.

Opt-in (`EngineConfig(cpu_weights="int8-activations")`): the rounding changes some greedy answers of a small
model (SmolLM2's "What is the capital of France?" gets llama.cpp's answer, not "Paris"). Used only where it
pays and is exact about the weight: a CPU with AVX512-VNNI (`/proc/cpuinfo`), a kernel
built with those loops, group sizes that are multiples of 32, and scales and mins that float16 holds
exactly. Anything else keeps torch's int4 matmul (`llm.layers.linear`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from kernels.layout import Int4Weight, unpack_int4
from llm import cpu

LANES = 16  # outputs per tile: one AVX-512 register of int32 sums
BLOCK = 32  # inputs per int8 activation scale
KERNEL_ARGS = ["float*"]  # the library's entry point only reports whether it holds the VNNI loops


@dataclass(frozen=True)
class TiledInt4:
    """A 4-bit weight in tiles of `LANES` outputs (see the module docstring); the last tile is padded with
    zero weights where `out_features` is not a multiple of `LANES`."""

    packed: torch.Tensor  # (tiles, in // 8, 64) uint8
    scales: torch.Tensor  # (tiles, groups, LANES) float16
    mins: torch.Tensor  # (tiles, groups, LANES) float16
    group_size: int
    out_features: int

    @classmethod
    def pack(cls, w: Int4Weight) -> TiledInt4 | None:
        """`w` in tiles, or None where the layout cannot hold it exactly (see the module docstring)."""
        if w.bits != 4 or w.group_size % BLOCK or w.in_features % BLOCK:
            return None
        scales, mins = w.group_scales()
        if mins is None:
            mins = -float(w.zero_point) * scales
        half_scales, half_mins = scales.half(), mins.half()
        if not (torch.equal(half_scales.float(), scales) and torch.equal(half_mins.float(), mins)):
            return None
        padding = -w.out_features % LANES
        q = torch.nn.functional.pad(unpack_int4(w.qweight), (0, 0, 0, padding))
        tiles = q.shape[0] // LANES
        # [tile, lane, chunk, half, b] -> [tile, chunk, lane, b, half]: byte 4 * lane + b of a chunk holds
        # input 8 * chunk + b in its low nibble and 8 * chunk + 4 + b in its high one.
        q = q.view(tiles, LANES, w.in_features // 8, 2, 4).permute(0, 2, 1, 4, 3)
        packed = (q[..., 0] | (q[..., 1] << 4)).reshape(tiles, w.in_features // 8, 64).contiguous()

        def tiled(t: torch.Tensor) -> torch.Tensor:
            t = torch.nn.functional.pad(t, (0, 0, 0, padding))
            return t.view(tiles, LANES, -1).transpose(1, 2).contiguous()

        return cls(packed, tiled(half_scales), tiled(half_mins), w.group_size, w.out_features)

    @property
    def in_features(self) -> int:
        return self.packed.shape[1] * 8

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in) -> (rows, out) in x's dtype."""
        if x.dim() != 2 or x.shape[1] != self.in_features:  # the kernel would read past the rows
            raise ValueError(f"input of shape {tuple(x.shape)} for a {self.in_features}-wide weight")
        return torch.ops.archivist.int4_matmul.default(
            x, self.packed, self.scales, self.mins, self.group_size, self.out_features
        )


# The op's CPU kernel is registered by `tiled_int4.cpp` itself when it is loaded (`available`): a compiled
# decode step calls it a hundred times, and a Python kernel behind the dispatcher costs ~9 us a call.
_LIBRARY = torch.library.Library("archivist", "FRAGMENT")
_LIBRARY.define(
    "int4_matmul(Tensor x, Tensor packed, Tensor scales, Tensor mins, int group_size, int out_features) "
    "-> Tensor"
)


@torch.library.register_fake("archivist::int4_matmul")
def _(x: torch.Tensor, *weight: Any) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight[-1])  # the op's last argument: out_features


@cache
def available() -> bool:
    """Whether 4-bit weights take this layout here: the host has AVX512-VNNI and the kernel was built with
    its loops (inductor targets AVX-512 on this host), which registered the op's CPU kernel."""
    kernel = cpu_kernel() if cpu.int8_dot_products() else None
    if kernel is None:
        return False
    status = torch.zeros(1)
    kernel(status)
    return bool(status.item() == 1.0)


@cache
def cpu_kernel() -> Callable[..., None] | None:
    """`tiled_int4.cpp` built for this CPU (and loaded: the op's CPU kernel registered where it has the VNNI
    loops), or None without a compiler or where the build fails."""
    return cpu.kernel_or_none(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, "4-bit weights are")
