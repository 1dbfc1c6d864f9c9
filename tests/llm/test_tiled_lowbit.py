"""5- and 6-bit weights on the CPU in their own bits (`llm.layers.tiled_lowbit`): the tiles hold the
checkpoint's values exactly, and the op (its C++ kernel, both halves of it, and its fallback) computes x @ W.T
in float32 and bfloat16, eagerly, inside a compiled graph and inside the linear layer and tied embedding."""

from __future__ import annotations

import pytest
import torch

from kernels.layout import (
    Int4Weight,
    concat_rows,
    dequantize,
    repack_q4_k,
    repack_q5_0,
    repack_q5_1,
    repack_q5_k,
    repack_q6_k,
)
from llm.cpu import cxx_compiler_available
from llm.layers import tiled_lowbit
from llm.layers.linear import Embedding, Linear, WeightPolicy, weight_nbytes
from llm.layers.tiled_lowbit import NO_OFFSETS, TILE, TiledLowBit, build_kernel, cpu_kernel
from tests.kernels.gguf_cases import gguf_blocks

needs_compiler = pytest.mark.skipif(not cxx_compiler_available(), reason="the kernel needs a C++ compiler")
OUT, IN = 200, 512  # three tiles and a padded fourth; two K-quant super-blocks
REPACK = {"Q5_0": repack_q5_0, "Q5_1": repack_q5_1, "Q5_K": repack_q5_k, "Q6_K": repack_q6_k}
PACKED = WeightPolicy(torch.device("cpu"), torch.bfloat16, cpu_weights="packed")


@pytest.fixture(scope="module", params=sorted(REPACK))
def weight(request) -> Int4Weight:
    qtype = request.param
    return REPACK[qtype](gguf_blocks(qtype, (OUT, IN), seed=1), (OUT, IN))


def expected(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    return (x.double() @ dequantize(weight, torch.float32).double().t()).float()


def close(y: torch.Tensor, x: torch.Tensor, weight: Int4Weight) -> None:
    want = expected(x.float(), weight)
    scale = want.abs().max().item()
    atol = scale * (1e-5 if y.dtype == torch.float32 else 1e-2)  # bfloat16 output: 8 significant bits
    torch.testing.assert_close(y.float(), want, atol=atol, rtol=0)


def test_the_tiles_hold_the_stored_values(weight):
    table = TiledLowBit.pack(weight)
    groups = IN // weight.group_size
    assert table.low.shape == (4, groups, weight.group_size, TILE // 2)
    assert table.high.shape == (4, groups, weight.group_size, 8 * (weight.bits - 4))
    # Q5_0/Q5_1 keep their float16 scales; K-quants' two levels multiply out to float32 (exactly)
    assert table.scales.dtype == (torch.float16 if weight.super_scales is None else torch.float32)
    assert (table.offsets is None) == (weight.mins is None)
    assert table.in_features == IN and table.out_features == OUT and table.group_size == weight.group_size
    ids = torch.tensor([0, 31, 32, 63, 64, 199, 5, 199])  # both nibbles of a byte, tile edges, the last row
    assert torch.equal(table.rows(ids), dequantize(weight, torch.float32)[ids])
    assert torch.equal(table.rows(), dequantize(weight, torch.float32))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # the kernel's expansion, and `rows`'
        assert torch.equal(table.dense(dtype), dequantize(weight, torch.float32).to(dtype))
    last = table.low[3]  # the last tile's lanes past row 199 are zero: nibbles of lanes 8-31, all of 32-63
    assert not (last[..., OUT - 3 * TILE :] & 15).any() and not (last >> 4).any()


@needs_compiler
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_computes_the_product(weight, rows, dtype):
    """Rows go through in blocks of four, three, two and one; the result comes back in x's dtype with the
    padding of the last tile cut off."""
    assert cpu_kernel() is not None  # built on this machine, not the fallback
    x = torch.randn(rows, IN).to(dtype)
    y = TiledLowBit.pack(weight).matmul(x)
    assert y.shape == (rows, OUT) and y.dtype == dtype
    close(y, x, weight)


@needs_compiler
def test_the_portable_loops_compute_the_same_product(weight):
    """The half of the kernel that CPUs without AVX-512 get, built here by request."""
    portable = build_kernel("ARCHIVIST_PORTABLE_KERNEL")
    assert portable is not cpu_kernel()
    t = TiledLowBit.pack(weight)
    x, y = torch.randn(6, IN), torch.empty(6, OUT)
    offsets = NO_OFFSETS if t.offsets is None else t.offsets
    groups, group, planes = IN // t.group_size, t.group_size, t.high.shape[-1] // 8
    half = int(t.scales.dtype == torch.float16)
    layout = (groups, group, planes, half, t.zero_point, 0)
    portable(t.low, t.high, t.scales, offsets, x, y, 6, OUT, *layout, 0)
    close(y, x, weight)
    dense = torch.empty(OUT, IN)
    portable(t.low, t.high, t.scales, offsets, x, dense, 6, OUT, *layout, 1)  # the weight itself
    assert torch.equal(dense, dequantize(weight, torch.float32))


def test_without_the_kernel_the_product_is_the_same(weight, monkeypatch):
    """No compiler, or a build that failed: the weight is expanded a slice of rows at a time."""
    monkeypatch.setattr(tiled_lowbit, "cpu_kernel", lambda: None)
    monkeypatch.setattr(tiled_lowbit, "FALLBACK_ROWS", 64)  # several slices
    x = torch.randn(3, IN)
    close(TiledLowBit.pack(weight).matmul(x), x, weight)


def test_an_input_of_the_wrong_width_is_refused_before_the_kernel_reads_it(weight):
    with pytest.raises(ValueError, match="input of shape \\(2, 64\\) for a 512-wide weight"):
        TiledLowBit.pack(weight).matmul(torch.randn(2, 64))


def test_four_bit_weights_are_not_taken():
    four = repack_q4_k(gguf_blocks("Q4_K", (64, 256)), (64, 256))
    with pytest.raises(ValueError, match="5- and 6-bit"):
        TiledLowBit.pack(four)


@needs_compiler
def test_a_compiled_graph_calls_the_op_without_breaking(weight):
    """The engine's compiled decode regions call the op from inside their graph (`fullgraph`: no break)."""
    table = TiledLowBit.pack(weight)

    def step(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(table.matmul(x * 2))

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for rows in (1, 3):
        x = torch.randn(rows, IN).bfloat16()
        torch.testing.assert_close(compiled(x), step(x))


@pytest.mark.parametrize("qtype", sorted(REPACK))
@pytest.mark.parametrize("rows", [3, 128])  # the kernel; a prefill chunk's dense GEMM over the expanded rows
def test_the_linear_layer_keeps_the_bits_and_the_tied_embedding_reads_them(qtype, rows):
    out = 4 * TILE  # whole tiles, as a model's layers have them
    weight = REPACK[qtype](gguf_blocks(qtype, (out, IN), seed=3), (out, IN))
    head, emb = Linear(IN, out), Embedding(out, IN)
    head.set_weight(weight, PACKED, tied=True)
    assert head.kind == "cpu_lowbit" and head.exact_table() is head.tiled is not None
    emb.set_weight(head.exact_table(), PACKED)
    x = torch.randn(rows, IN).bfloat16()
    close(head(x), x, weight)
    ids = torch.tensor([3, 0, out - 1, 3])
    assert torch.equal(emb(ids), dequantize(weight)[ids].bfloat16())
    assert weight_nbytes(torch.nn.ModuleList([head, emb])) == head.tiled.nbytes  # one table
    assert head.tiled.nbytes <= out * IN  # no more bytes than int8, fewer for the 5-bit types


def test_a_small_padded_weight_that_would_outgrow_int8_is_requantized_instead():
    """Q5_K's float32 scales and mins on 200 rows padded to 256: more bytes than per-channel int8."""
    weight = REPACK["Q5_K"](gguf_blocks("Q5_K", (OUT, IN)), (OUT, IN))
    layer = Linear(IN, OUT)
    layer.set_weight(weight, PACKED)
    assert layer.kind == "cpu_int8"


def test_a_fusion_wider_than_int8_is_requantized_instead():
    """A Q4_K + Q6_K fusion is stacked as 6 bits, group 16, with float32 scales and mins: 10 bits a weight in
    tiles, more than per-channel int8, which it becomes instead."""
    q4k = repack_q4_k(gguf_blocks("Q4_K", (64, 256)), (64, 256))
    q6k = repack_q6_k(gguf_blocks("Q6_K", (64, 256), seed=2), (64, 256))
    fused = concat_rows([q4k, q6k])
    assert isinstance(fused, Int4Weight) and fused.bits == 6 and fused.mins is not None
    layer = Linear(256, 128)
    layer.set_weight(fused, PACKED)
    assert layer.kind == "cpu_int8"
