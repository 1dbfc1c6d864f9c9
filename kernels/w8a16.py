"""int8 weight × fp16/bf16 activation matmul (Triton kernel and launcher).

Weight layout (`kernels.layout.Int8Weight`): `qweight` int8 `(N, K)` row-major; `scales` either `(N,)`
per output channel (`GROUPED=False`) or `(N, K // 32)` per 32 inputs like GGUF Q8_0 (`GROUPED=True`).
Activations `x (M, K)` with a contiguous last dimension; output `(M, N)` in x's dtype.

int8 values are exact in fp16 and bf16, so per-channel weights go to `tl.dot` unscaled and the scale is
applied once to the fp32 accumulator; grouped weights are scaled in the tile before the dot. One tiled kernel
serves all batch sizes: `BLOCK_M` shrinks to 16 for decode so the weight stream, not the padding, dominates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import Int8Weight
from kernels.validation import check_contiguous, check_linear_inputs, check_same_device, dot_precision


@triton.jit
def _w8a16_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_qn, stride_sn, stride_om,
    GROUPED: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
            other=0.0,
        )  # (BLOCK_M, BLOCK_K)
        w_mask = (offs_n[None, :] < N) & (offs_k[:, None] < K)
        w = tl.load(
            q_ptr + offs_n[None, :] * stride_qn + offs_k[:, None], mask=w_mask, other=0
        )  # (BLOCK_K, BLOCK_N)
        if GROUPED:
            scale = tl.load(
                s_ptr + offs_n[None, :] * stride_sn + offs_k[:, None] // GROUP, mask=w_mask, other=0.0
            )
            w = (w.to(tl.float32) * scale.to(tl.float32)).to(x.dtype)
        else:
            w = w.to(x.dtype)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    if not GROUPED:
        acc *= tl.load(s_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(
        out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=out_mask,
    )


def linear_w8a16(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `reference.linear_w8a16`: `x (..., K) @ dequantize(w).T + bias` → `(..., N)`."""
    check_linear_inputs(x, w.in_features, w.out_features, bias)
    check_contiguous("Int8Weight.qweight", w.qweight)
    check_contiguous("Int8Weight.scales", w.scales)
    check_same_device(x=x, qweight=w.qweight, scales=w.scales, bias=bias)

    x2 = x.reshape(-1, w.in_features)
    m, n, k = x2.shape[0], w.out_features, w.in_features
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    grouped = w.group_size is not None
    block_m = 16 if m <= 16 else 64
    block_n, block_k = 64, 64
    _w8a16_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        x2, w.qweight, w.scales, bias if bias is not None else out, out,
        m, n, k,
        x2.stride(0), w.qweight.stride(0), w.scales.stride(0) if grouped else 0, out.stride(0),
        GROUPED=grouped, GROUP=w.group_size or 1, HAS_BIAS=bias is not None,
        DOT_PRECISION=dot_precision(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], n)
