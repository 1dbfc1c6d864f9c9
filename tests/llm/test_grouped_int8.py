"""The tied group-32 int8 head (`llm.layers.grouped_int8`): its tiled table holds the checkpoint's values, and
its C++ kernel (both halves of it), its fallback and the layer that calls them compute x @ W.T."""

from __future__ import annotations

import pytest
import torch

from kernels.layout import dequantize, quantize_int8
from llm.cpu import cxx_compiler_available
from llm.layers import grouped_int8
from llm.layers.grouped_int8 import TILE, GroupedInt8, build_kernel, cpu_kernel
from llm.layers.linear import Linear, WeightPolicy

needs_compiler = pytest.mark.skipif(not cxx_compiler_available(), reason="the kernel needs a C++ compiler")
OUT, IN = 200, 96  # three tiles and a padded fourth; three groups of 32 inputs


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    return quantize_int8(torch.randn(OUT, IN) * 0.1, 32)


def expected(x: torch.Tensor, weight) -> torch.Tensor:
    return (x.double() @ dequantize(weight, torch.float32).double().t()).float()


def test_the_table_holds_the_stored_values_in_tiles(weight):
    table = GroupedInt8.pack(weight)
    assert table.qweight.shape == (4, 3, 32, TILE) and table.scales.shape == (4, 3, TILE)
    assert table.scales.dtype == torch.float16 and table.out_features == OUT and table.in_features == IN
    ids = torch.tensor([0, 63, 64, 199, 5, 199])  # tile edges and the last row, before the padding
    assert torch.equal(table.rows(ids), dequantize(weight, torch.float32)[ids])
    assert torch.equal(table.rows(), dequantize(weight, torch.float32))
    assert not table.qweight[3, :, :, OUT - 3 * TILE :].any()  # the padding rows are zero


@needs_compiler
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_the_kernel_computes_the_product_for_any_number_of_rows(weight, rows):
    """Rows go through in blocks of four, three, two and one: 9 = 4 + 4 + 1, 5 = 4 + 1."""
    assert cpu_kernel() is not None  # built on this machine, not the fallback
    x = torch.randn(rows, IN)
    y = GroupedInt8.pack(weight).matmul(x)
    assert y.shape == (rows, OUT) and y.dtype == torch.float32
    torch.testing.assert_close(y, expected(x, weight), atol=1e-5, rtol=1e-5)


@needs_compiler
def test_the_portable_loops_compute_the_same_product(weight):
    """The half of the kernel that CPUs without AVX-512 get, built here by request."""
    portable = build_kernel("ARCHIVIST_PORTABLE_KERNEL")
    assert portable is not cpu_kernel()
    table = GroupedInt8.pack(weight)
    x = torch.randn(6, IN)
    y = torch.empty(6, table.qweight.shape[0] * TILE)
    portable(table.qweight, table.scales, x, y, 6, table.qweight.shape[0], 3)
    torch.testing.assert_close(y[:, :OUT], expected(x, weight), atol=1e-5, rtol=1e-5)


def test_without_the_kernel_the_product_is_the_same(weight, monkeypatch):
    """No compiler, or a build that failed: the table is expanded a slice at a time."""
    monkeypatch.setattr(grouped_int8, "cpu_kernel", lambda: None)
    monkeypatch.setattr(grouped_int8, "FALLBACK_ROWS", 64)  # several slices
    x = torch.randn(3, IN)
    torch.testing.assert_close(GroupedInt8.pack(weight).matmul(x), expected(x, weight), atol=1e-5, rtol=1e-5)


def test_an_input_of_the_wrong_width_is_refused_before_the_kernel_reads_it(weight):
    table = GroupedInt8.pack(weight)
    with pytest.raises(ValueError, match="input of shape \\(2, 64\\) for a 96-wide int8 table"):
        table.matmul(torch.randn(2, 64))


@needs_compiler
def test_the_tied_head_layer_uses_the_kernel_in_bfloat16(weight):
    policy = WeightPolicy(torch.device("cpu"), torch.bfloat16, cpu_weights="packed")
    head = Linear(IN, OUT)
    head.set_weight(weight, policy, tied=True)
    assert head.kind == "cpu_int8_grouped"
    x = torch.randn(2, IN).bfloat16()
    y = head(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected(x.float(), weight), atol=0.02, rtol=0.01)
