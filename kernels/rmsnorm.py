"""Fused residual add + RMSNorm (Triton kernel and launcher).

Layout: x, residual `(rows, hidden)` with a contiguous last dimension (rows through `stride_*`), weight
`(hidden,)`. One program per row; the whole row sits in one tile (`BLOCK_N >= hidden`), so the statistics
need a single pass. The residual sum is rounded to x's dtype before the statistics, like the unfused model
that keeps its residual stream in that dtype (and like `reference.rms_norm`).
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
    require,
)

MAX_HIDDEN = 65536  # one row per tile; larger rows would spill registers


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    h_ptr,
    n_cols,
    eps,
    stride_xm,
    stride_rm,
    stride_om,
    stride_hm,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    h = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        h = h + tl.load(res_ptr + row * stride_rm + cols, mask=mask, other=0.0)
        tl.store(h_ptr + row * stride_hm + cols, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + cols, (hf * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `reference.rms_norm` → `(out, new_residual)`; new tensors, inputs untouched."""
    check_dtype("x", x, FLOAT_DTYPES)
    check_dim("weight", weight, 1, "(hidden,)")
    check_dtype("weight", weight, FLOAT_DTYPES)
    hidden = x.shape[-1]
    require(weight.shape[0] == hidden, f"weight has {weight.shape[0]} elements, x has hidden size {hidden}")
    require(hidden <= MAX_HIDDEN, f"hidden size {hidden} exceeds the supported {MAX_HIDDEN}")
    check_inner_contiguous("x", x)
    check_inner_contiguous("weight", weight)
    if residual is not None:
        require(residual.shape == x.shape, f"residual shape {tuple(residual.shape)} != x {tuple(x.shape)}")
        require(residual.dtype == x.dtype, f"residual dtype {residual.dtype} != x dtype {x.dtype}")
        check_inner_contiguous("residual", residual)
    check_same_device(x=x, weight=weight, residual=residual)

    x2 = x.reshape(-1, hidden)
    r2 = x2 if residual is None else residual.reshape(-1, hidden)
    out = torch.empty_like(x2)
    h = x2 if residual is None else torch.empty_like(x2)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, h, hidden, eps,
            x2.stride(0), r2.stride(0), out.stride(0), h.stride(0),
            HAS_RESIDUAL=residual is not None,
            BLOCK_N=triton.next_power_of_2(hidden),
            num_warps=min(16, max(1, triton.next_power_of_2(hidden) // 256)),
        )  # fmt: skip
    return out.reshape(x.shape), (x if residual is None else h.reshape(x.shape))
