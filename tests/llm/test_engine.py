"""The engine on the real model as served (packed weights): sampling, streaming, stops, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llm.base import ChatMessage, ContextOverflowError, SamplingParams, collect
from llm.config import EngineConfig
from llm.engine import create_engine
from llm.engine.generator import EngineGenerator
from llm.engine.sampler import first_max
from llm.model.presets import UnsupportedModelError

pytestmark = pytest.mark.slow

QUESTION = [ChatMessage("user", "What is the capital of France?")]


def ids_of(tokenizer, text):
    return tokenizer.apply_chat_template([ChatMessage("user", text)])


def test_packed_weights_answer_sensibly(packed_engine):
    engine, tokenizer = packed_engine
    r = engine.generate([tokenizer.apply_chat_template(QUESTION)], SamplingParams(max_new_tokens=16))[0]
    assert "Paris" in r.text
    assert r.finish_reason == "stop"
    assert r.timings["ttft_ms"] > 0


def test_packed_weights_stay_close_to_exact_ones(packed_engine, exact_engine):
    text = ids_of(exact_engine[1], "The quick brown fox jumps over the lazy dog. " * 3)
    exact = exact_engine[0].runner.score(text)
    packed = packed_engine[0].runner.score(text)
    # bf16 activations and per-channel int8 output head cost a little perplexity, never much.
    assert abs(math.exp(-packed.mean().item()) / math.exp(-exact.mean().item()) - 1) < 0.05


def test_same_seed_same_text(packed_engine):
    engine, tokenizer = packed_engine
    prompt = ids_of(tokenizer, "Tell me a story.")
    params = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=50, min_p=0.02, seed=7)
    # A cold prompt and a prefix-cache hit compute the last prompt token with differently shaped matmuls;
    # in bfloat16 that can move a logit by one rounding step and, rarely, a sampled token. The guarantee is
    # for the same cache state, so the prompt is cached first.
    engine.generate([prompt], SamplingParams(max_new_tokens=1))
    a, b = (engine.generate([prompt], params)[0] for _ in range(2))
    # In one batch with other sampled requests: still the same text for the same seed.
    crowd = engine.generate([prompt, prompt, prompt], SamplingParams(max_new_tokens=24, temperature=1.0))
    c = engine.generate([prompt], params)[0]
    other = engine.generate([prompt], SamplingParams(**{**params.__dict__, "seed": 8}))[0]
    assert a.text == b.text == c.text
    assert other.text != a.text
    assert len({r.text for r in crowd}) > 1


def test_penalties_change_greedy_output(packed_engine):
    engine, tokenizer = packed_engine
    prompt = ids_of(tokenizer, "Repeat the word hello many times.")
    # Past the end-of-sequence token the tiny model repeats itself, which is what the penalties act on.
    plain = engine.generate([prompt], SamplingParams(max_new_tokens=32), ignore_eos=True)[0]
    penalized = engine.generate(
        [prompt], SamplingParams(max_new_tokens=32, repetition_penalty=1.5), ignore_eos=True
    )[0]
    present = engine.generate(
        [prompt], SamplingParams(max_new_tokens=32, presence_penalty=5.0), ignore_eos=True
    )[0]
    assert penalized.text != plain.text
    assert len(set(present.seq.completion_token_ids)) > len(set(plain.seq.completion_token_ids))


def test_opening_bias_is_a_margin_on_the_first_token_only(packed_engine):
    engine, tokenizer = packed_engine
    prompt = tokenizer.apply_chat_template(QUESTION)
    plain = engine.generate([prompt], SamplingParams(max_new_tokens=16), logprobs=2)[0]
    first = plain.token_logprobs[0]
    margin = first.logprob - max(lp for token, lp in first.top_logprobs if token != first.token_id)

    def opening_with(bias):
        params = SamplingParams(max_new_tokens=16, opening_bias=((plain.text, bias),))
        return engine.generate([prompt], params)[0].seq.completion_token_ids

    assert tokenizer.encode(plain.text)[0] == first.token_id
    assert opening_with(-margin / 2) == plain.seq.completion_token_ids  # not enough to change the opening
    cut = opening_with(-margin - 1.0)
    assert cut[0] != first.token_id
    # Only the first position is biased: a big bonus for the reply's own first token does not repeat it.
    assert opening_with(50.0)[:2] == plain.seq.completion_token_ids[:2]


def test_stop_string_cuts_the_answer(packed_engine):
    engine, tokenizer = packed_engine
    prompt = ids_of(tokenizer, "Explain in detail how a steam engine works.")
    full = engine.generate([prompt], SamplingParams(max_new_tokens=30))[0].text
    stop = full[12:16]
    cut = engine.generate([prompt], SamplingParams(max_new_tokens=30, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_chinese_streams_clean_utf8(packed_engine):
    engine, tokenizer = packed_engine
    generator = EngineGenerator(engine, tokenizer, "test")
    try:
        events = list(
            generator.stream(
                [ChatMessage("user", "请写一篇关于春天的短文。")], SamplingParams(max_new_tokens=40)
            )
        )
    finally:
        generator.shutdown()
    texts = [e.text for e in events]
    assert all("\ufffd" not in t for t in texts)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(texts))
    final = events[-1]
    assert (
        final.finish_reason in ("stop", "length") and final.completion_tokens > 0 and final.prompt_tokens > 10
    )
    assert collect(iter(events)).text == "".join(texts)


def test_prompt_longer_than_context_is_rejected(packed_engine):
    engine, tokenizer = packed_engine
    generator = EngineGenerator(engine, tokenizer, "test")
    try:
        with pytest.raises(ContextOverflowError):
            generator.stream([ChatMessage("user", "word " * 2000)], SamplingParams())
        assert not engine.has_unfinished
    finally:
        generator.shutdown()


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_k": -2},
        {"min_p": 1.5},
        {"max_new_tokens": 0},
        {"repetition_penalty": 0},
        {"opening_bias": (("", -1.0),)},
        {"opening_bias": (("The", float("nan")),)},
    ],
)
def test_invalid_sampling_is_a_value_error(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_missing_model_path_names_it(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(UnsupportedModelError, match="nope.gguf"):
        create_engine(EngineConfig(model_path=missing))


def test_unsupported_architecture_names_path_and_supported_ones(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel") as info:
        create_engine(EngineConfig(model_path=tmp_path))
    assert str(tmp_path) in str(info.value) and "LlamaForCausalLM" in str(info.value)


def test_invalid_engine_config_is_a_value_error():
    with pytest.raises(ValueError, match="quantize"):
        EngineConfig(quantize="int3")  # type: ignore[arg-type]


def test_beam_search_width_one_is_greedy_and_wider_is_ranked(packed_engine):
    from llm.engine.beam import beam_search

    engine, tokenizer = packed_engine
    prompt = ids_of(tokenizer, "Name a colour.")
    greedy = engine.generate([prompt], SamplingParams(max_new_tokens=8))[0]
    one = beam_search(engine, prompt, beam_width=1, max_new_tokens=8, length_penalty=0.0)[0].token_ids
    expected = [t for t in greedy.seq.completion_token_ids if t not in engine.stop_token_ids]
    # Beam steps are prefills and greedy steps are decodes: the same maths through different kernels, so the
    # two may part only where the two best next tokens are tied to within rounding.
    split = next((i for i, (a, b) in enumerate(zip(one, expected, strict=False)) if a != b), None)
    if split is None:
        assert one == expected
    else:
        request = engine.add_request(prompt + expected[:split], SamplingParams(max_new_tokens=1), logprobs=2)
        while engine.has_unfinished:
            engine.step()
        (best, first), (runner_up, second) = request.token_logprobs[0].top_logprobs[:2]
        assert {best, runner_up} == {one[split], expected[split]}
        assert first - second < 0.05, f"beam and greedy differ at {split} without a near-tie"
    beams = beam_search(engine, prompt, beam_width=3, max_new_tokens=8, length_penalty=0.0)
    assert len(beams) == 3
    assert [b.logprob for b in beams] == sorted((b.logprob for b in beams), reverse=True)
    assert all(0 < len(b.token_ids) <= 8 for b in beams)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_eager_steps_ignore_a_compile_running_in_another_thread(packed_engine, monkeypatch):
    """Dynamo's `is_compiling()` is process-wide: while the server compiles its decode step in a background
    thread, it says True in the engine's thread too. Eager steps, scoring's skipped slots (-1) included, must
    not take the compiled step's kernel forms then: only `StepContext.compiled` picks them."""
    import torch

    engine, tokenizer = packed_engine
    text = ids_of(tokenizer, "The quick brown fox jumps over the lazy dog.")
    params = SamplingParams(max_new_tokens=8)
    alone = engine.runner.score(text), engine.generate([text], params)[0].text
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as while another thread traces
    during = engine.runner.score(text), engine.generate([text], params)[0].text
    assert torch.equal(during[0], alone[0]) and during[1] == alone[1]


def test_greedy_picks_the_first_of_tied_maxima_like_argmax():
    rows = torch.zeros(3, 262_144)
    rows[0, [7, 900, 200_000]] = 1.0
    rows[1, [5_000, 262_143]] = 2.0
    rows[2, 0] = -1.0  # the maximum is 0, first reached at index 1
    assert first_max(rows).tolist() == rows.argmax(dim=-1).tolist() == [7, 5_000, 1]
