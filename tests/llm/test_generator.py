"""`EngineGenerator`: many threads streaming at once through one engine worker, cancellation, errors."""

from __future__ import annotations

import threading
import time

import pytest

from llm.base import ChatMessage, ContextOverflowError, Generator, SamplingParams, collect
from llm.engine.block_manager import BlockManager
from llm.engine.engine import LLMEngine
from llm.engine.generator import EngineGenerator
from llm.engine.scheduler import Scheduler
from tests.llm.engine_mocks import ByteTokenizer, MockRunner


@pytest.fixture
def generator():
    bm = BlockManager(64, 16)
    tok = ByteTokenizer()
    engine = LLMEngine(MockRunner(64, 16), tok.decode, tok.stop_token_ids, Scheduler(bm, 8, 64, 256))
    gen = EngineGenerator(engine, tok, "mock")
    yield gen
    gen.shutdown()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_is_a_generator(generator):
    assert isinstance(generator, Generator)
    assert generator.count_tokens("héllo") == 6


def test_concurrent_streams(generator):
    results = {}

    def worker(i):
        messages = [ChatMessage("user", f"question {i}" * (i % 5 + 1))]
        results[i] = collect(generator.stream(messages, SamplingParams(max_new_tokens=10 + i)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 16
    for i, r in results.items():
        assert r.finish_reason == "length" and r.completion_tokens == 10 + i
        assert r.prompt_tokens == len(
            ByteTokenizer().apply_chat_template([ChatMessage("user", f"question {i}" * (i % 5 + 1))])
        )
    bm = generator.engine.block_manager
    wait_for(lambda: bm.num_free_blocks == bm.num_blocks)


def test_closing_the_stream_cancels_and_frees_blocks(generator):
    stream = generator.stream([ChatMessage("user", "x" * 100)], SamplingParams(max_new_tokens=150))
    next(stream)
    stream.close()
    bm = generator.engine.block_manager
    wait_for(lambda: bm.num_free_blocks == bm.num_blocks and not generator.engine.has_unfinished)


def test_overflow_raises_at_submission(generator):
    with pytest.raises(ContextOverflowError):
        generator.stream([ChatMessage("user", "x" * 300)], SamplingParams())


def test_shutdown_ends_live_streams(generator):
    stream = generator.stream([ChatMessage("user", "y")], SamplingParams(max_new_tokens=200))
    generator.shutdown()
    events = list(stream)
    assert events[-1].finish_reason in ("cancelled", "length")
    with pytest.raises(RuntimeError):
        generator.stream([ChatMessage("user", "y")], SamplingParams())
