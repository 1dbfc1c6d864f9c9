"""Decode attention (one query token per sequence) over the paged KV cache, GQA-aware, with a split-K variant
(Triton kernels and launcher).

Layout:

* q `(batch, n_heads, head_dim)`; output the same, in q's dtype.
* caches `(num_blocks, BLOCK_SIZE, n_kv_heads, head_dim)`; `block_tables (batch, max_blocks)` int32;
  `context_lens (batch,)` int32 counts the keys including the current token, which sits at position
  `context_lens[i] - 1`. Window W keeps keys at positions `>= context_lens[i] - W`.
* Last dimensions contiguous; everything else through `stride_*`. Any head_dim up to 256: one that is not a
  power of two runs on padded tiles (`attention_tile`).

Grid `(batch, n_kv_heads, num_splits)`: a program takes the `GROUP = n_heads // n_kv_heads` query heads that
share one kv head as the rows of its tile, so every key/value tile is loaded once per group, not once per
query head. With `num_splits > 1` (split-K, for long contexts at small batch, where `batch * n_kv_heads`
programs would leave most SMs idle) each program covers `partition_size` positions and writes its normalized
partial output and log2-sum-exp; `_reduce_kernel` merges the partitions.
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl

from kernels.attention_tile import (
    attend_tile,
    finish_rows,
    init_state,
    kv_row_offsets,
    load_tile,
    score_scales,
)
from kernels.validation import (
    FLOAT_DTYPES,
    check_block_table,
    check_dim,
    check_dtype,
    check_head_dim,
    check_inner_contiguous,
    check_same_device,
    data_checks_enabled,
    dot_precision,
    padded_head_dim,
    require,
)


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, ctx_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale, qk_cap, window, partition_size,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb, stride_ob, stride_oh,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, SPLIT: tl.constexpr,
    SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    ctx = tl.load(ctx_ptr + seq)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_PAD)
    in_head = offs_d < HEAD_DIM
    PAD: tl.constexpr = HEAD_PAD != HEAD_DIM
    heads = kv_head * GROUP + offs_g
    rows_and_dims = (offs_g[:, None] < GROUP) & in_head[None, :]
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=rows_and_dims, other=0.0)  # fmt: skip

    first = 0
    if HAS_WINDOW:
        first = tl.maximum(ctx - window, 0)
    start = 0
    end = ctx
    if SPLIT:
        start = part * partition_size
        end = tl.minimum(ctx, start + partition_size)
    # Begin at the tile containing `first` so a window skips whole tiles; `visible` masks the rest.
    loop_start = tl.maximum(start, (first // BLOCK_N) * BLOCK_N)

    kv_offset = kv_head * stride_kh
    table_row_ptr = table_ptr + seq * stride_tb
    acc, m_i, l_i = init_state(BLOCK_G, HEAD_PAD)
    for start_n in range(loop_start, end, BLOCK_N):
        pos_n = start_n + tl.arange(0, BLOCK_N)
        visible = (pos_n >= tl.maximum(start, first)) & (pos_n < end)
        rows = kv_row_offsets(table_row_ptr, pos_n, visible, 0, stride_kb, stride_ks, True, BLOCK_SIZE)
        k_ptrs = k_ptr + kv_offset + rows[None, :] + offs_d[:, None]
        v_ptrs = v_ptr + kv_offset + rows[:, None] + offs_d[None, :]
        k_t = load_tile(k_ptrs, visible[None, :], in_head[:, None], True, PAD)
        v = load_tile(v_ptrs, visible[:, None], in_head[None, :], True, PAD)
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, k_t, v, visible[None, :], qk_scale, qk_cap, True, SOFTCAP, DOT_PRECISION
        )

    out = finish_rows(acc, l_i)
    row_mask = offs_g < GROUP
    if SPLIT:
        # log2-sum-exp of this partition; -inf when it saw no key (past the context or before the window).
        lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
        part_offs = seq * stride_pb + heads * stride_ph + part * stride_ps
        tl.store(part_out_ptr + part_offs[:, None] + offs_d[None, :], out, mask=rows_and_dims)
        tl.store(part_lse_ptr + seq * stride_lb + heads * stride_lh + part, lse, mask=row_mask)
    else:
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=rows_and_dims)  # fmt: skip


@triton.jit
def _reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, num_splits,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Merge the split-K partitions of one (sequence, head): weights exp2(lse_s - max lse)."""
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_PAD)
    in_head = offs_d < HEAD_DIM
    base = seq * stride_pb + head * stride_ph
    lse = tl.load(part_lse_ptr + seq * stride_lb + head * stride_lh + offs_s, mask=offs_s < num_splits,
                  other=float("-inf"))  # fmt: skip
    lse_max = tl.max(lse, 0)
    weights = tl.exp2(lse - tl.where(lse_max == float("-inf"), 0.0, lse_max))
    parts = tl.load(part_out_ptr + base + offs_s[:, None] * stride_ps + offs_d[None, :],
                    mask=(offs_s[:, None] < num_splits) & in_head[None, :], other=0.0)  # fmt: skip
    total = tl.sum(weights, 0)
    out = tl.sum(parts * weights[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    out_ptrs = out_ptr + seq * stride_ob + head * stride_oh + offs_d
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=in_head)


# The reduce kernel holds all partitions of a head in one tile, so keep the default partition count modest.
MAX_DEFAULT_SPLITS = 64


@cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _default_splits(batch: int, n_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Split only when the plain grid cannot fill the GPU, and keep partitions >= 256 keys so the extra
    reduction stays cheap. The interpreter never splits by default (tests pass num_splits)."""
    if device.type != "cuda":
        return 1
    sms = _sm_count(device)
    programs = batch * n_kv_heads
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(max_context, 256), triton.cdiv(2 * sms, programs), MAX_DEFAULT_SPLITS))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    softmax_scale: float,
    *,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Triton twin of `reference.paged_decode_attention`; `num_splits` forces the split-K partition count
    (default: chosen from the grid size and the block table's capacity, without reading context_lens)."""
    check_dim("q", q, 3, "(batch, n_heads, head_dim)")
    check_dim("k_cache", k_cache, 4, "(num_blocks, block_size, n_kv_heads, head_dim)")
    check_dtype("q", q, FLOAT_DTYPES)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        require(t.dtype == q.dtype, f"{name} dtype {t.dtype} != q dtype {q.dtype}")
    require(
        v_cache.shape == k_cache.shape, f"v_cache {tuple(v_cache.shape)} != k_cache {tuple(k_cache.shape)}"
    )
    batch, n_heads, head_dim = q.shape
    num_blocks, block_size, n_kv_heads, _ = k_cache.shape
    require(k_cache.shape[-1] == head_dim, f"cache head_dim {k_cache.shape[-1]} != q head_dim {head_dim}")
    check_head_dim(head_dim)
    require(n_heads % n_kv_heads == 0, f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_inner_contiguous(name, t)
    require(k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share strides")
    check_dim("block_tables", block_tables, 2, "(batch, max_blocks)")
    check_dtype("block_tables", block_tables, (torch.int32,))
    check_inner_contiguous("block_tables", block_tables)
    require(
        block_tables.shape[0] == batch, f"block_tables has {block_tables.shape[0]} rows for batch {batch}"
    )
    check_dim("context_lens", context_lens, 1, "(batch,)")
    check_dtype("context_lens", context_lens, (torch.int32,))
    require(
        context_lens.shape[0] == batch, f"context_lens has {context_lens.shape[0]} entries for batch {batch}"
    )
    require(
        sliding_window is None or sliding_window >= 1, f"sliding_window must be >= 1, got {sliding_window}"
    )
    require(num_splits is None or num_splits >= 1, f"num_splits must be >= 1, got {num_splits}")
    require(softcap is None or softcap > 0, f"softcap must be > 0, got {softcap}")
    check_same_device(
        q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, context_lens=context_lens
    )
    if data_checks_enabled(q):
        lengths = context_lens.cpu()
        require(bool((lengths >= 1).all()), "context_lens must be >= 1 (they count the current token)")
        check_block_table(block_tables, lengths, block_size, num_blocks)

    out = torch.empty_like(q)
    if batch == 0:
        return out
    # The table's capacity bounds every context without a GPU→CPU read of context_lens.
    max_context = max(block_tables.shape[1], 1) * block_size
    head_pad = padded_head_dim(head_dim)
    # Heads of 256 take half the keys per tile, so the key and value tiles stay as large in shared memory.
    block_n = (64 if head_pad <= 128 else 32) if q.is_cuda else 16
    splits = num_splits or _default_splits(batch, n_kv_heads, max_context, q.device)
    partition = triton.cdiv(triton.cdiv(max_context, splits), block_n) * block_n
    splits = triton.cdiv(max_context, partition)
    group = n_heads // n_kv_heads
    # tl.dot needs at least 16 rows; padding rows of a small group cost compute, not memory traffic.
    block_g = max(16, triton.next_power_of_2(group))
    split = splits > 1
    part_out = torch.empty((batch, n_heads, splits, head_dim) if split else (1, 1, 1, head_dim),
                           dtype=torch.float32, device=q.device)  # fmt: skip
    part_lse = torch.empty(part_out.shape[:-1], dtype=torch.float32, device=q.device)
    common = dict(num_warps=4 if q.is_cuda else 1)
    _paged_decode_kernel[(batch, n_kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_out, part_lse,
        *score_scales(softmax_scale, softcap), sliding_window or 0, partition,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        GROUP=group, BLOCK_G=block_g, HEAD_DIM=head_dim, HEAD_PAD=head_pad, BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        HAS_WINDOW=sliding_window is not None, SPLIT=split, SOFTCAP=softcap is not None,
        DOT_PRECISION=dot_precision(q.dtype), **common,
    )  # fmt: skip
    if split:
        _reduce_kernel[(batch, n_heads)](
            part_out, part_lse, out, splits,
            part_out.stride(0), part_out.stride(1), part_out.stride(2),
            part_lse.stride(0), part_lse.stride(1), out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, HEAD_PAD=head_pad, BLOCK_S=triton.next_power_of_2(splits), **common,
        )  # fmt: skip
    return out
