"""Decode attention on the CPU in C++ (`decode_attention.cpp`): one query token per sequence over the paged KV
cache, read in place through the block table, as the op `archivist::paged_decode`.

The plain-torch form a compiled decode step traced before (`kernels.reference`'s padded decode) gathers every
block of the table into float32 copies, transposes the keys and multiplies with two batched GEMMs: for
SmolLM2-135M on 2 cores that was about 60 us a layer. The kernel reads each key
and value row of the sequence's visible positions once, for all the query heads that share it, with float32
scores and an exact softmax (~15 us a layer at 130 keys, the cache read from memory). It serves the eager and
the compiled CPU decode steps alike (a plain `torch.library` op with a fake, so a compiled region calls it
inside its graph). Its CPU kernel is a Python function around the C++ one (~6 us a call, 30 calls a SmolLM2
step), not registered from C++ as `llm.layers.tiled_int4`'s is: ATen's headers would add ~8 s of compiling to
a cold start, for ~0.15 ms a token.

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

KERNEL_ARGS = [
    "const void*",  # q (batch, heads, dim)
    "const void*",  # k_cache (blocks, block_size, kv_heads, dim)
    "const void*",  # v_cache
    "const int32_t*",  # block tables (batch, width)
    "const int32_t*",  # keys per sequence, the current one included
    "void*",  # out, like q
    "int64_t",  # batch
    "int64_t",  # heads
    "int64_t",  # kv_heads
    "int64_t",  # dim
    "int64_t",  # blocks in the cache
    "int64_t",  # block_size
    "int64_t",  # width
    "float",  # softmax scale
    "int64_t",  # sliding window (0: none)
    "float",  # softcap (0: none)
    "int64_t",  # dtype: 0 float32, 1 bfloat16, 2 float16
]
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

# A plain `torch.library` op (as `archivist::lowbit_matmul`: ~3 us a call against ~10 us for `custom_op`).
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
    return torch.ops.archivist.paged_decode(
        q, k_cache, v_cache, block_tables, context_lens, scale, window or 0, softcap or 0.0
    )


def _paged_decode_cpu(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    window: int,
    softcap: float,
) -> torch.Tensor:
    kernel = cpu_kernel()
    assert kernel is not None, "paged_decode called where decode_attention.serves is False"
    batch, heads, dim = q.shape
    blocks, block_size, kv_heads, cache_dim = k_cache.shape
    if (
        v_cache.shape != k_cache.shape
        or cache_dim != dim
        or heads % kv_heads
        or block_tables.shape[0] != batch
        or context_lens.shape != (batch,)
    ):
        raise ValueError(
            f"paged decode of q {tuple(q.shape)} over a cache {tuple(k_cache.shape)} with tables "
            f"{tuple(block_tables.shape)} and lengths {tuple(context_lens.shape)}"
        )
    query = _as(q, k_cache.dtype)  # a query of another dtype is attended in the caches' dtype
    tables = _as(block_tables, torch.int32)
    out = torch.empty_like(query)
    kernel(
        query, k_cache, v_cache, tables, _as(context_lens, torch.int32), out, batch, heads, kv_heads, dim,
        blocks, block_size, tables.shape[1], scale, window, softcap, DTYPES[k_cache.dtype],
    )  # fmt: skip
    return _as(out, q.dtype)


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` contiguous in `dtype`, copied only where it is not (a no-op `.to` costs ~1 us a call)."""
    return tensor if tensor.dtype == dtype and tensor.is_contiguous() else tensor.to(dtype).contiguous()


_LIBRARY.impl("paged_decode", _paged_decode_cpu, "CPU")


@torch.library.register_fake("archivist::paged_decode")
def _(q: torch.Tensor, *rest: Any) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@cache
def cpu_kernel() -> Callable[..., None] | None:
    """`decode_attention.cpp` built for this CPU, or None without a compiler or where the build fails."""
    return cpu.kernel_or_none(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, "decode attention is")


def build_kernel(*defines: str) -> Callable[..., None]:
    """`decode_attention.cpp` built (or loaded from inductor's cache) with `-D` `defines`."""
    return cpu.build_kernel(Path(__file__).with_suffix(".cpp"), KERNEL_ARGS, *defines)
