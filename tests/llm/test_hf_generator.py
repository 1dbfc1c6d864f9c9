"""The transformers reference backend streams the same greedy answer and honours the opening bias."""

from __future__ import annotations

import pytest

from llm.base import ChatMessage, SamplingParams, collect
from llm.hf import HFGenerator

pytestmark = pytest.mark.slow

QUESTION = [ChatMessage("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
def hf_generator(gguf_path):
    return HFGenerator(gguf_path)


def test_greedy_answer_and_opening_bias(hf_generator):
    plain = collect(hf_generator.stream(QUESTION, SamplingParams(max_new_tokens=12)))
    assert "Paris" in plain.text
    first = hf_generator.tokenizer.encode(plain.text, add_special_tokens=False)[0]
    biased = collect(
        hf_generator.stream(QUESTION, SamplingParams(max_new_tokens=12, opening_bias=((plain.text, -100.0),)))
    )
    assert hf_generator.tokenizer.encode(biased.text, add_special_tokens=False)[0] != first
    assert biased.completion_tokens > 1  # the bias does not stop the reply after its first token
