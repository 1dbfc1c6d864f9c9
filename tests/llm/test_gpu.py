"""CUDA paths: graphs for decode batches give the same tokens as eager steps (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from llm.base import ChatMessage, SamplingParams
from llm.config import EngineConfig
from llm.engine import create_engine
from llm.engine.model_runner import graph_batch_sizes


def test_graph_batch_sizes_cover_every_batch_up_to_the_max():
    sizes = graph_batch_sizes(64)
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 64
    assert all(any(s >= b for s in sizes) for b in range(1, 65))
    assert graph_batch_sizes(3) == [1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager(gguf_path):
    prompts = ["What is the capital of France?", "请写一首关于月亮的诗。", "List three colours."]
    results = []
    for eager in (True, False):
        config = EngineConfig(
            model_path=gguf_path, device="cuda", enforce_eager=eager, max_num_seqs=8, max_model_len=1024
        )
        engine, tokenizer, _ = create_engine(config)
        assert bool(engine.runner.graphs) is not eager  # type: ignore[attr-defined]
        ids = [tokenizer.apply_chat_template([ChatMessage("user", p)]) for p in prompts]
        done = engine.generate(ids, SamplingParams(max_new_tokens=24))
        results.append([r.seq.completion_token_ids for r in done])
        del engine
        torch.cuda.empty_cache()
    assert results[0] == results[1]
