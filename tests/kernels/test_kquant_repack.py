"""GGUF K-quants, Q5_0/Q5_1, Q8_0 and F16/BF16 kept in their own bits: random blocks repacked, then

* `dequantize` equals `gguf.quants.dequantize` bit for bit (every product involved is exact in float32, and
  the one rounded operation, adding a min, is the same operation gguf rounds),
* the W4A16/W8A16 matmuls, reference and Triton (the interpreter on CPU), match `x @ W.T` of gguf's weights
  to float32 rounding of the accumulation, and the Triton kernels dequantize exactly (one-hot activations
  read back the weight's columns bit for bit),
* shards of different types stacked for a fused projection keep every value exactly.

Weights come from `gguf_cases`: quantized by gguf where it can, random K-quant block bytes where it cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import dispatch
from kernels.layout import (
    Int4Weight,
    Int8Weight,
    concat_rows,
    dequantize,
    repack_q4_0,
    repack_q4_k,
    repack_q5_0,
    repack_q5_1,
    repack_q5_k,
    repack_q6_k,
    repack_q8_0,
)
from tests.kernels.gguf_cases import gguf, gguf_blocks, gguf_weights
from tests.kernels.kernel_cases import CAN_RUN_TRITON, DEVICE, TRITON_STATUS, assert_close

REPACK = {
    "Q4_0": repack_q4_0,
    "Q4_K": repack_q4_k,
    "Q5_K": repack_q5_k,
    "Q6_K": repack_q6_k,
    "Q5_0": repack_q5_0,
    "Q5_1": repack_q5_1,
    "Q8_0": repack_q8_0,
}
# Memory per weight of each layout, in bits (GGUF's own: Q4_K 4.5, Q5_K 5.5, every other type the same).
BITS_PER_WEIGHT = {
    "Q4_0": 4.5,
    "Q4_K": 4.625,
    "Q5_K": 5.625,
    "Q6_K": 6.5625,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q8_0": 8.5,
}
BACKENDS = [
    "reference",
    pytest.param(
        "triton", marks=pytest.mark.skipif(not CAN_RUN_TRITON, reason=f"Triton cannot run: {TRITON_STATUS}")
    ),
]


def linear(x: torch.Tensor, w: Int4Weight | Int8Weight) -> torch.Tensor:
    if isinstance(w, Int4Weight):
        return dispatch.linear_w4a16(x, w)
    return dispatch.linear_w8a16(x, w)


@pytest.mark.parametrize("blocks_per_row", [1, 2])
@pytest.mark.parametrize("full_range", [False, True], ids=["moderate", "any-fp16"])
@pytest.mark.parametrize("qtype", sorted(REPACK))
def test_repack_equals_gguf_dequantize_exactly(qtype: str, full_range: bool, blocks_per_row: int) -> None:
    block_weights = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    shape = (6, block_weights * blocks_per_row)
    raw = gguf_blocks(qtype, shape, full_range=full_range)
    w = REPACK[qtype](raw, shape)
    np.testing.assert_array_equal(dequantize(w).numpy(), gguf_weights(qtype, raw, shape))
    assert w.nbytes * 8 / (shape[0] * shape[1]) == BITS_PER_WEIGHT[qtype]
    assert all(t.is_contiguous() for t in w.tensors().values())  # what the kernels require


@pytest.mark.parametrize(
    ("qtype", "bits", "group_size", "with_mins", "two_level"),
    [
        ("Q4_K", 4, 32, True, True),
        ("Q5_K", 5, 32, True, True),
        ("Q6_K", 6, 16, False, True),
        ("Q5_0", 5, 32, False, False),
        ("Q5_1", 5, 32, True, False),
    ],
)
def test_repacked_layouts(qtype: str, bits: int, group_size: int, with_mins: bool, two_level: bool) -> None:
    w = REPACK[qtype](gguf_blocks(qtype, (2, 256)), (2, 256))
    assert isinstance(w, Int4Weight)
    assert (w.bits, w.group_size, w.mins is not None, w.super_scales is not None) == (
        bits,
        group_size,
        with_mins,
        two_level,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 3, 9])  # 1-4: the W4A16 GEMV path; more: GEMM
@pytest.mark.parametrize("qtype", sorted(REPACK))
def test_linear_matches_gguf_weights(qtype: str, m: int, backend: str) -> None:
    shape = (40, 512)
    raw = gguf_blocks(qtype, shape, seed=m)
    expected_w = torch.from_numpy(gguf_weights(qtype, raw, shape)).to(DEVICE)
    w = REPACK[qtype](raw, shape).to(DEVICE)
    x = torch.randn(m, shape[1], device=DEVICE) / shape[1] ** 0.5
    with dispatch.use_backend(backend):
        out = linear(x, w)
    scale = float(expected_w.abs().max())  # the tolerance table assumes O(1) weights
    assert_close(out, x @ expected_w.T, torch.float32, scale=max(scale, 1.0))


@pytest.mark.skipif(not CAN_RUN_TRITON, reason=f"Triton cannot run: {TRITON_STATUS}")
@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"])
def test_triton_dequantizes_exactly(qtype: str) -> None:
    """One-hot activations make every output a single product `1 * w`: the kernel's weights, read back."""
    shape = (24, 256)
    raw = gguf_blocks(qtype, shape, full_range=True)
    expected = torch.from_numpy(gguf_weights(qtype, raw, shape)).to(DEVICE)
    w = REPACK[qtype](raw, shape).to(DEVICE)
    eye = torch.eye(shape[1], device=DEVICE)
    with dispatch.use_backend("triton"):
        assert torch.equal(dispatch.linear_w4a16(eye, w), expected.T)  # the GEMM path
        assert torch.equal(dispatch.linear_w4a16(eye[[0, 17, 130, 255]], w), expected.T[[0, 17, 130, 255]])


MIXED_SHARDS = pytest.mark.parametrize(
    "qtypes",
    [("Q4_K", "Q4_K", "Q6_K"), ("Q5_K", "Q6_K"), ("Q4_K", "Q5_0"), ("Q4_0", "Q5_1"), ("Q8_0", "Q8_0")],
    ids="+".join,
)


def stacked_shards(qtypes: tuple[str, ...], full_range: bool) -> tuple[Int4Weight | Int8Weight, np.ndarray]:
    """Shards of `qtypes` (16, 8, 8 rows) stacked by `concat_rows`, and gguf's weights of them."""
    shapes = [(rows, 256) for rows in (16, 8, 8)[: len(qtypes)]]
    raws = [
        gguf_blocks(q, shape, i, full_range) for i, (q, shape) in enumerate(zip(qtypes, shapes, strict=True))
    ]
    w = concat_rows([REPACK[q](raw, shape) for q, raw, shape in zip(qtypes, raws, shapes, strict=True)])
    assert w is not None and w.out_features == sum(rows for rows, _ in shapes)
    expected = [gguf_weights(q, raw, shape) for q, raw, shape in zip(qtypes, raws, shapes, strict=True)]
    return w, np.concatenate(expected)


@pytest.mark.parametrize("full_range", [False, True], ids=["moderate", "any-fp16"])
@MIXED_SHARDS
def test_mixed_shards_stack_exactly(qtypes: tuple[str, ...], full_range: bool) -> None:
    """A fused projection whose shards have different types (Q4_K_M's q/k beside a Q6_K v) stays packed, in a
    wider layout that keeps every value (symmetric shards gain exact mins: float32 ones where -z * d
    overflows float16)."""
    w, expected = stacked_shards(qtypes, full_range)
    np.testing.assert_array_equal(dequantize(w).numpy(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@MIXED_SHARDS
def test_mixed_shards_through_the_kernels(qtypes: tuple[str, ...], backend: str) -> None:
    w, expected = stacked_shards(qtypes, full_range=False)
    x = torch.randn(3, 256, device=DEVICE) / 16
    with dispatch.use_backend(backend):
        out = linear(x, w.to(DEVICE))
    assert_close(out, x @ torch.from_numpy(expected).to(DEVICE).T, torch.float32)


def test_int8_and_int4_shards_do_not_stack() -> None:
    parts = [REPACK[q](gguf_blocks(q, (4, 256)), (4, 256)) for q in ("Q8_0", "Q4_K")]
    assert concat_rows(parts) is None


def test_embedding_rows_of_a_6_bit_table() -> None:
    raw = gguf_blocks("Q6_K", (10, 256))
    w = repack_q6_k(raw, (10, 256))
    rows = torch.tensor([7, 0, 7])
    np.testing.assert_array_equal(
        dequantize(w.select_rows(rows)).numpy(), gguf_weights("Q6_K", raw, (10, 256))[rows]
    )


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_float_tensors_read_in_their_own_dtype(qtype: str, tmp_path: Path) -> None:
    """GGUF F16/BF16 through the loader's source: BF16 arrives as raw bytes, reinterpreted, not expanded."""
    from llm.model.loader import GGUFSource, merge_rows

    shape = (5, 64)
    raw = gguf_blocks(qtype, shape)
    writer = gguf.GGUFWriter(tmp_path / "w.gguf", "llama")
    writer.add_tensor("w", raw, raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    weight = merge_rows([GGUFSource(tmp_path / "w.gguf").read("w")])
    assert isinstance(weight, torch.Tensor)
    assert weight.dtype == {"F16": torch.float16, "BF16": torch.bfloat16}[qtype]
    np.testing.assert_array_equal(weight.float().numpy(), gguf_weights(qtype, raw, shape))


def test_int4_weight_validates_the_extended_fields() -> None:
    w = repack_q6_k(gguf_blocks("Q6_K", (2, 256)), (2, 256))
    with pytest.raises(ValueError, match="qhigh"):
        Int4Weight(w.qweight, w.scales, None, 16, 256, 2, bits=6, super_scales=w.super_scales)
    with pytest.raises(ValueError, match="scales must be int8"):
        Int4Weight(
            w.qweight, w.scales.float(), None, 16, 256, 2, bits=6, qhigh=w.qhigh, super_scales=w.super_scales
        )
    with pytest.raises(ValueError, match="come together"):
        Int4Weight(
            w.qweight, w.scales, w.scales, 16, 256, 2, bits=6, qhigh=w.qhigh, super_scales=w.super_scales
        )
    with pytest.raises(ValueError, match="super_mins need super_scales"):
        Int4Weight(
            w.qweight, w.scales.half(), None, 16, 256, 2, bits=6, qhigh=w.qhigh, super_mins=w.super_scales
        )
