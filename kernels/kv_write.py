"""Scatter new keys/values into the paged KV cache through a slot mapping (Triton kernel and launcher).

Layout: k, v `(tokens, n_kv_heads, head_dim)`; caches `(num_blocks, block_size, n_kv_heads, head_dim)`;
`slot_mapping` `(tokens,)` int64 with `slot = block_index * block_size + offset`, -1 to skip a token
(padding).
One program per token moves all its heads at once: a token's `n_kv_heads * head_dim` values are one tile.

RoPE is not fused here: the rotation is applied to q as well, so fusing it would only save re-reading k once
per layer; without a GPU measurement showing that it matters the simpler kernel stays.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.validation import (
    FLOAT_DTYPES,
    check_dim,
    check_dtype,
    check_inner_contiguous,
    check_same_device,
    data_checks_enabled,
    require,
)


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    HEAD_DIM: tl.constexpr,
    N_KV_HEADS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_HD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot < 0:  # padding token
        return
    idx = tl.arange(0, BLOCK_HD)
    head = idx // HEAD_DIM
    dim = idx % HEAD_DIM
    mask = idx < N_KV_HEADS * HEAD_DIM
    block = slot // BLOCK_SIZE
    dst = block * stride_cb + (slot % BLOCK_SIZE) * stride_cs + head * stride_ch + dim
    k = tl.load(k_ptr + token * stride_kt + head * stride_kh + dim, mask=mask)
    v = tl.load(v_ptr + token * stride_vt + head * stride_vh + dim, mask=mask)
    tl.store(k_cache_ptr + dst, k, mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Triton twin of `reference.write_kv` (in place)."""
    check_dim("k", k, 3, "(tokens, n_kv_heads, head_dim)")
    check_dim("k_cache", k_cache, 4, "(num_blocks, block_size, n_kv_heads, head_dim)")
    require(v.shape == k.shape, f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    require(
        v_cache.shape == k_cache.shape, f"v_cache {tuple(v_cache.shape)} != k_cache {tuple(k_cache.shape)}"
    )
    require(
        k.shape[1:] == k_cache.shape[2:],
        f"k heads/head_dim {tuple(k.shape[1:])} do not match the cache's {tuple(k_cache.shape[2:])}",
    )
    check_dtype("k_cache", k_cache, FLOAT_DTYPES)
    for name, t in (("k", k), ("v", v), ("v_cache", v_cache)):
        require(t.dtype == k_cache.dtype, f"{name} dtype {t.dtype} != cache dtype {k_cache.dtype}")
    check_dim("slot_mapping", slot_mapping, 1, "(tokens,)")
    check_dtype("slot_mapping", slot_mapping, (torch.int64, torch.int32))
    require(
        slot_mapping.shape[0] == k.shape[0],
        f"slot_mapping has {slot_mapping.shape[0]} entries for {k.shape[0]} tokens",
    )
    for name, t in (("k", k), ("v", v)):
        check_inner_contiguous(name, t)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        require(t.is_contiguous(), f"{name} must be contiguous")
    check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    num_blocks, block_size, n_kv_heads, head_dim = k_cache.shape
    if k.shape[0] == 0:
        return
    if data_checks_enabled(slot_mapping):
        lo, hi = int(slot_mapping.min()), int(slot_mapping.max())
        require(
            lo >= -1 and hi < num_blocks * block_size,
            f"slot_mapping values must be -1 or in [0, {num_blocks * block_size}), got range [{lo}, {hi}]",
        )
    _write_kv_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEAD_DIM=head_dim,
        N_KV_HEADS=n_kv_heads,
        BLOCK_SIZE=block_size,
        BLOCK_HD=triton.next_power_of_2(n_kv_heads * head_dim),
    )  # fmt: skip
