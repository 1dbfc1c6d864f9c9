"""Causal flash attention forward over a packed variable-length batch, GQA, optional sliding window, with keys
read either packed or from the paged KV cache (Triton kernel and launcher).

Layout:

* q `(total_q, n_heads, head_dim)`; sequence `i` owns rows `cu_seqlens_q[i]:cu_seqlens_q[i + 1]`.
* packed k/v `(total_k, n_kv_heads, head_dim)` split by `cu_seqlens_k`, or paged caches
  `(num_blocks, BLOCK_SIZE, n_kv_heads, head_dim)` read through `block_table (batch, max_blocks)` int32 for
  positions `[0, seqlen_k)` (prefix caching, chunked prefill).
* queries are the last `seqlen_q` key positions (bottom-right causal alignment); window W keeps keys in
  `(p - W, p]`. Query head `h` reads kv head `h // GROUP`.
* output `(total_q, n_heads, head_dim)` in q's dtype. Last dimensions must be contiguous; the rest go through
  `stride_*`. Packed k and v each have their own strides (the engine slices them out of one fused qkv
  projection); the paged caches share one layout. Any head_dim up to 256: one that is not a power of two
  runs on padded tiles (`attention_tile`).

Grid: `(cdiv(max_seqlen_q, BLOCK_M), n_heads, batch)`. Each program walks the key blocks its query tile can
see in three ranges: a masked lower edge (window), an unmasked middle where every key is visible to every row,
and a masked upper edge (causal diagonal and the sequence end), so the mask is only paid on the edges.
"""

from __future__ import annotations

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
def _prefill_range(
    acc, m_i, l_i, q, pos_m, start, end,
    k_base, v_base, table_row_ptr, k_len, window, qk_scale, qk_cap,
    stride_kt, stride_vt, stride_kb, stride_ks,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PAGED: tl.constexpr, MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Fold key positions [start, end) into the running state, BLOCK_N at a time."""
    offs_d = tl.arange(0, HEAD_PAD)
    in_head = offs_d < HEAD_DIM
    PAD: tl.constexpr = HEAD_PAD != HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        pos_n = start_n + tl.arange(0, BLOCK_N)
        in_seq = pos_n < k_len
        rows = kv_row_offsets(
            table_row_ptr, pos_n, in_seq, stride_kt, stride_kb, stride_ks, PAGED, BLOCK_SIZE
        )
        if PAGED:  # the two caches share one layout
            v_rows = rows
        else:  # packed k and v may be slices of one fused projection, with different row strides
            v_rows = pos_n.to(tl.int64) * stride_vt
        k_ptrs = k_base + rows[None, :] + offs_d[:, None]
        v_ptrs = v_base + v_rows[:, None] + offs_d[None, :]
        k_t = load_tile(k_ptrs, in_seq[None, :], in_head[:, None], MASKED, PAD)
        v = load_tile(v_ptrs, in_seq[:, None], in_head[None, :], MASKED, PAD)
        visible = in_seq[None, :]  # unless MASKED, unused: every key of the tile is visible to every row
        if MASKED:
            if CAUSAL:
                visible = visible & (pos_n[None, :] <= pos_m[:, None])
            if HAS_WINDOW:
                visible = visible & (pos_n[None, :] > pos_m[:, None] - window)
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, k_t, v, visible, qk_scale, qk_cap, MASKED, SOFTCAP, DOT_PRECISION
        )
    return acc, m_i, l_i


@triton.jit
def _flash_prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_q_ptr, cu_k_ptr, table_ptr,
    qk_scale, qk_cap, window,
    stride_qt, stride_qh, stride_kt, stride_kb, stride_ks, stride_kh, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_tb,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    if start_m * BLOCK_M >= q_len:
        return
    k_start = tl.load(cu_k_ptr + seq)
    k_len = tl.load(cu_k_ptr + seq + 1) - k_start
    kv_head = head // GROUP

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_PAD)
    q_rows = (q_start + offs_m).to(tl.int64)
    rows_and_dims = (offs_m[:, None] < q_len) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=rows_and_dims, other=0.0)  # fmt: skip

    # Positions of this tile's first and last query row among the keys (rows past q_len are never stored).
    p0 = k_len - q_len + start_m * BLOCK_M
    p1 = p0 + BLOCK_M - 1
    pos_m = p0 + tl.arange(0, BLOCK_M)
    if CAUSAL:
        hi = tl.minimum(k_len, p1 + 1)
        hi_full = (tl.minimum(p0 + 1, k_len) // BLOCK_N) * BLOCK_N
    else:
        hi = k_len
        hi_full = (k_len // BLOCK_N) * BLOCK_N
    if HAS_WINDOW:
        lo = (tl.maximum(p0 - window + 1, 0) // BLOCK_N) * BLOCK_N
        lo_full = tl.cdiv(tl.maximum(p1 - window + 1, 0), BLOCK_N) * BLOCK_N
    else:
        lo = 0
        lo_full = 0
    mid_lo = tl.minimum(tl.maximum(lo_full, lo), hi)
    mid_hi = tl.minimum(tl.maximum(hi_full, mid_lo), hi)

    k_offset = kv_head * stride_kh
    v_offset = kv_head * stride_vh
    if not PAGED:
        k_offset += k_start.to(tl.int64) * stride_kt
        v_offset += k_start.to(tl.int64) * stride_vt
    k_base = k_ptr + k_offset
    v_base = v_ptr + v_offset
    table_row = table_ptr + seq.to(tl.int64) * stride_tb
    acc, m_i, l_i = init_state(BLOCK_M, HEAD_PAD)
    acc, m_i, l_i = _prefill_range(
        acc, m_i, l_i, q, pos_m, lo, mid_lo, k_base, v_base, table_row, k_len, window, qk_scale, qk_cap,
        stride_kt, stride_vt, stride_kb, stride_ks,
        CAUSAL, HAS_WINDOW, PAGED, True, HEAD_DIM, HEAD_PAD, BLOCK_SIZE, BLOCK_N, SOFTCAP, DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _prefill_range(
        acc, m_i, l_i, q, pos_m, mid_lo, mid_hi, k_base, v_base, table_row, k_len, window, qk_scale, qk_cap,
        stride_kt, stride_vt, stride_kb, stride_ks,
        CAUSAL, HAS_WINDOW, PAGED, False, HEAD_DIM, HEAD_PAD, BLOCK_SIZE, BLOCK_N, SOFTCAP, DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _prefill_range(
        acc, m_i, l_i, q, pos_m, mid_hi, hi, k_base, v_base, table_row, k_len, window, qk_scale, qk_cap,
        stride_kt, stride_vt, stride_kb, stride_ks,
        CAUSAL, HAS_WINDOW, PAGED, True, HEAD_DIM, HEAD_PAD, BLOCK_SIZE, BLOCK_N, SOFTCAP, DOT_PRECISION,
    )  # fmt: skip
    out = finish_rows(acc, l_i)
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rows_and_dims)  # fmt: skip


def _blocks(head_pad: int, on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a padded head size. The interpreter gets small tiles so
    that small test shapes still cross several key blocks and exercise all three ranges. Heads of 256 take
    half the query rows and keys per tile, so the accumulator and the staged key/value tiles still fit."""
    if not on_gpu:
        return 16, 16, 1, 1
    if head_pad <= 64:
        return 128, 64, 4, 3
    return (128, 64, 8, 3) if head_pad <= 128 else (64, 32, 8, 2)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    *,
    causal: bool = True,
    sliding_window: int | None = None,
    block_table: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Triton twin of `reference.varlen_attention`."""
    paged = block_table is not None
    check_dim("q", q, 3, "(total_q, n_heads, head_dim)")
    if paged:
        check_dim("k", k, 4, "paged cache (num_blocks, block_size, n_kv_heads, head_dim)")
    else:
        check_dim("k", k, 3, "(total_k, n_kv_heads, head_dim)")
    check_dtype("q", q, FLOAT_DTYPES)
    for name, t in (("k", k), ("v", v)):
        require(t.dtype == q.dtype, f"{name} dtype {t.dtype} != q dtype {q.dtype}")
    require(v.shape == k.shape, f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    n_heads, head_dim = q.shape[1:]
    n_kv_heads = k.shape[-2]
    require(k.shape[-1] == head_dim, f"k head_dim {k.shape[-1]} != q head_dim {head_dim}")
    check_head_dim(head_dim)
    require(n_kv_heads > 0 and n_heads % n_kv_heads == 0,
            f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")  # fmt: skip
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_inner_contiguous(name, t)
    if paged:
        require(k.stride() == v.stride(), f"k and v caches differ: {k.stride()}, {v.stride()}")
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_dim(name, t, 1, "(batch + 1,)")
        check_dtype(name, t, (torch.int32,))
    require(cu_seqlens_q.shape == cu_seqlens_k.shape and cu_seqlens_q.shape[0] >= 2,
            f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k {tuple(cu_seqlens_k.shape)} must "
        "both "
            "be (batch + 1,) with batch >= 1")  # fmt: skip
    batch = cu_seqlens_q.shape[0] - 1
    if block_table is not None:
        check_dim("block_table", block_table, 2, "(batch, max_blocks)")
        check_dtype("block_table", block_table, (torch.int32,))
        require(
            block_table.shape[0] == batch, f"block_table has {block_table.shape[0]} rows for batch {batch}"
        )
        check_inner_contiguous("block_table", block_table)
    require(
        sliding_window is None or sliding_window >= 1, f"sliding_window must be >= 1, got {sliding_window}"
    )
    require(max_seqlen_q >= 0 and max_seqlen_k >= 0, "max_seqlen_q and max_seqlen_k must be >= 0")
    require(softcap is None or softcap > 0, f"softcap must be > 0, got {softcap}")
    check_same_device(
        q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, block_table=block_table
    )

    if data_checks_enabled(q):
        cu = torch.stack((cu_seqlens_q, cu_seqlens_k)).cpu()  # one device→host copy for all the checks below
        lengths = cu[:, 1:] - cu[:, :-1]
        len_q, len_k = lengths[0], lengths[1]
        require(int(cu[0, 0]) == 0 and int(cu[1, 0]) == 0, "cu_seqlens must start at 0")
        require(bool((lengths >= 0).all()), "cu_seqlens must be non-decreasing")
        require(
            int(cu[0, -1]) <= q.shape[0], f"cu_seqlens_q ends at {int(cu[0, -1])} but q has {q.shape[0]} rows"
        )
        require(int(len_q.max()) <= max_seqlen_q, f"a query length {int(len_q.max())} exceeds max_seqlen_q")
        require(int(len_k.max()) <= max_seqlen_k, f"a key length {int(len_k.max())} exceeds max_seqlen_k")
        require(
            bool((len_q <= len_k).all()),
            "each sequence needs seqlen_q <= seqlen_k (queries are the last keys)",
        )
        if block_table is None:
            require(
                int(cu[1, -1]) <= k.shape[0],
                f"cu_seqlens_k ends at {int(cu[1, -1])} but k has {k.shape[0]} rows",
            )
        else:
            check_block_table(block_table, len_k, k.shape[1], k.shape[0])

    out = torch.empty_like(q)
    if max_seqlen_q == 0 or q.shape[0] == 0:
        return out
    head_pad = padded_head_dim(head_dim)
    block_m, block_n, num_warps, num_stages = _blocks(head_pad, q.is_cuda)
    table = block_table if block_table is not None else cu_seqlens_k  # unread when PAGED is False
    grid = (triton.cdiv(max_seqlen_q, block_m), n_heads, batch)
    _flash_prefill_kernel[grid](
        q, k, v, out, cu_seqlens_q, cu_seqlens_k, table,
        *score_scales(softmax_scale, softcap), sliding_window or 0,
        q.stride(0), q.stride(1),
        0 if paged else k.stride(0), k.stride(0) if paged else 0, k.stride(1) if paged else 0, k.stride(-2),
        0 if paged else v.stride(0), v.stride(-2), out.stride(0), out.stride(1), table.stride(0),
        GROUP=n_heads // n_kv_heads, HEAD_DIM=head_dim, HEAD_PAD=head_pad, CAUSAL=causal,
        HAS_WINDOW=sliding_window is not None, PAGED=paged, BLOCK_SIZE=k.shape[1] if paged else 1,
        BLOCK_M=block_m, BLOCK_N=block_n, SOFTCAP=softcap is not None,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
