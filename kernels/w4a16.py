"""int4 (and 5-/6-bit) weight × fp16/bf16 activation matmul (Triton kernels and launcher).

Weight layout (`kernels.layout.Int4Weight`): `qweight` uint8 `(N, K // 2)`, the low 4 bits of column `k` of
row `n` in byte `k // 2`, nibble `k % 2` (low first); for 5 or 6 bits (`HIGH_BITS` 1 or 2) `qhigh` uint8
`(N, K * HIGH_BITS // 8)` holds the bits above, column `k`'s starting at bit `(k * HIGH_BITS) % 8` of byte
`k * HIGH_BITS // 8`. `scales` / `mins` `(N, K // GROUP)` with `GROUP` 16, 32 or 128, each multiplied by its
super-block's `super_scales` / `super_mins` `(N, K // 256)` when `SUPER` (GGUF K-quants);
`w = scale * q + min`, or `scale * (q - 2 ** (3 + HIGH_BITS))` when there are no mins (GGUF Q4_0, Q5_0, Q6_K).
Activations `x (M, K)` with a contiguous last dimension; output `(M, N)` in x's dtype.

Both paths read each packed byte once and split it into the even-column (low nibble) and odd-column (high
nibble) weight tiles with the shared `_dequant_int4_pair`, multiplying them with x's even and odd columns:

* GEMV (M <= 4, decode): each program owns `BLOCK_N` output features for all M rows and streams the weight
  once; products are reduced on the CUDA cores (a tensor-core tile would be >= 75% padding at M <= 4).
* GEMM (M > 4, prefill): `BLOCK_M x BLOCK_N` tiles, the weight tile is dequantized to x's dtype and fed to
  `tl.dot`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import Int4Weight
from kernels.validation import check_contiguous, check_linear_inputs, check_same_device, dot_precision

GEMV_MAX_M = 4


@triton.jit
def _dequant_int4_pair(q_ptr, h_ptr, s_ptr, m_ptr, ss_ptr, sm_ptr, n, kb, mask,
                       stride_qn, stride_hn, stride_sn, stride_ssn,
                       GROUP: tl.constexpr, HIGH_BITS: tl.constexpr, HAS_MIN: tl.constexpr,
                       SUPER: tl.constexpr):  # fmt: skip
    """fp32 weights of input columns `2 * kb` (low nibbles) and `2 * kb + 1` (high nibbles) of rows `n`.

    `n` and `kb` are broadcastable index tensors; the two tiles take their broadcast shape. Each packed byte
    is loaded once; both of its columns share a byte of high bits and a scale group because GROUP is even.
    A two-level scale is the product of two loads, exact in fp32 like the reference's."""
    byte = tl.load(q_ptr + n * stride_qn + kb, mask=mask, other=0).to(tl.int32)
    lo = byte & 0xF
    hi = byte >> 4
    if HIGH_BITS > 0:
        # Column 2 * kb's high bits start at `bit`; column 2 * kb + 1's follow them in the same byte.
        bit = 2 * kb * HIGH_BITS
        high = tl.load(h_ptr + n * stride_hn + bit // 8, mask=mask, other=0).to(tl.int32) >> (bit % 8)
        lo |= (high & ((1 << HIGH_BITS) - 1)) << 4
        hi |= ((high >> HIGH_BITS) & ((1 << HIGH_BITS) - 1)) << 4
    s_offs = n * stride_sn + (2 * kb) // GROUP
    ss_offs = n * stride_ssn + (2 * kb) // 256
    scale = tl.load(s_ptr + s_offs, mask=mask, other=0).to(tl.float32)
    if SUPER:
        scale *= tl.load(ss_ptr + ss_offs, mask=mask, other=0).to(tl.float32)
    if HAS_MIN:
        zero = tl.load(m_ptr + s_offs, mask=mask, other=0).to(tl.float32)
        if SUPER:
            zero *= tl.load(sm_ptr + ss_offs, mask=mask, other=0).to(tl.float32)
        return lo.to(tl.float32) * scale + zero, hi.to(tl.float32) * scale + zero
    return (lo - (8 << HIGH_BITS)).to(tl.float32) * scale, (hi - (8 << HIGH_BITS)).to(tl.float32) * scale


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr, q_ptr, h_ptr, s_ptr, m_ptr, ss_ptr, sm_ptr, b_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_qn, stride_hn, stride_sn, stride_ssn, stride_om,
    GROUP: tl.constexpr, HIGH_BITS: tl.constexpr, HAS_MIN: tl.constexpr, SUPER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb0 in range(0, K // 2, BLOCK_KB):
        offs_kb = kb0 + tl.arange(0, BLOCK_KB)  # packed byte columns
        # (BLOCK_N, BLOCK_KB) each
        w_even, w_odd = _dequant_int4_pair(
            q_ptr, h_ptr, s_ptr, m_ptr, ss_ptr, sm_ptr,
            offs_n[:, None], offs_kb[None, :], (offs_n[:, None] < N) & (offs_kb[None, :] < K // 2),
            stride_qn, stride_hn, stride_sn, stride_ssn, GROUP, HIGH_BITS, HAS_MIN, SUPER,
        )  # fmt: skip
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + 2 * offs_kb[None, :]
        x_mask = (offs_m[:, None] < M) & (offs_kb[None, :] < K // 2)
        x_even = tl.load(x_ptrs, mask=x_mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_KB)
        x_odd = tl.load(x_ptrs + 1, mask=x_mask, other=0.0).to(tl.float32)
        acc += tl.sum(x_even[:, None, :] * w_even[None, :, :] + x_odd[:, None, :] * w_odd[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=out_mask)  # fmt: skip


@triton.jit
def _w4a16_gemm_kernel(
    x_ptr, q_ptr, h_ptr, s_ptr, m_ptr, ss_ptr, sm_ptr, b_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_qn, stride_hn, stride_sn, stride_ssn, stride_om,
    GROUP: tl.constexpr, HIGH_BITS: tl.constexpr, HAS_MIN: tl.constexpr, SUPER: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb0 in range(0, K // 2, BLOCK_KB):
        offs_kb = kb0 + tl.arange(0, BLOCK_KB)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + 2 * offs_kb[None, :]
        x_mask = (offs_m[:, None] < M) & (offs_kb[None, :] < K // 2)
        x_even = tl.load(x_ptrs, mask=x_mask, other=0.0)  # (BLOCK_M, BLOCK_KB)
        x_odd = tl.load(x_ptrs + 1, mask=x_mask, other=0.0)
        # (BLOCK_KB, BLOCK_N) each
        w_even, w_odd = _dequant_int4_pair(
            q_ptr, h_ptr, s_ptr, m_ptr, ss_ptr, sm_ptr,
            offs_n[None, :], offs_kb[:, None], (offs_n[None, :] < N) & (offs_kb[:, None] < K // 2),
            stride_qn, stride_hn, stride_sn, stride_ssn, GROUP, HIGH_BITS, HAS_MIN, SUPER,
        )  # fmt: skip
        # Splitting K into even and odd columns is two half-depth dots: the same FLOPs as one full-depth dot.
        acc = tl.dot(x_even, w_even.to(x_even.dtype), acc, input_precision=DOT_PRECISION)
        acc = tl.dot(x_odd, w_odd.to(x_odd.dtype), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=out_mask)  # fmt: skip


def linear_w4a16(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `reference.linear_w4a16`: `x (..., K) @ dequantize(w).T + bias` → `(..., N)`."""
    check_linear_inputs(x, w.in_features, w.out_features, bias)
    tensors = w.tensors()
    for name, t in tensors.items():
        check_contiguous(f"Int4Weight.{name}", t)
    check_same_device(x=x, bias=bias, **tensors)

    x2 = x.reshape(-1, w.in_features)
    m, n, k = x2.shape[0], w.out_features, w.in_features
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    # Absent tensors are passed as stand-ins their constexpr flag never lets the kernel read.
    qhigh = w.qhigh if w.qhigh is not None else w.qweight
    mins = w.mins if w.mins is not None else w.scales
    super_scales = w.super_scales if w.super_scales is not None else w.scales
    super_mins = w.super_mins if w.super_mins is not None else super_scales
    bias_arg = bias if bias is not None else out
    common = dict(GROUP=w.group_size, HIGH_BITS=w.bits - 4, HAS_MIN=w.mins is not None,
                  SUPER=w.super_scales is not None, HAS_BIAS=bias is not None)  # fmt: skip
    args = (x2, w.qweight, qhigh, w.scales, mins, super_scales, super_mins, bias_arg, out, m, n, k,
            x2.stride(0), w.qweight.stride(0), qhigh.stride(0), w.scales.stride(0), super_scales.stride(0),
            out.stride(0))  # fmt: skip
    if m <= GEMV_MAX_M:
        # Narrow output tiles give enough programs to keep every SM streaming weights at decode.
        block_m = triton.next_power_of_2(m)
        block_n = 16
        _w4a16_gemv_kernel[(triton.cdiv(n, block_n),)](
            *args,
            **common,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_KB=64 if block_m <= 2 else 32,
            num_warps=4,
        )
    else:
        block_m = 64 if m >= 64 else 16
        block_n = 64
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _w4a16_gemm_kernel[grid](
            *args, **common, DOT_PRECISION=dot_precision(x.dtype),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_KB=32, num_warps=4, num_stages=3,
        )  # fmt: skip
    return out.reshape(*x.shape[:-1], n)
