"""GGUF tensors as a file stores them, for the repack and loading tests: types gguf can quantize (Q5_0, Q5_1,
Q8_0, F16, BF16, ...) are quantized from random floats; the K-quants and IQ4_NL, which gguf only dequantizes,
are random block bytes with finite fp16 scales."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

# Byte offsets of the fp16 scales in a block of the types gguf cannot quantize (the other bytes: any bits).
FP16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,)}


def random_fp16(
    rng: np.random.Generator, shape: tuple[int, ...], full_range: bool, scale: float
) -> np.ndarray:
    """Finite fp16 values: any finite bit pattern (subnormals, -0 and 65504 included), or in
    +-[scale / 2, scale]."""
    if full_range:
        bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # an inf/NaN exponent becomes a finite one
        return bits.view(np.float16)
    return (rng.uniform(0.5, 1.0, shape) * rng.choice([-1, 1], shape) * scale).astype(np.float16)


def gguf_blocks(
    qtype: str, shape: tuple[int, int], seed: int = 0, full_range: bool = False, scale: float = 2e-3
) -> np.ndarray:
    """`shape` weights of GGML type `qtype` as GGUF stores them (uint8 blocks, or float16 for F16).

    Quantized ones have magnitudes of about `0.25 * scale / 2e-3`; random-byte blocks get fp16 scales of
    magnitude `scale` (or any finite fp16 with `full_range`)."""
    rng = np.random.default_rng(seed)
    ggml_type = gguf.GGMLQuantizationType[qtype]
    if qtype not in FP16_FIELDS:
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(scale / 2e-3 * 0.25)
        return gguf.quants.quantize(values, ggml_type)
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    blocks = rng.integers(0, 256, size=(shape[0], shape[1] // block_weights, block_bytes), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        d = random_fp16(rng, blocks.shape[:2] + (1,), full_range, scale)
        blocks[..., offset : offset + 2] = d.view(np.uint8)
    return blocks.reshape(shape[0], -1)


def gguf_weights(qtype: str, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """gguf's own float32 dequantization of `raw`."""
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(shape)
