"""Plain-torch twins of the Triton kernels: the ground truth in tests and the CPU fallback of the engine.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`: prefill one sequence at a time
with an explicit boolean mask (bottom-right aligned causal mask, optional sliding window), so a prompt gives
the same numbers whether part of it came from the prefix cache or not; decode one sequence at a time over
exactly its visible keys, with the query heads of a kv group as that head's query rows; quantized matmuls
dequantize and call `torch.nn.functional.linear`. Shapes and semantics are the contract `dispatch.py`
exposes; see each function.

Attention conventions shared with the kernels:

* Packed varlen: sequence `i` owns rows `cu_seqlens[i]:cu_seqlens[i + 1]` of q (and of k/v when unpaged).
* Paged cache: `(num_blocks, block_size, n_kv_heads, head_dim)`; sequence `i`'s key at position `p` lives in
  block `block_table[i, p // block_size]`, row `p % block_size`.
* Queries are the last `seqlen_q` positions of the `seqlen_k` keys, so query `j` sits at position
  `seqlen_k - seqlen_q + j` and (causal) sees keys at positions `<=` its own; with `sliding_window=W` it sees
  positions in `(p - W, p]`.
* GQA: query head `h` reads kv head `h // (n_heads // n_kv_heads)`.
* Logit cap (`softcap=c`, Gemma 2): a scaled score `s` becomes `c * tanh(s / c)` before the mask and the
  softmax; SDPA has no such step, so capped attention is computed in plain torch (`_capped_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.layout import Int4Weight, Int8Weight, dequantize


def _key_positions(block_row: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Flat cache rows `(length,)` of positions `[0, length)` of one sequence, through its block table row."""
    pos = torch.arange(length, device=block_row.device)
    return block_row[pos // block_size].long() * block_size + pos % block_size


def _capped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float,
    softcap: float,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA's `(..., Lq, D) x (..., Lk, D)` attention with each scaled score capped at `softcap` (tanh)."""
    scores = (q @ k.transpose(-1, -2)) * softmax_scale
    scores = softcap * torch.tanh(scores / softcap)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    sliding_window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """One sequence: q `(sq, H, D)`, k/v `(sk, Hkv, D)` → `(sq, H, D)`, queries aligned to the last keys."""
    sq, n_heads, _ = q.shape
    sk, n_kv_heads, _ = k.shape
    group = n_heads // n_kv_heads
    q_pos = torch.arange(sk - sq, sk, device=q.device)[:, None]
    k_pos = torch.arange(sk, device=q.device)[None, :]
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= k_pos <= q_pos
    if sliding_window is not None:
        allowed &= k_pos > q_pos - sliding_window
    # Batched 4-D inputs let SDPA take its fused CPU kernel (3-D ones fall back to the unfused math path).
    qf = q.float().transpose(0, 1)[None]  # (1, H, sq, D)
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)[None]  # (1, H, sk, D)
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)[None]
    if softcap is not None:
        out = _capped_attention(qf, kf, vf, softmax_scale, softcap, allowed)[0]
    elif causal and sq == sk and sliding_window is None:
        # The plain causal square: SDPA's own flag lets the fused kernel skip the masked half.
        out = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True, scale=softmax_scale)[0]
    else:
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=allowed, scale=softmax_scale)[0]
    # A query that sees no key would get NaN from SDPA; it gets zeros, like the kernels (rows with l == 0).
    # That needs no keys at all, a window below 1, or more queries than keys; otherwise skip the check.
    if sk == 0 or (sliding_window is not None and sliding_window < 1) or (causal and sq > sk):
        out = torch.where(allowed.any(dim=1)[None, :, None], out, 0.0)
    return out.transpose(0, 1).to(q.dtype)


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
    """Attention over a packed batch of variable-length sequences → `(total_q, n_heads, head_dim)`.

    q: `(total_q, n_heads, head_dim)`. Without `block_table`, k/v are packed
    `(total_k, n_kv_heads, head_dim)`. With `block_table` `(batch, max_blocks)` int32, k/v are the paged
    caches and sequence `i` reads positions `[0, cu_seqlens_k[i+1] - cu_seqlens_k[i])` through
    `block_table[i]`.
    `max_seqlen_*` are accepted for parity with the kernel (which sizes its grid with them), unused here.
    """
    del max_seqlen_q, max_seqlen_k
    out = torch.empty_like(q)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        sq, sk = cq[i + 1] - cq[i], ck[i + 1] - ck[i]
        if sq == 0:
            continue
        if block_table is None:
            ki, vi = k[ck[i] : ck[i + 1]], v[ck[i] : ck[i + 1]]
        else:
            rows = _key_positions(block_table[i], sk, k.shape[1])
            ki = k.flatten(0, 1)[rows]
            vi = v.flatten(0, 1)[rows]
        out[cq[i] : cq[i + 1]] = _attend(
            q[cq[i] : cq[i + 1]], ki, vi, softmax_scale, causal, sliding_window, softcap
        )
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    softmax_scale: float,
    *,
    sliding_window: int | None = None,
    traceable: bool = False,
    softcap: float | None = None,
) -> torch.Tensor:
    """One query token per sequence over the paged cache → `(batch, n_heads, head_dim)`.

    q: `(batch, n_heads, head_dim)`; `context_lens[i]` counts the keys of sequence i including the current
    token (already written to the cache), so the query sits at position `context_lens[i] - 1`. `traceable`:
    one padded batch that reads nothing back to the host, for a `torch.compile` graph.
    """
    if traceable:
        return _paged_decode_padded(
            q, k_cache, v_cache, block_tables, context_lens, softmax_scale, sliding_window, softcap
        )
    batch, n_heads, head_dim = q.shape
    block_size, n_kv_heads = k_cache.shape[1], k_cache.shape[2]
    flat_k, flat_v = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    out = torch.zeros_like(q)  # a sequence with no visible key gets zeros, like the kernel
    # One sequence at a time over exactly its visible keys, so a sequence's numbers do not depend on what
    # else is in the batch (same seed, same text). The query is the last position: no mask is needed, and
    # the query heads sharing a kv head act as that head's query rows, so k/v are never repeated.
    for i, length in enumerate(context_lens.tolist()):
        rows = _key_positions(block_tables[i], length, block_size)
        if sliding_window is not None:
            rows = rows[max(0, length - sliding_window) :]
        if len(rows) == 0:
            continue
        keys = flat_k[rows].float().transpose(0, 1)  # (Hkv, L, D)
        values = flat_v[rows].float().transpose(0, 1)
        grouped_q = q[i].float().reshape(n_kv_heads, n_heads // n_kv_heads, head_dim)
        if softcap is None:
            attended = F.scaled_dot_product_attention(grouped_q, keys, values, scale=softmax_scale)
        else:
            attended = _capped_attention(grouped_q, keys, values, softmax_scale, softcap)
        out[i] = attended.reshape(n_heads, head_dim).to(q.dtype)
    return out


def _paged_decode_padded(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """`paged_decode_attention` as one padded, masked batch, for `torch.compile` (no host reads, no loop).

    Every sequence reads all `block_tables.shape[1]` blocks; keys past its length (or outside its window)
    get -inf scores. Its numbers may differ from the per-sequence form by float rounding.
    """
    batch, n_heads, head_dim = q.shape
    block_size, n_kv_heads = k_cache.shape[1], k_cache.shape[2]
    width = block_tables.shape[1] * block_size
    tables = block_tables.long()
    keys = k_cache[tables].reshape(batch, width, n_kv_heads, head_dim).float()
    values = v_cache[tables].reshape(batch, width, n_kv_heads, head_dim).float()
    grouped_q = q.reshape(batch, n_kv_heads, n_heads // n_kv_heads, head_dim).float()
    scores = torch.einsum("bhgd,blhd->bhgl", grouped_q, keys) * softmax_scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    pos = torch.arange(width, device=q.device)[None, :]
    lengths = context_lens.long()[:, None]
    visible = pos < lengths
    if sliding_window is not None:
        visible &= pos >= lengths - sliding_window
    weights = scores.masked_fill(~visible[:, None, None, :], float("-inf")).softmax(dim=-1)
    weights = torch.where(visible.any(dim=-1)[:, None, None, None], weights, 0.0)  # no key: zeros
    out = torch.einsum("bhgl,blhd->bhgd", weights, values)
    return out.reshape(batch, n_heads, head_dim).to(q.dtype)


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    traceable: bool = False,
) -> None:
    """Scatter k/v `(tokens, n_kv_heads, head_dim)` into the paged caches in place; slot -1 skips a token.
    `traceable` (a `torch.compile` graph, where the host cannot read the slots): every slot must be valid."""
    if not traceable:
        keep = slot_mapping >= 0
        if not bool(keep.all()):  # boolean selection only when some token is skipped (it costs a nonzero)
            slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping.long(), k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping.long(), v.to(v_cache.dtype))


def linear_w4a16(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x (..., in) @ dequantize(w).T + bias` → `(..., out)` in x's dtype."""
    return F.linear(x, dequantize(w, x.dtype), bias)


def linear_w8a16(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x (..., in) @ dequantize(w).T + bias` → `(..., out)` in x's dtype."""
    return F.linear(x, dequantize(w, x.dtype), bias)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm with an optional fused residual add → `(out, new_residual)`.

    `h = x + residual` (in x's dtype, as the unfused model would keep its residual stream) or `h = x`;
    `out = h / sqrt(mean(h^2) + eps) * weight`, statistics in float32; `new_residual = h`.
    """
    h = x if residual is None else x + residual
    hf = h.float()
    normed = hf * torch.rsqrt(hf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight).to(x.dtype), h
