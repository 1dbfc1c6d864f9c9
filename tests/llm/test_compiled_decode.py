"""The compiled CPU decode step (`llm/engine/compiled_decode.py`) against the eager one, on the real SmolLM2.

Both run the same packed int4/int8 weights with bfloat16 activations; inductor keeps fused intermediates in
float32 where eager rounds each op to bfloat16, so the two may part ways, but only where the two best tokens
are a near tie. Compiling takes about a minute on a cold 2-core machine: this module builds one compiled
engine, with a LoRA adapter loaded, so that the compiled step also serves batches that mix the adapter and
the base model.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch

from llm.base import ChatMessage, SamplingParams
from llm.cpu import cxx_compiler_available
from llm.engine.engine import Request
from tests.llm.adapters import write_random_adapter
from tests.llm.bf16_compare import assert_same_or_near_tie

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="the compiled step is the CPU path"),
    pytest.mark.skipif(not cxx_compiler_available(), reason="inductor needs a C++ compiler (g++) on the CPU"),
]

PROMPTS = [
    "Explain in detail how a steam engine works.",
    "List twenty fruits and describe the colour of each.",
    "请详细解释一下太阳系的八大行星。",
]
NEW_TOKENS = 40  # crosses block boundaries: block tables grow from 2 to 4 columns on the way
ADAPTERS = [1, 0, 1]  # the adapter slot of each prompt: a mixed batch


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    return write_random_adapter(tmp_path_factory.mktemp("lora") / "random")


def _engine(gguf_path, adapter_folder, eager: bool, background: bool = False):
    from llm.config import EngineConfig
    from llm.engine import create_engine

    config = EngineConfig(
        model_path=gguf_path, num_kv_blocks=256, max_model_len=1024, max_num_seqs=4, enforce_eager=eager,
        adapters=(adapter_folder,), compile_in_background=background,
    )  # fmt: skip
    engine, tokenizer, _ = create_engine(config)
    return engine, tokenizer


GRAPHS_COMPILED: list[int] = []  # how many graphs building the compiled engine took
# A reply generated as soon as the engine was built, and whether the compile was still running after it.
EARLY_REPLY: list[tuple[Request, bool]] = []


@pytest.fixture(scope="module")
def compiled_engine(gguf_path, adapter_folder):
    """Built as the server builds it: the decode step compiles in the background while eager steps answer."""
    from torch._dynamo.utils import counters

    from llm.engine.compiled_decode import CompiledDecode

    before = counters["stats"]["unique_graphs"]
    engine, tokenizer = _engine(gguf_path, adapter_folder, eager=False, background=True)
    # The compile waits for the early reply to be done (a warm inductor cache could otherwise finish first);
    # a reply that waited for the compile would then wait out the gate's timeout and find it finished.
    reply_done, warm_up = threading.Event(), CompiledDecode.warm_up

    def warm_up_after_the_reply(self, *args, **kwargs):
        reply_done.wait(timeout=120)
        return warm_up(self, *args, **kwargs)

    with patch.object(CompiledDecode, "warm_up", warm_up_after_the_reply):
        engine.runner.start_compiling()
        prompt = tokenizer.apply_chat_template([ChatMessage("user", PROMPTS[0])])
        early = engine.generate([prompt], SamplingParams(max_new_tokens=4), ignore_eos=True)[0]
        EARLY_REPLY.append((early, not engine.runner.wait_for_compile(timeout=0)))
        reply_done.set()
        assert engine.runner.wait_for_compile(timeout=600)
    GRAPHS_COMPILED.append(counters["stats"]["unique_graphs"] - before)
    return engine, tokenizer


@pytest.fixture(scope="module")
def eager_engine(gguf_path, adapter_folder):
    return _engine(gguf_path, adapter_folder, eager=True)


@pytest.fixture(scope="module")
def prompt_ids(compiled_engine):
    _, tokenizer = compiled_engine
    return [tokenizer.apply_chat_template([ChatMessage("user", p)]) for p in PROMPTS]


def generate(engine, prompts: list[list[int]], adapters: list[int]) -> list[Request]:
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    return engine.generate(prompts, params, logprobs=5, ignore_eos=True, adapters=adapters)


def test_the_engine_compiled_its_decode_step(compiled_engine):
    engine, _ = compiled_engine
    assert engine.runner.compiled_decode is not None
    # Batch 1 and batch >= 2: one graph each, shared by every region of layers (not one per region).
    assert GRAPHS_COMPILED == [2]


def test_the_engine_answers_before_its_decode_step_is_compiled(compiled_engine):
    ((early, still_compiling),) = EARLY_REPLY
    assert early.completion_tokens == 4
    assert still_compiling  # the reply did not wait for the compiler


def test_compiled_matches_eager_decode(compiled_engine, eager_engine, prompt_ids):
    ours = generate(compiled_engine[0], prompt_ids, ADAPTERS)
    theirs = generate(eager_engine[0], prompt_ids, ADAPTERS)
    agreed = [assert_same_or_near_tie(a, b) for a, b in zip(ours, theirs, strict=True)]
    assert sum(agreed) >= NEW_TOKENS  # the paths agree for a good stretch, not just one token
    # The adapter is applied: the same prompt with and without it parts ways at once.
    with_adapter, without = generate(eager_engine[0], prompt_ids[:1] * 2, [1, 0])
    assert with_adapter.token_logprobs[0].top_logprobs != without.token_logprobs[0].top_logprobs


@pytest.fixture
def through_dynamo(compiled_engine):
    """The compiled step with every region called through dynamo, which checks its guards at each call."""
    compiled = compiled_engine[0].runner.compiled_decode
    compiled.call_directly = False
    yield compiled_engine
    compiled.call_directly = True


def test_batched_matches_single_and_nothing_recompiles(through_dynamo, prompt_ids):
    engine, _ = through_dynamo
    with torch.compiler.set_stance("fail_on_recompile"):  # the graphs compiled at load cover every step
        singles = [generate(engine, [ids], [slot])[0] for ids, slot in zip(prompt_ids, ADAPTERS, strict=True)]
        batched = generate(engine, prompt_ids, ADAPTERS)
    for one, together in zip(singles, batched, strict=True):
        assert_same_or_near_tie(together, one)


def test_regions_called_directly_match_dynamos_calls(compiled_engine, prompt_ids):
    """After the warm-up the engine calls each region's graph without dynamo (batch 1 and batch >= 2); on the
    steps the engine really runs (block tables growing, batches of 1 and 3, the LoRA mask) the results are
    the very same as through dynamo, whose guards would have chosen the same graphs (checked above)."""
    engine, _ = compiled_engine
    compiled = engine.runner.compiled_decode
    assert compiled.direct_batches == [False, True] and compiled.call_directly
    direct = [generate(engine, prompt_ids[:1], ADAPTERS[:1])[0], *generate(engine, prompt_ids, ADAPTERS)]
    compiled.call_directly = False
    try:
        dynamo = [generate(engine, prompt_ids[:1], ADAPTERS[:1])[0], *generate(engine, prompt_ids, ADAPTERS)]
    finally:
        compiled.call_directly = True
    for ours, theirs in zip(direct, dynamo, strict=True):
        assert ours.token_logprobs == theirs.token_logprobs


def test_steps_needing_a_lora_mask_the_graphs_lack_run_eager():
    """With the default adapter merged into the weights the graphs are compiled without a LoRA mask: a step
    that carries one (a token on the base model or another adapter) runs eager, and the other way round."""
    from llm.engine.compiled_decode import CompiledDecode
    from llm.layers.context import StepContext
    from llm.layers.linear import Linear

    def step(mask: torch.Tensor | None) -> StepContext:
        empty = torch.zeros(1, dtype=torch.int32)
        return StepContext(True, empty.long(), empty[:, None], empty, lora_mask=mask)

    without_mask, with_mask = step(None), step(torch.ones(1, 1))
    merged = CompiledDecode(SimpleNamespace(layers=[], lm_head=Linear(4, 4)), max_batch=4, mask_width=0)  # type: ignore[arg-type]
    assert merged.serves(without_mask, 1) and not merged.serves(with_mask, 1)
    assert not merged.serves(without_mask, 5)  # past the compiled batch sizes
    unmerged = CompiledDecode(SimpleNamespace(layers=[], lm_head=Linear(4, 4)), max_batch=4, mask_width=1)  # type: ignore[arg-type]
    assert unmerged.serves(with_mask, 1) and not unmerged.serves(without_mask, 1)


def test_regions_divide_the_layers_evenly():
    from llm.engine.compiled_decode import region_size

    assert [region_size(n) for n in (30, 24, 32, 22, 7, 2, 1)] == [3, 3, 2, 2, 1, 2, 1]
