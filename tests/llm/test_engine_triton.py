"""The whole engine on its Triton kernels, run by the CPU interpreter (`TRITON_INTERPRET=1`, set by
`tests/conftest.py`): the tensors the engine really hands the kernels (q/k/v sliced out of the fused qkv
projection, paged caches and block tables, prefix-cache hits, chunked prefill, preemption, int4/int8 weights
in the CUDA layout) must give the tokens and log-probabilities of the plain-torch reference backend.

The kernel tests (`tests/kernels`) check each kernel on tensors they build themselves; these check that the
engine's own layouts reach the kernels intact. Tiny random-weight models keep the interpreter fast enough for
CI; one short SmolLM2 run checks a real model's shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kernels import dispatch
from llm.base import SamplingParams
from llm.config import EngineConfig
from llm.engine import LLMEngine, create_engine
from llm.engine.engine import Request
from tests.kernels.kernel_cases import needs_triton
from tests.llm.bf16_compare import assert_same_or_near_tie
from tests.llm.tiny_models import FAMILIES, VOCAB, write_tiny_model

pytestmark = needs_triton


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny_model(request, tmp_path_factory) -> Path:
    family, extra = FAMILIES[request.param]
    return write_tiny_model(tmp_path_factory.mktemp(request.param), family, extra)


def engine_on(backend: str, model: Path, **overrides: object) -> LLMEngine:
    """A fresh engine whose kernel calls all go to `backend` (float32 unless overridden: the interpreter is
    exact in float32 and float16, not in bfloat16)."""
    options: dict[str, object] = {
        "model_path": model, "dtype": "float32", "cpu_weights": "dequantized", "enforce_eager": True,
        "block_size": 16, "num_kv_blocks": 64, "max_model_len": 256, "max_num_batched_tokens": 32,
    }  # fmt: skip
    options.update(overrides)
    with dispatch.use_backend(backend):
        engine, _, _ = create_engine(EngineConfig(**options))  # type: ignore[arg-type]
    return engine


def run(
    engine: LLMEngine, backend: str, batches: list[list[list[int]]], new_tokens: int
) -> Iterator[Request]:
    """Greedy answers of each batch in turn (later batches can hit the prefix cache of earlier ones), with
    each token's two best alternatives."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    with dispatch.use_backend(backend):
        for prompts in batches:
            yield from engine.generate(prompts, params, logprobs=2, ignore_eos=True)


def assert_same_answers(reference: list[Request], triton: list[Request], atol: float) -> None:
    """Same greedy tokens and log-probabilities within `atol`. The random tiny models' next-token
    distributions are nearly flat, so two tokens may tie within the dtype's rounding: the answers may part
    only at such a tie (the token Triton chose within `atol` of the reference's best)."""
    for ref, tri in zip(reference, triton, strict=True):
        assert_same_or_near_tie(tri, ref, atol=atol, near_tie=atol)


def prompts(seed: int) -> list[list[list[int]]]:
    """A first prompt alone, then three at once: one sharing its first 32 tokens (two cached blocks), two
    longer than a step's token budget (chunked prefill), enough to overflow a small cache (preemption)."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> list[int]:
        return torch.randint(2, VOCAB, (n,), generator=generator).tolist()

    first = tokens(40)
    return [[first], [first[:32] + tokens(9), tokens(70), tokens(45)]]


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 2e-4), ("float16", 2e-2)])
def test_engine_on_triton_kernels_matches_reference(tiny_model, dtype, atol):
    batches = prompts(0)
    answers = {}
    stats = {}
    for backend in ("reference", "triton"):
        engine = engine_on(backend, tiny_model, num_kv_blocks=10, dtype=dtype)
        answers[backend] = list(run(engine, backend, batches, new_tokens=12))
        stats[backend] = engine.stats()
    assert_same_answers(answers["reference"], answers["triton"], atol=atol)
    for backend, seen in stats.items():  # the scenario really took every path, on both backends
        assert seen["prefix_cache_hit_rate"] > 0, backend
        assert seen["preemptions"] > 0, backend


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_quantized_weights_in_cuda_layout_match_reference(tiny_model, scheme):
    """int4/int8 weights laid out as on CUDA (`cpu_weights="kernels"`) go through `dispatch.linear_w4a16` /
    `linear_w8a16`: at prefill (many rows) and at decode (one row per sequence)."""
    batches = prompts(1)[1:]
    answers = {}
    for backend in ("reference", "triton"):
        engine = engine_on(backend, tiny_model, cpu_weights="kernels", quantize=scheme)
        linears = [m for m in engine.runner.model.modules() if getattr(m, "kind", None) == scheme]
        assert linears, "no linear kept its quantized layout"
        answers[backend] = list(run(engine, backend, batches, new_tokens=6))
    assert_same_answers(answers["reference"], answers["triton"], atol=1e-3)


@pytest.mark.slow
def test_smollm2_on_triton_kernels_matches_reference(gguf_path):
    """The real model's attention shapes (head_dim 64, 9 query heads on 3 kv heads, 30 layers) for a few
    tokens. Its weights are dequantized: the interpreter needs minutes per step for its W4A16 matmuls, which
    the tests above and `tests/kernels` cover on smaller shapes."""
    prompt = [[1, 504, 3458, 282, 4768, 30, 2] + list(range(1000, 1030))]
    answers = {}
    for backend in ("reference", "triton"):
        engine = engine_on(backend, gguf_path, num_kv_blocks=8, max_model_len=128)
        answers[backend] = list(run(engine, backend, [prompt], new_tokens=2))
    assert_same_answers(answers["reference"], answers["triton"], atol=2e-3)
