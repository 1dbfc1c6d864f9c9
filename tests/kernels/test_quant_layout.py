"""Quantized weight layouts: packing, quantization error bounds, GGUF repack of synthetic blocks, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import reference
from kernels.layout import (
    Int4Weight,
    Int8Weight,
    dequantize,
    pack_int4,
    quantize_int4,
    quantize_int8,
    repack_q4_0,
    repack_q4_1,
    repack_q8_0,
    unpack_int4,
)


def test_pack_unpack_roundtrip_and_nibble_order() -> None:
    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (3, 32)
    assert int(packed[1, 5]) == int(q[1, 10]) | (int(q[1, 11]) << 4)
    torch.testing.assert_close(unpack_int4(packed), q)


@pytest.mark.parametrize("group_size", [32, 128])
def test_quantize_int4_error_bound(group_size: int) -> None:
    w = torch.randn(8, 256)
    qw = quantize_int4(w, group_size)
    err = (dequantize(qw) - w).abs().reshape(8, -1, group_size)
    # Rounding to the nearest of 16 levels: at most half a step, plus fp16 rounding of scale and min.
    half_step = qw.scales.float()[..., None] / 2
    assert bool((err <= half_step * 1.01 + 1e-3).all())


@pytest.mark.parametrize("group_size", [None, 32])
def test_quantize_int8_error_bound(group_size: int | None) -> None:
    w = torch.randn(8, 64)
    qw = quantize_int8(w, group_size)
    scales = qw.scales.float() if group_size is None else qw.scales.float().repeat_interleave(32, dim=1)
    if group_size is None:
        scales = scales[:, None]
    assert bool(((dequantize(qw) - w).abs() <= scales / 2 * 1.01 + 1e-6).all())


def gguf_q4_1_bytes(d: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hand-built GGUF Q4_1 blocks: fp16 d, fp16 m, byte j = q[j] | q[j + 16] << 4."""
    nibbles = q[:, :16] | (q[:, 16:] << 4)
    d_bytes = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    m_bytes = m.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return np.concatenate([d_bytes, m_bytes, nibbles.astype(np.uint8)], axis=1)


def test_repack_q4_1_synthetic_blocks() -> None:
    rows, cols = 3, 64
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, size=(rows * cols // 32, 32), dtype=np.uint8)
    d = rng.random(rows * cols // 32).astype(np.float16)
    m = -rng.random(rows * cols // 32).astype(np.float16)
    raw = gguf_q4_1_bytes(d, m, q)
    w = repack_q4_1(raw, (rows, cols))
    expected = d.astype(np.float32)[:, None] * q.astype(np.float32) + m.astype(np.float32)[:, None]
    np.testing.assert_array_equal(dequantize(w).numpy(), expected.reshape(rows, cols))


def test_repack_q4_0_and_q8_0_synthetic_blocks() -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, size=(4, 32), dtype=np.uint8)
    d = rng.random(4).astype(np.float16)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), q[:, :16] | (q[:, 16:] << 4)], axis=1)
    w4 = repack_q4_0(raw, (2, 64))
    assert w4.mins is None
    expected = d.astype(np.float32)[:, None] * (q.astype(np.float32) - 8)
    np.testing.assert_array_equal(dequantize(w4).numpy(), expected.reshape(2, 64))

    q8 = rng.integers(-127, 128, size=(4, 32), dtype=np.int8)
    raw8 = np.concatenate([d.view(np.uint8).reshape(-1, 2), q8.view(np.uint8)], axis=1)
    w8 = repack_q8_0(raw8, (2, 64))
    expected8 = d.astype(np.float32)[:, None] * q8.astype(np.float32)
    np.testing.assert_array_equal(dequantize(w8).numpy(), expected8.reshape(2, 64))


def test_repack_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="bytes"):
        repack_q4_1(np.zeros(10, dtype=np.uint8), (1, 32))
    with pytest.raises(ValueError, match="multiple"):
        repack_q8_0(np.zeros(34, dtype=np.uint8), (1, 31))
    with pytest.raises(ValueError, match="uint8"):
        repack_q4_0(np.zeros(18, dtype=np.int8), (1, 32))


def test_weight_dataclasses_validate() -> None:
    with pytest.raises(ValueError, match="group_size"):
        Int4Weight(torch.zeros(2, 32, dtype=torch.uint8), torch.ones(2, 1), None, 64, 64, 2)
    with pytest.raises(ValueError, match="qweight"):
        Int4Weight(torch.zeros(2, 64, dtype=torch.uint8), torch.ones(2, 2), None, 32, 64, 2)
    with pytest.raises(ValueError, match="scales"):
        Int8Weight(torch.zeros(2, 64, dtype=torch.int8), torch.ones(2, 1), 32, 64, 2)


def test_reference_linear_uses_dequantized_weight() -> None:
    w = torch.randn(16, 64)
    x = torch.randn(3, 64)
    bias = torch.randn(16)
    q4 = quantize_int4(w, 32)
    torch.testing.assert_close(reference.linear_w4a16(x, q4, bias), x @ dequantize(q4).T + bias)
    q8 = quantize_int8(w)
    torch.testing.assert_close(reference.linear_w8a16(x, q8), x @ dequantize(q8).T)
