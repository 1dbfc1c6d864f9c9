"""`@triton.jit` helpers shared by the two attention kernels (`flash_prefill.py`, `paged_decode.py`).

* `kv_row_offsets`: where key positions of one sequence live, packed (`pos * stride_kt` from the sequence's
  first row) or paged (through the sequence's block-table row into `(num_blocks, BLOCK_SIZE, ...)` caches).
  Gathering row by row lets a key tile span several cache blocks, so the tile size is independent of the
  cache's block size.
* `load_tile`: a key or value tile, zeroed past the sequence and past the head size. Head sizes that are not a
  power of two (96, 80) run on tiles padded to the next one; the zero columns add nothing to the scores and
  are never stored. The masks are compile-time switches, so a full tile of a power-of-two head loads bare.
* `attend_tile`: one online-softmax step (FlashAttention-2) in the log2 domain: scores are pre-multiplied by
  `softmax_scale * log2(e)` so `exp2` can be used. With a logit cap (Gemma 2), a score `s` becomes
  `cap * tanh(s / cap)` first; `score_scales` folds both scalings into the two factors the kernels take.
  The running max starts at a large finite negative value (not -inf) so that a row with no visible key in
  a tile gets `p = 0`, `alpha = 1` instead of NaN.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl


def score_scales(softmax_scale: float, softcap: float | None) -> tuple[float, float]:
    """(qk_scale, qk_cap) for `attend_tile`: the log2-domain score is `qk_scale * q.k`, or with a cap
    `qk_cap * tanh(q.k * qk_scale)`, which is `log2(e) * cap * tanh(softmax_scale * q.k / cap)`."""
    if softcap is None:
        return softmax_scale * math.log2(math.e), 0.0
    return softmax_scale / softcap, softcap * math.log2(math.e)


@triton.jit
def kv_row_offsets(table_row_ptr, pos, mask, stride_kt, stride_kb, stride_ks, PAGED: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr):  # fmt: skip
    """Element offsets (int64) of key positions `pos` of one sequence; `mask` guards the block-table reads."""
    if PAGED:
        block = tl.load(table_row_ptr + pos // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
        return block * stride_kb + (pos % BLOCK_SIZE).to(tl.int64) * stride_ks
    else:
        return pos.to(tl.int64) * stride_kt


@triton.jit
def load_tile(ptrs, seq_mask, dim_mask, MASK_SEQ: tl.constexpr, MASK_DIM: tl.constexpr):
    """Load `ptrs`, with zeros where `seq_mask` (MASK_SEQ) or `dim_mask` (MASK_DIM) is false."""
    if MASK_SEQ:
        if MASK_DIM:
            tile = tl.load(ptrs, mask=seq_mask & dim_mask, other=0.0)
        else:
            tile = tl.load(ptrs, mask=seq_mask, other=0.0)
    else:
        if MASK_DIM:
            tile = tl.load(ptrs, mask=dim_mask, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def init_state(BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Empty running state (acc, max, sum) for BLOCK_M query rows; the max starts finite (see above)."""
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    return acc, m_i, l_i


@triton.jit
def attend_tile(acc, m_i, l_i, q, k_t, v, visible, qk_scale, qk_cap, MASKED: tl.constexpr,
                SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Fold one key tile into the running (acc, max, sum).

    q `(M, D)`, k_t `(D, N)`, v `(N, D)`, visible `(M, N)` (ignored unless MASKED); the scales are
    `score_scales`'s."""
    s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
    if SOFTCAP:
        s = qk_cap * (2.0 * tl.sigmoid(2.0 * s) - 1.0)  # tanh, portably
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def finish_rows(acc, l_i):
    """acc / l, with rows that saw no key at all (l == 0) set to zero like the reference."""
    return acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
