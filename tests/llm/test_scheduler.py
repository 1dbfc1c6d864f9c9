"""Scheduler, block manager, detokenizer and engine loop, in pure Python with a mock model (no torch)."""

from __future__ import annotations

import random

import pytest

from llm.base import ContextOverflowError, SamplingParams
from llm.engine.block_manager import BlockManager
from llm.engine.engine import LLMEngine
from llm.engine.scheduler import Scheduler
from llm.engine.sequence import Sequence
from tests.llm.engine_mocks import EOS, ByteTokenizer, MockRunner

BS = 16


def make_engine(
    num_blocks=64, max_num_seqs=16, budget=64, max_model_len=512, prefix_caching=True, script=None
):
    bm = BlockManager(num_blocks, BS, prefix_caching)
    runner = MockRunner(num_blocks, BS, script)
    scheduler = Scheduler(bm, max_num_seqs, budget, max_model_len)
    tok = ByteTokenizer()
    return LLMEngine(runner, tok.decode, tok.stop_token_ids, scheduler), runner


def assert_no_leak(engine: LLMEngine) -> None:
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert not engine.requests and not engine.scheduler.running and not engine.scheduler.waiting


def test_64_concurrent_requests_finish_with_right_lengths_under_preemption():
    rng = random.Random(0)
    engine, runner = make_engine(num_blocks=40, max_num_seqs=16, budget=48)
    requests = []
    for _ in range(64):
        prompt = [rng.randrange(1, 256) for _ in range(rng.randrange(1, 120))]
        requests.append(engine.add_request(prompt, SamplingParams(max_new_tokens=rng.randrange(1, 60))))
    while engine.has_unfinished:
        engine.step()
    for r in requests:
        assert r.finish_reason == "length"
        assert r.completion_tokens == r.params.max_new_tokens
        assert len(r.seq) == r.prompt_tokens + r.params.max_new_tokens
    assert engine.scheduler.num_preemptions > 0, "the cache was sized to force preemption"
    assert runner.max_batch > 1, "continuous batching ran sequences together"
    assert_no_leak(engine)


def test_preempted_output_equals_unpressured_output():
    rng = random.Random(1)
    prompts = [[rng.randrange(1, 256) for _ in range(rng.randrange(20, 90))] for _ in range(12)]
    params = SamplingParams(max_new_tokens=40)
    tight, _ = make_engine(num_blocks=24, budget=32)
    roomy, _ = make_engine(num_blocks=512, budget=4096)
    a = tight.generate(prompts, params)
    b = roomy.generate(prompts, params)
    assert tight.scheduler.num_preemptions > 0 and roomy.scheduler.num_preemptions == 0
    assert [r.seq.token_ids for r in a] == [r.seq.token_ids for r in b]
    assert_no_leak(tight)
    assert_no_leak(roomy)


def test_prefix_cache_hits_shared_system_prefix():
    engine, runner = make_engine(num_blocks=128)
    system = list(range(1, 1 + 5 * BS))  # five full blocks
    first = engine.generate([system + [200, 201, 202]], SamplingParams(max_new_tokens=4))[0]
    assert first.seq.num_cached_tokens == 0
    later = engine.generate(
        [system + [210 + i] * (i + 1) for i in range(4)], SamplingParams(max_new_tokens=4)
    )
    assert all(r.seq.num_cached_tokens == 5 * BS for r in later)  # the mock verified the reused KV
    assert engine.block_manager.prefix_hit_rate > 0.5
    assert_no_leak(engine)


def test_prefix_cache_never_matches_the_last_token_and_can_be_disabled():
    prompt = list(range(1, 1 + 2 * BS))  # exactly two blocks
    engine, _ = make_engine()
    engine.generate([prompt], SamplingParams(max_new_tokens=2))
    again = engine.generate([prompt], SamplingParams(max_new_tokens=2))[0]
    assert again.seq.num_cached_tokens == BS  # the second block holds the last prompt token: recomputed
    off, _ = make_engine(prefix_caching=False)
    off.generate([prompt], SamplingParams(max_new_tokens=2))
    assert off.generate([prompt], SamplingParams(max_new_tokens=2))[0].seq.num_cached_tokens == 0


def test_lru_eviction_keeps_recent_prefixes():
    bm = BlockManager(4, BS)
    seqs = []
    for base in (1, 100):
        seq = Sequence([base + i for i in range(BS + 1)], max_new_tokens=1)
        assert bm.admit(seq, bm.match_prefix(seq.token_ids), len(seq))
        seq.num_computed_tokens = len(seq)
        bm.commit(seq)
        bm.free(seq)
        seqs.append(seq)
    assert bm.match_prefix(seqs[0].token_ids) and bm.match_prefix(seqs[1].token_ids)
    # Two fresh blocks come from the front of the free list: the older prefix's blocks go first.
    filler = Sequence([7] * (2 * BS), max_new_tokens=1)
    assert bm.admit(filler, [], 2 * BS)
    assert not bm.match_prefix(seqs[0].token_ids)
    assert bm.match_prefix(seqs[1].token_ids)
    bm.free(filler)
    assert bm.num_free_blocks == 4


def test_chunked_prefill_respects_token_budget_and_fifo():
    engine, runner = make_engine(max_num_seqs=2, budget=16)
    reqs = [engine.add_request([5 + i] * 50, SamplingParams(max_new_tokens=3)) for i in range(4)]
    finished = []
    while engine.has_unfinished:
        finished += [o.request.request_id for o in engine.step() if o.finished]
    assert max(runner.step_tokens) == 16  # long prompts were split into budget-sized chunks
    assert finished == [r.request_id for r in reqs]
    assert_no_leak(engine)


def test_cancel_frees_blocks_at_once():
    engine, _ = make_engine()
    a = engine.add_request([1] * 40, SamplingParams(max_new_tokens=50))
    b = engine.add_request([2] * 40, SamplingParams(max_new_tokens=5))
    for _ in range(4):
        engine.step()
    used = engine.block_manager.num_blocks - engine.block_manager.num_free_blocks
    engine.abort(a.request_id)
    assert a.finish_reason == "cancelled"
    assert engine.block_manager.num_blocks - engine.block_manager.num_free_blocks < used
    while engine.has_unfinished:
        engine.step()
    assert b.finish_reason == "length"
    assert engine.abort(a.request_id) is None
    assert_no_leak(engine)


def test_prompt_longer_than_context_is_rejected_before_scheduling():
    engine, runner = make_engine(max_model_len=64)
    with pytest.raises(ContextOverflowError, match="64"):
        engine.add_request([1] * 64, SamplingParams())
    assert not engine.has_unfinished and runner.steps == 0


def test_length_capped_by_context_window():
    engine, _ = make_engine(max_model_len=40)
    r = engine.generate([[3] * 30], SamplingParams(max_new_tokens=100))[0]
    assert r.finish_reason == "length" and len(r.seq) == 40


def stream_text(script: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], str, str | None]:
    tok = ByteTokenizer()
    engine, _ = make_engine(script={0: script})
    request = engine.add_request(tok.encode("hi"), SamplingParams(max_new_tokens=len(script), stop=stop))
    deltas = []
    while engine.has_unfinished:
        deltas += [o.text for o in engine.step() if o.text]
    return deltas, request.text, request.finish_reason


def test_stream_is_utf8_safe_across_multibyte_tokens():
    tok = ByteTokenizer()
    text = "你好，世界! café 🎉"
    deltas, full, reason = stream_text(tok.encode(text) + [EOS])
    assert "".join(deltas) == full == text
    assert all("\ufffd" not in d for d in deltas)
    assert reason == "stop"


def test_stop_string_cuts_text_and_never_leaks_its_prefix():
    tok = ByteTokenizer()
    deltas, full, reason = stream_text(tok.encode("answer: 42\nEND of text"), stop=("\nEND",))
    assert full == "".join(deltas) == "answer: 42"
    assert reason == "stop"


def test_stop_token_is_not_part_of_text():
    tok = ByteTokenizer()
    deltas, full, reason = stream_text(tok.encode("ok") + [EOS, 66, 67])
    assert full == "ok" and reason == "stop"
