"""The compiled CPU decode step (`llm/engine/compiled_decode.py`) against the eager one, on the real SmolLM2.

Both run the same packed int4/int8 weights with bfloat16 activations; inductor keeps fused intermediates in
float32 where eager rounds each op to bfloat16, so the two may part ways, but only where the two best tokens
are a near tie. Compiling takes minutes on a cold 2-core machine: this module builds one compiled engine.
"""

from __future__ import annotations

import pytest
import torch

from llm.base import ChatMessage, SamplingParams
from llm.engine.compiled_decode import compiler_available
from llm.engine.engine import Request

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="the compiled step is the CPU path"),
    pytest.mark.skipif(not compiler_available(), reason="inductor needs a C++ compiler (g++) on the CPU"),
]

PROMPTS = [
    "Explain in detail how a steam engine works.",
    "List twenty fruits and describe the colour of each.",
    "请详细解释一下太阳系的八大行星。",
]
NEW_TOKENS = 40  # crosses block boundaries: block tables grow from 2 to 4 columns on the way
# The logits are bfloat16: one step of rounding is 0.125 at magnitudes 16-32, and log-probs move with it.
LOGPROB_ATOL = 0.25
NEAR_TIE = 0.3  # where the paths part, the other path's token was this close to its best one


@pytest.fixture(scope="module")
def compiled_engine(gguf_path):
    from llm.config import EngineConfig
    from llm.engine import create_engine

    engine, tokenizer, _ = create_engine(
        EngineConfig(model_path=gguf_path, num_kv_blocks=256, max_model_len=1024, max_num_seqs=4)
    )
    return engine, tokenizer


@pytest.fixture(scope="module")
def prompt_ids(compiled_engine):
    _, tokenizer = compiled_engine
    return [tokenizer.apply_chat_template([ChatMessage("user", p)]) for p in PROMPTS]


def generate(engine, prompts: list[list[int]]) -> list[Request]:
    return engine.generate(prompts, SamplingParams(max_new_tokens=NEW_TOKENS), logprobs=5, ignore_eos=True)


def assert_same_or_near_tie(ours: Request, theirs: Request) -> int:
    """Tokens agree with close log-probs up to a point where `theirs` nearly tied; returns how many agreed."""
    for step, (a, b) in enumerate(zip(ours.token_logprobs, theirs.token_logprobs, strict=True)):
        assert a.logprob is not None and b.logprob is not None and b.top_logprobs is not None
        if a.token_id != b.token_id:
            alternatives = dict(b.top_logprobs)
            assert a.token_id in alternatives, f"step {step}: token {a.token_id} not in the other's top 5"
            assert b.logprob - alternatives[a.token_id] < NEAR_TIE, f"step {step}: not a near tie"
            return step
        assert abs(a.logprob - b.logprob) < LOGPROB_ATOL, f"step {step}: {a.logprob} vs {b.logprob}"
    return len(ours.token_logprobs)


def test_the_engine_compiled_its_decode_step(compiled_engine):
    engine, _ = compiled_engine
    assert engine.runner.compiled_decode is not None


def test_compiled_matches_eager_decode(compiled_engine, packed_engine, prompt_ids):
    agreed = [
        assert_same_or_near_tie(ours, theirs)
        for ours, theirs in zip(
            generate(compiled_engine[0], prompt_ids), generate(packed_engine[0], prompt_ids), strict=True
        )
    ]
    assert sum(agreed) >= NEW_TOKENS  # the paths agree for a good stretch, not just one token


def test_batched_matches_single_and_nothing_recompiles(compiled_engine, prompt_ids):
    engine, _ = compiled_engine
    with torch.compiler.set_stance("fail_on_recompile"):  # the graphs compiled at load cover every step
        singles = [generate(engine, [ids])[0] for ids in prompt_ids]
        batched = generate(engine, prompt_ids)
    for one, together in zip(singles, batched, strict=True):
        assert_same_or_near_tie(together, one)
