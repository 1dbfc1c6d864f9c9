"""4-bit weights multiplied by int8 dot products (`llm.layers.tiled_int4`): the tiles hold the checkpoint's
values, the kernel computes exactly what int8 activations per block of 32 give, a compiled graph calls it,
the engine takes it when asked (`cpu_weights="int8-activations"`) where the CPU has AVX512-VNNI, and the
perplexity it costs is small."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from kernels.layout import dequantize, quantize_int4, unpack_int4
from llm.layers import tiled_int4
from llm.layers.linear import Linear, WeightPolicy
from llm.layers.tiled_int4 import LANES, TiledInt4

needs_vnni = pytest.mark.skipif(
    not tiled_int4.available(), reason="the kernel needs AVX512-VNNI and a C++ compiler"
)


def weight(out_features: int, in_features: int, group_size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return quantize_int4(torch.randn(out_features, in_features, generator=generator) * 0.1, group_size)


def with_int8_activations(x: torch.Tensor, w) -> torch.Tensor:
    """x @ W.T with x rounded as the kernel rounds it: int8 per block of 32, scale max|x| / 127."""
    blocks = x.float().view(x.shape[0], -1, 32)
    scale = blocks.abs().amax(-1) / 127
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    rounded = torch.round(blocks * inverse[..., None]) * scale[..., None]
    return (rounded.view(x.shape[0], -1).double() @ dequantize(w).double().t()).float()


def test_the_tiles_hold_the_stored_values():
    w = weight(40, 64)  # three tiles, the last padded
    tiles = TiledInt4.pack(w)
    assert tiles is not None and tiles.packed.shape == (3, 8, 64) and tiles.scales.shape == (3, 2, LANES)
    low, high = tiles.packed & 0x0F, tiles.packed >> 4  # (tile, chunk, 64): lane-major runs of four
    q = torch.stack((low.view(3, 8, LANES, 4), high.view(3, 8, LANES, 4)), dim=3)  # (tile, chunk, lane, 2, 4)
    q = q.permute(0, 2, 1, 3, 4).reshape(3 * LANES, 64)
    assert torch.equal(q[:40], unpack_int4(w.qweight)) and not q[40:].any()
    scales, mins = w.group_scales()
    assert torch.equal(tiles.scales.transpose(1, 2).reshape(-1, 2)[:40].float(), scales)
    assert torch.equal(tiles.mins.transpose(1, 2).reshape(-1, 2)[:40].float(), mins)


def test_weights_the_tiles_cannot_hold_exactly_keep_their_layout():
    w = weight(32, 64)
    assert TiledInt4.pack(replace(w, scales=w.scales.float() * (1 + 2**-20))) is None  # not a float16
    halves = {"scales": w.scales.repeat_interleave(2, 1), "mins": w.mins.repeat_interleave(2, 1)}
    assert TiledInt4.pack(replace(w, group_size=16, **halves)) is None  # groups under 32 inputs
    symmetric = TiledInt4.pack(replace(w, mins=None))  # Q4_0: min = -8 * scale
    assert symmetric is not None
    assert torch.equal(symmetric.mins, -8 * symmetric.scales)


@needs_vnni
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("out_features", "in_features", "group_size"), [(960, 576, 32), (50, 64, 32), (48, 256, 128)]
)
@pytest.mark.parametrize("rows", [1, 3, 5])
def test_the_kernel_computes_the_product_with_int8_activations(
    dtype, out_features, in_features, group_size, rows
):
    w = weight(out_features, in_features, group_size)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = TiledInt4.pack(w).matmul(x)
    assert y.shape == (rows, out_features) and y.dtype == dtype
    expected = with_int8_activations(x, w)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bfloat16: the output's rounding
    torch.testing.assert_close(y.float(), expected, atol=tolerance, rtol=tolerance)
    exact = (x.double() @ dequantize(w).double().t()).float()
    assert ((y.float() - exact).norm() / exact.norm()).item() < 0.01  # what the activations' rounding costs


@needs_vnni
def test_zero_rows_and_a_wrong_width():
    tiles = TiledInt4.pack(weight(32, 64))
    assert tiles.matmul(torch.zeros(0, 64)).shape == (0, 32)
    assert not tiles.matmul(torch.zeros(2, 64)).any()  # an all-zero block has scale 0, not NaN
    with pytest.raises(ValueError, match="input of shape"):
        tiles.matmul(torch.zeros(1, 32))


@needs_vnni
def test_a_compiled_graph_calls_the_kernel_without_a_break():
    tiles = TiledInt4.pack(weight(64, 128))

    def step(x):
        return tiles.matmul(torch.relu(x)) * 2

    x = torch.randn(3, 128).bfloat16()
    torch.testing.assert_close(torch.compile(step, fullgraph=True)(x), step(x))


def test_the_linear_takes_the_tiles_only_when_asked_and_able():
    w = weight(64, 128)
    cpu = torch.device("cpu")
    layer = Linear(128, 64)
    layer.set_weight(w, WeightPolicy(cpu, torch.bfloat16, "packed", int4_dot_products=True))
    assert layer.kind == "cpu_int4" and (layer.int4_tiles is not None) == tiled_int4.available()
    assert layer.exact_table() is w  # a tied embedding still reads the checkpoint's values
    if layer.int4_tiles is not None:
        assert layer.weight.numel() == 0  # no torch-packed copy beside the tiles
    layer.set_weight(w, WeightPolicy(cpu, torch.bfloat16, "packed"))
    assert layer.kind == "cpu_int4" and layer.int4_tiles is None


@needs_vnni
def test_int8_activations_cost_little_perplexity(gguf_path):
    """SmolLM2 Q4_1 (every layer's q/k/v/o/gate/up/down 4-bit): the tiles ("int8-activations") against torch's
    int4 matmul with bfloat16 activations ("packed", the default), on English and Chinese text scored in
    prefill chunks of under 128 tokens (the rows that take the packed matmuls)."""
    from llm.config import EngineConfig
    from llm.engine import create_engine

    text = (
        "The committee met on Tuesday to review the budget for the coming year. After a long discussion, "
        "the members agreed to fund the new library and to delay the road repairs until the spring. "
        "量化会降低模型的精度，但是可以让模型在普通电脑上运行得更快。"
    )
    perplexity = {}
    for cpu_weights in ("int8-activations", "packed"):
        config = EngineConfig(
            model_path=gguf_path, cpu_weights=cpu_weights, num_kv_blocks=64, max_model_len=512,
            enforce_eager=True,
        )  # fmt: skip
        engine, tokenizer, _ = create_engine(config)
        ids = tokenizer.encode(text)
        assert len(ids) < 128
        perplexity[cpu_weights] = math.exp(-engine.runner.score(ids).mean().item())
    assert perplexity["int8-activations"] / perplexity["packed"] - 1 < 0.02, perplexity
