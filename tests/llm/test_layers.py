"""Linear and embedding layers over packed weights agree with the dequantized weights (CPU formats)."""

from __future__ import annotations

import pytest
import torch

from kernels import dispatch
from kernels.layout import dequantize, quantize_int4, quantize_int8
from llm.layers.grouped_int8 import TILE
from llm.layers.linear import PACKED_CPU_MAX_ROWS, Embedding, Linear, WeightPolicy, weight_nbytes

QUANTIZERS = {
    "int4-g32": lambda w: quantize_int4(w, 32),
    "int4-g128": lambda w: quantize_int4(w, 128),
    "int8-channel": quantize_int8,
    "int8-g32": lambda w: quantize_int8(w, 32),
}


@pytest.mark.parametrize("scheme", QUANTIZERS)
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 0.15)])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("rows", [5, PACKED_CPU_MAX_ROWS])  # decode-sized (packed kernels) and prefill-sized
@pytest.mark.parametrize("native", [True, False])  # whether the CPU has native bfloat16 matmuls
def test_linear_matches_dequantized_weight(scheme, dtype, atol, packed, rows, native, monkeypatch):
    monkeypatch.setattr("llm.layers.linear.native_bf16", lambda: native)
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.1
    q = QUANTIZERS[scheme](w)
    layer = Linear(256, 96, bias=True)
    policy = WeightPolicy(torch.device("cpu"), dtype, cpu_weights="packed" if packed else "dequantized")
    layer.set_weight(q, policy)
    bias = torch.randn(96)
    layer.set_bias(bias, policy)
    x = torch.randn(rows, 256)
    expected = x @ dequantize(q).t() + bias
    if scheme == "int8-g32" and packed:  # re-quantized per channel for torch's int8 matmul
        expected = x @ dequantize(quantize_int8(dequantize(q))).t() + bias
    assert layer.kind == ("dense" if not packed else f"cpu_{scheme[:4]}")
    torch.testing.assert_close(layer(x.to(dtype)).float(), expected, atol=atol, rtol=0.02)


@pytest.mark.parametrize(("native", "computed_in"), [(True, torch.bfloat16), (False, torch.float32)])
def test_prefill_matmuls_run_in_float32_on_cpus_without_native_bfloat16(native, computed_in, monkeypatch):
    """torch emulates bfloat16 GEMMs on AVX2 (7x slower than float32 at 1,000 rows); the result is still
    returned in the activations' dtype."""
    monkeypatch.setattr("llm.layers.linear.native_bf16", lambda: native)
    seen = []
    real = dispatch.linear_w4a16

    def recording(x, w, bias=None):
        seen.append((x.dtype, None if bias is None else bias.dtype))
        return real(x, w, bias)

    monkeypatch.setattr(dispatch, "linear_w4a16", recording)
    layer = Linear(256, 96, bias=True)
    policy = WeightPolicy(torch.device("cpu"), torch.bfloat16, cpu_weights="packed")
    layer.set_weight(quantize_int4(torch.randn(96, 256) * 0.1, 32), policy)
    layer.set_bias(torch.randn(96), policy)
    assert layer(torch.randn(PACKED_CPU_MAX_ROWS, 256, dtype=torch.bfloat16)).dtype == torch.bfloat16
    layer(torch.randn(5, 256, dtype=torch.bfloat16))  # decode-sized: the packed kernel, not dispatch
    assert seen == [(computed_in, computed_in)]


def test_linear_rejects_a_weight_of_the_wrong_shape():
    with pytest.raises(ValueError, match="does not fit"):
        Linear(8, 4).set_weight(torch.zeros(8, 4), WeightPolicy(torch.device("cpu"), torch.float32, False))


@pytest.mark.parametrize("scheme", ["int4-g32", "int8-g32"])
def test_quantized_embedding_expands_only_looked_up_rows(scheme):
    table = torch.randn(50, 64)
    q = QUANTIZERS[scheme](table)
    emb = Embedding(50, 64)
    emb.set_weight(q, WeightPolicy(torch.device("cpu"), torch.float32, cpu_weights="packed"))
    ids = torch.tensor([3, 0, 49, 3])
    assert torch.equal(emb(ids), dequantize(q)[ids])


@pytest.mark.parametrize("rows", [5, PACKED_CPU_MAX_ROWS])
def test_a_tied_group_32_head_keeps_its_values_for_the_embedding(rows):
    torch.manual_seed(0)
    q = quantize_int8(torch.randn(96, 256) * 0.1, 32)
    policy = WeightPolicy(torch.device("cpu"), torch.bfloat16, cpu_weights="packed")
    head, emb = Linear(256, 96), Embedding(96, 256)
    head.set_weight(q, policy, tied=True)
    table = head.exact_table()
    assert head.kind == "cpu_int8_grouped" and table is head.tiled is not None
    emb.set_weight(table, policy)
    x = torch.randn(rows, 256)
    torch.testing.assert_close(head(x.bfloat16()).float(), x @ dequantize(q).t(), atol=0.15, rtol=0.02)
    ids = torch.tensor([3, 0, 95, 3])
    assert torch.equal(emb(ids), dequantize(q)[ids].bfloat16())
    padded = -(-96 // TILE) * TILE  # the head's table is padded to whole tiles of outputs
    assert weight_nbytes(torch.nn.ModuleList([head, emb])) == q.nbytes * padded // 96  # one table
