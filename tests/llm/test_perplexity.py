"""`llm.perplexity`: windows of the token stream, and the mean over every window's scored tokens."""

from __future__ import annotations

import math

import pytest
import torch

from llm.perplexity import TextFileError, perplexity, windows

TEXT = "The Aletsch Glacier is the largest glacier in the Alps. It covers about 80 square kilometres."


def test_windows_cut_the_tokens_and_open_each_with_bos():
    assert windows(list(range(7)), 99, 4) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6]]
    assert windows(list(range(7)), None, 4) == [[0, 1, 2, 3], [4, 5, 6]]


def test_perplexity_is_the_mean_over_every_window(packed_engine):
    engine, tokenizer = packed_engine
    ids = tokenizer.encode(TEXT)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    parts = [engine.runner.score(w) for w in windows(ids, bos, 8) if len(w) > 1]
    expected = -torch.cat(parts).double().mean().item()
    result = perplexity(engine, tokenizer, TEXT, window=8)
    assert result.tokens == sum(len(p) for p in parts) and math.isclose(result.mean_nll, expected)
    assert math.isclose(result.perplexity, math.exp(expected))
    with pytest.raises(TextFileError, match="too short"):
        perplexity(engine, tokenizer, "")
