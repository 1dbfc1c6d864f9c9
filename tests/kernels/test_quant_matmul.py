"""Triton W4A16 (GEMV and GEMM paths, group 32/128, with and without mins) and W8A16 (per-channel, group 32)
against the reference, and their input checks."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.layout import Int4Weight, Int8Weight, quantize_int4, quantize_int8
from tests.kernels.kernel_cases import (
    DEVICE,
    KERNEL_DTYPES,
    assert_close,
    forbid_launch,
    gpu,
    needs_gpu,
    needs_triton,
)

pytestmark = needs_triton


def int4_weight(out_features: int, in_features: int, group_size: int, symmetric: bool) -> Int4Weight:
    w = quantize_int4(torch.randn(out_features, in_features), group_size)
    if symmetric:  # the GGUF Q4_0 form: implicit zero point 8, no mins
        w = Int4Weight(w.qweight, w.scales, None, group_size, in_features, out_features)
    return w.to(DEVICE)


def activations(m: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    # Scaled so outputs stay O(1) and the tolerance table's absolute part stays meaningful.
    return (torch.randn(m, in_features, device=DEVICE) / in_features**0.5).to(dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 4, 5, 33])  # 1-4: GEMV path; 5+: GEMM path
@pytest.mark.parametrize(("group_size", "symmetric"), [(32, False), (128, False), (32, True)])
def test_w4a16_matches_reference(m: int, group_size: int, symmetric: bool, dtype: torch.dtype) -> None:
    from kernels import w4a16

    w = int4_weight(72, 256, group_size, symmetric)
    x = activations(m, 256, dtype)
    bias = torch.randn(72, device=DEVICE).to(dtype) if m != 4 else None
    out = w4a16.linear_w4a16(x, w, bias)
    assert out.dtype == dtype and out.shape == (m, 72)
    assert_close(out, reference.linear_w4a16(x, w, bias), dtype)


def test_w4a16_leading_dims() -> None:
    from kernels import w4a16

    w = int4_weight(40, 128, 128, False)
    x = activations(6, 128, torch.float32).reshape(2, 3, 128)
    out = w4a16.linear_w4a16(x, w)
    assert out.shape == (2, 3, 40)
    assert_close(out, reference.linear_w4a16(x, w), torch.float32)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 4, 40])
@pytest.mark.parametrize("group_size", [None, 32])
def test_w8a16_matches_reference(m: int, group_size: int | None, dtype: torch.dtype) -> None:
    from kernels import w8a16

    w = quantize_int8(torch.randn(72, 160), group_size).to(DEVICE)
    x = activations(m, 160, dtype)
    bias = torch.randn(72, device=DEVICE).to(dtype)
    out = w8a16.linear_w8a16(x, w, bias)
    assert out.dtype == dtype and out.shape == (m, 72)
    assert_close(out, reference.linear_w8a16(x, w, bias), dtype)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 4, 16, 512])
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (1536, 576), (11008, 4096)])
def test_quant_matmul_large(m: int, n: int, k: int, dtype: torch.dtype) -> None:
    from kernels import w4a16, w8a16

    x = activations(m, k, dtype)
    for group_size in (32, 128):
        w4 = int4_weight(n, k, group_size, False)
        assert_close(w4a16.linear_w4a16(x, w4), reference.linear_w4a16(x, w4), dtype)
    for group in (None, 32):
        w8 = quantize_int8(torch.randn(n, k), group).to(DEVICE)
        assert_close(w8a16.linear_w8a16(x, w8), reference.linear_w8a16(x, w8), dtype)


@pytest.mark.parametrize(
    ("x", "bias", "match"),
    [
        pytest.param(torch.randn(2, 128).int(), None, "x must have dtype", id="x-int"),
        pytest.param(torch.randn(2, 96), None, "in_features 128", id="in-features"),
        pytest.param(torch.randn(128, 2).T, None, "contiguous last", id="x-strided"),
        pytest.param(torch.randn(2, 128), torch.randn(7), "bias must be", id="bias-shape"),
    ],
)
def test_linear_bad_activations(
    x: torch.Tensor, bias: torch.Tensor | None, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernels import w4a16, w8a16

    forbid_launch(monkeypatch, w4a16, "_w4a16_gemv_kernel", "_w4a16_gemm_kernel")
    forbid_launch(monkeypatch, w8a16, "_w8a16_kernel")
    x = x.to(DEVICE)
    bias = None if bias is None else bias.to(DEVICE)
    with pytest.raises(ValueError, match=match):
        w4a16.linear_w4a16(x, int4_weight(40, 128, 32, False), bias)
    with pytest.raises(ValueError, match=match):
        w8a16.linear_w8a16(x, quantize_int8(torch.randn(40, 128)).to(DEVICE), bias)


def test_linear_rejects_strided_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import w4a16, w8a16

    forbid_launch(monkeypatch, w4a16, "_w4a16_gemv_kernel", "_w4a16_gemm_kernel")
    forbid_launch(monkeypatch, w8a16, "_w8a16_kernel")
    w4 = int4_weight(40, 128, 32, False)
    # A column slice keeps the dataclass shape valid but is not contiguous.
    wide = torch.zeros(40, 128, dtype=torch.uint8, device=DEVICE)
    strided = Int4Weight(wide[:, :64], w4.scales, w4.mins, 32, 128, 40)
    with pytest.raises(ValueError, match="qweight must be contiguous"):
        w4a16.linear_w4a16(activations(1, 128, torch.float32), strided)
    q8 = torch.zeros(40, 256, dtype=torch.int8, device=DEVICE)[:, ::2]
    w8 = Int8Weight(q8, torch.ones(40, device=DEVICE), None, 128, 40)
    with pytest.raises(ValueError, match="qweight must be contiguous"):
        w8a16.linear_w8a16(activations(1, 128, torch.float32), w8)
