"""Decode attention on the CPU in C++ (`decode_attention.cpp`): one query token per sequence over the paged KV
cache, read in place through the block table, as the op `archivist::paged_decode`.

The plain-torch form a compiled decode step traced before (`kernels.reference`'s padded decode) gathers every
block of the table into float32 copies, transposes the keys and multiplies with two batched GEMMs: for
SmolLM2-135M on 2 cores that was about 60 us a layer, a fifth of the decode step. The kernel reads each key
and value row of the sequence's visible positions once, for all the query heads that share it, with float32
scores and an exact softmax (a few us a layer). It serves the eager and the compiled CPU decode steps alike
(a `torch.library` op with a fake, so a compiled region calls it inside its graph, and a kernel registered
from C++, so a call costs a dispatch and no Python).

Without a C++ compiler (or where the build fails, logged once), or for a layout the kernel does not take
(tensors on another device, mixed dtypes, a non-contiguous cache), `serves` is False and the caller takes
`kernels.dispatch`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

from llm import cpu

KERNEL_ARGS = ["float*"]  # the library's entry point only confirms that it was built and loaded
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# The op's CPU kernel is registered by `decode_attention.cpp` itself when it is loaded (`cpu_kernel`), so a
# call costs a dispatch (~2 us) rather than a Python kernel behind the dispatcher (~9 us).
_LIBRARY = torch.library.Library("archivist", "FRAGMENT")
_LIBRARY.define(
    "paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, "
    "float scale, int window, float softcap) -> Tensor"
)


def serves(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the kernel attends over these caches: contiguous, on the CPU, of one supported dtype, and a
    kernel built for this host."""
    return (
        k_cache.device.type == "cpu"
        and k_cache.dtype in DTYPES
        and v_cache.dtype == k_cache.dtype
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
        and cpu_kernel() is not None
    )


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """`kernels.reference.paged_decode_attention` in C++ (see the module docstring): q (batch, heads, dim) ->
    like q. Call only where `serves` is True."""
    return torch.ops.archivist.paged_decode.default(
        q, k_cache, v_cache, block_tables, context_lens, scale, window or 0, softcap or 0.0
    )


@torch.library.register_fake("archivist::paged_decode")
def _(q: torch.Tensor, *rest: Any) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@cache
def cpu_kernel() -> Callable[..., None] | None:
    """`decode_attention.cpp` built for this CPU and loaded (the op's CPU kernel registered), or None
    without a compiler or where the build fails."""
    return cpu.kernel_or_none(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, "decode attention is")
