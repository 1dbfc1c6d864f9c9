"""Decode attention on the CPU in C++ (`llm.layers.decode_attention`): the same outputs as the reference over
paged caches of every shape the engine makes, errors instead of reads past the cache, a compiled graph that
calls it without a break, and the engine's layers choosing it by default."""

from __future__ import annotations

import pytest
import torch

from kernels import dispatch, reference
from llm.base import ChatMessage, SamplingParams
from llm.cpu import cxx_compiler_available
from llm.engine.engine import Request
from llm.layers import decode_attention
from llm.layers.attention import PagedAttention
from tests.llm.bf16_compare import assert_same_or_near_tie

needs_compiler = pytest.mark.skipif(not cxx_compiler_available(), reason="the kernel needs a C++ compiler")
PROMPTS = ["Explain in detail how a steam engine works.", "List ten fruits.", "请解释一下太阳系。"]


@pytest.fixture(autouse=True, scope="module")
def kernel_loaded():
    """The op's CPU kernel is registered when its library loads, as `PagedAttention.bind_cache` does."""
    if cxx_compiler_available():
        assert decode_attention.cpu_kernel() is not None


TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def paged_case(batch, heads, kv_heads, dim, block_size, dtype, lengths, blocks=48, seed=0):
    """Caches of `blocks` blocks, each sequence's table a random choice of them (never in order)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (blocks, block_size, kv_heads, dim)
    k_cache = torch.randn(shape, generator=generator).to(dtype)
    v_cache = torch.randn(shape, generator=generator).to(dtype)
    q = torch.randn(batch, heads, dim, generator=generator).to(dtype)
    width = max(1, -(-max(lengths) // block_size))
    tables = torch.stack([torch.randperm(blocks, generator=generator)[:width] for _ in range(batch)]).int()
    return q, k_cache, v_cache, tables, torch.tensor(lengths, dtype=torch.int32)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim", "block_size", "lengths", "window", "softcap"),
    [
        (9, 3, 64, 16, [131], None, None),  # SmolLM2's decode: one sequence, GQA 3
        (4, 1, 256, 16, [300, 1, 17], 100, None),  # Gemma 3: one kv head, a local layer's window
        (8, 8, 128, 32, [64, 0, 95], None, 30.0),  # no GQA, an empty sequence, Gemma 2's softcap
        (6, 2, 80, 16, [40, 33], 5, None),  # a head size that is no multiple of the vector width
        (2, 1, 40, 8, [9, 200, 120, 7], None, None),  # batch 4, long enough for the threaded path
    ],
)
def test_the_kernel_attends_like_the_reference(
    dtype, heads, kv_heads, dim, block_size, lengths, window, softcap
):
    q, k_cache, v_cache, tables, lens = paged_case(
        len(lengths), heads, kv_heads, dim, block_size, dtype, lengths
    )
    expected = reference.paged_decode_attention(
        q, k_cache, v_cache, tables, lens, 0.11, sliding_window=window, softcap=softcap
    )
    out = decode_attention.paged_decode(q, k_cache, v_cache, tables, lens, 0.11, window, softcap)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    if 0 in lengths:  # no visible key: zeros, as the reference
        assert not out[lengths.index(0)].any()


@needs_compiler
def test_a_query_of_another_dtype_is_attended_in_the_caches_dtype():
    q, k_cache, v_cache, tables, lens = paged_case(2, 4, 2, 64, 16, torch.bfloat16, [20, 50])
    out = decode_attention.paged_decode(q.float(), k_cache, v_cache, tables, lens, 0.125)
    assert out.dtype == torch.float32
    expected = decode_attention.paged_decode(q, k_cache, v_cache, tables, lens, 0.125)
    torch.testing.assert_close(out, expected.float())


@needs_compiler
def test_a_table_that_points_outside_the_cache_is_an_error_not_a_read():
    q, k_cache, v_cache, tables, lens = paged_case(2, 4, 2, 64, 16, torch.float32, [20, 50])
    bad = tables.clone()
    bad[1, 2] = k_cache.shape[0]  # one past the last block, in a block the sequence reads
    with pytest.raises(RuntimeError, match="sequence 1 reads block 48 of a cache of 48"):
        decode_attention.paged_decode(q, k_cache, v_cache, bad, lens, 0.125)
    with pytest.raises(RuntimeError, match="sequence 0 has 70 keys, its block table holds 64"):
        decode_attention.paged_decode(q, k_cache, v_cache, tables, torch.tensor([70, 5]).int(), 0.125)
    with pytest.raises(ValueError, match="paged decode of q"):
        decode_attention.paged_decode(q[:, :3], k_cache, v_cache, tables, lens, 0.125)  # 3 heads over 2 kv


@needs_compiler
def test_a_compiled_graph_calls_the_kernel_without_a_break():
    q, k_cache, v_cache, tables, lens = paged_case(3, 9, 3, 64, 16, torch.bfloat16, [40, 7, 33])

    def step(q, k_cache, v_cache, tables, lens):
        return decode_attention.paged_decode(q * 2, k_cache, v_cache, tables, lens + 1, 0.125) + 1

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    torch.testing.assert_close(
        compiled(q, k_cache, v_cache, tables, lens), step(q, k_cache, v_cache, tables, lens)
    )


def test_the_layer_takes_the_kernel_by_default_and_the_backend_when_one_is_chosen(monkeypatch):
    layer = PagedAttention(4, 2, 64, None, 0.125)
    shape = (8, 16, 2, 64)
    layer.bind_cache(torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(shape, dtype=torch.bfloat16))
    assert layer.cpu_decode_kernel == cxx_compiler_available()
    layer.bind_cache(torch.zeros(shape, dtype=torch.int8), torch.zeros(shape, dtype=torch.int8))
    assert not layer.cpu_decode_kernel  # a dtype the kernel does not take
    monkeypatch.setattr(decode_attention, "cpu_kernel", lambda: None)  # no compiler, or a failed build
    layer.bind_cache(torch.zeros(shape), torch.zeros(shape))
    assert not layer.cpu_decode_kernel


@needs_compiler
def test_the_engine_decodes_through_the_kernel_as_through_the_reference(packed_engine):
    """SmolLM2's eager decode steps (bfloat16) on the C++ kernel (the default backend) and on the reference:
    the same tokens with close log-probs, up to a near tie at most."""
    engine, tokenizer = packed_engine
    assert all(layer.cpu_decode_kernel for layer in engine.runner.model.attention_layers())
    prompts = [tokenizer.apply_chat_template([ChatMessage("user", text)]) for text in PROMPTS]

    def generate() -> list[Request]:
        params = SamplingParams(max_new_tokens=24)
        return engine.generate(prompts, params, logprobs=5, ignore_eos=True)

    with_kernel = generate()
    with dispatch.use_backend("reference"):
        with_reference = generate()
    agreed = [assert_same_or_near_tie(a, b) for a, b in zip(with_kernel, with_reference, strict=True)]
    assert sum(agreed) >= 24
