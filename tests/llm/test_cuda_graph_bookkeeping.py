"""The CUDA-graph decode path's bookkeeping, on the CPU with the capture mocked: which captured batch size a
step replays (padding up), what the runner writes into the static buffers each step (padding rows write
nowhere and attend to one ignored key; block tables are zero-padded to the model's full width), and that
the answers equal the eager engine's, also with a LoRA adapter merged into the weights (steps without a mask
must not replay the previous step's mask).

A fake graph stands in for `torch.cuda.CUDAGraph`: at "capture" it records the step context the runner set
(views of the static buffers, as a real capture records their addresses), and `replay()` runs the model on
those buffers again, which is what replaying a captured graph does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from llm.base import SamplingParams
from llm.config import EngineConfig
from llm.engine import LLMEngine, create_engine
from llm.layers.context import get_context, set_context
from tests.llm.adapters import write_random_adapter
from tests.llm.tiny_models import FAMILIES, VOCAB, write_tiny_model

SIZES = [1, 2, 4]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    family, extra = FAMILIES["llama-gqa-hd64"]
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), family, extra)


def eager_engine(model: Path, adapter: Path | None = None) -> LLMEngine:
    """With `adapter`: that adapter as the default one, merged into the weights."""
    config = EngineConfig(
        model_path=model, dtype="float32", cpu_weights="dequantized", enforce_eager=True, block_size=16,
        num_kv_blocks=32, max_model_len=128, adapters=(adapter,) if adapter else (),
        default_adapter=adapter.name if adapter else None,
    )  # fmt: skip
    return create_engine(config)[0]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    config = json.loads((tiny_model / "config.json").read_text())
    hidden, inter, head = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * head, config["num_key_value_heads"] * head
    shapes = {
        "q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, q),
        "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter),
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("lora") / "tiny-rag"
    return write_random_adapter(folder, rank=4, scale=0.2, shapes=shapes, layers=config["num_hidden_layers"])


class FakeGraph:
    """Replays the model over the static buffers recorded at capture; counts its replays."""

    def __init__(self, runner) -> None:  # type: ignore[no-untyped-def]
        self.runner = runner
        self.replays = 0
        self.ctx = None

    def replay(self) -> None:
        g, size = self.runner._graph_io, len(self.ctx.slot_mapping)
        set_context(self.ctx)
        try:
            g["hidden"][:size] = self.runner.model(g["input_ids"][:size], g["positions"][:size])
        finally:
            set_context(None)
        self.replays += 1

    def pool(self) -> None:
        return None


def graph_engine(model: Path, monkeypatch: pytest.MonkeyPatch, adapter: Path | None = None) -> LLMEngine:
    """An eager engine whose runner then "captures" graphs of SIZES with the fake graph."""
    engine = eager_engine(model, adapter)
    runner = engine.runner

    @contextmanager
    def capture(graph: FakeGraph, pool: object = None) -> Iterator[None]:
        yield
        graph.ctx = get_context()  # the views of the static buffers a real capture would bake in

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: FakeGraph(runner))
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    runner._capture_graphs(SIZES)
    return engine


def prompts(count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(count)
    return [torch.randint(2, VOCAB, (10 + 7 * i,), generator=generator).tolist() for i in range(count)]


def answers(
    engine: LLMEngine, batch: list[list[int]], adapters: list[int] | None = None
) -> list[tuple[list[int], list[float | None]]]:
    params = SamplingParams(max_new_tokens=20, temperature=0.0)  # crosses a block boundary on the way
    done = engine.generate(batch, params, logprobs=0, ignore_eos=True, adapters=adapters)
    return [([s.token_id for s in r.token_logprobs], [s.logprob for s in r.token_logprobs]) for r in done]


def assert_same_answers(ours: list, theirs: list) -> None:  # type: ignore[type-arg]
    for (tokens, logprobs), (eager_tokens, eager_logprobs) in zip(ours, theirs, strict=True):
        assert tokens == eager_tokens
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(eager_logprobs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("count", [1, 3])  # 3 sequences replay the graph of 4: one padding row
def test_graph_replays_match_eager_decode(tiny_model, monkeypatch, count):
    batch = prompts(count)
    engine = graph_engine(tiny_model, monkeypatch)
    assert_same_answers(answers(engine, batch), answers(eager_engine(tiny_model), batch))
    graphs = engine.runner.graphs
    used = min(size for size in SIZES if size >= count)
    assert graphs[used].replays == 19  # every decode step (the first token comes from prefill)
    assert all(graph.replays == 0 for size, graph in graphs.items() if size != used)


def test_static_buffers_of_a_padded_step(tiny_model, monkeypatch):
    engine = graph_engine(tiny_model, monkeypatch)
    runner, batch = engine.runner, prompts(3)
    answers(engine, batch)
    g = runner._graph_io
    assert g["block_tables"].shape == (max(SIZES), runner.max_blocks_per_seq)  # the model's full width
    # The last step's three sequences, then the padding row of the batch-4 graph.
    lengths = [len(p) + 19 for p in batch]  # keys of the last decode step: prompt + 19 earlier tokens
    assert g["context_lens"][:4].tolist() == [*lengths, 1]  # padding attends to one ignored key
    slots = g["slot_mapping"][:4].tolist()
    assert slots[3] == -1 and all(s >= 0 for s in slots[:3])  # padding writes nowhere
    assert len(set(slots[:3])) == 3
    widths = [-(-n // runner.block_size) for n in lengths]
    for row, width in enumerate(widths):
        assert (g["block_tables"][row, width:] == 0).all()  # zero-padded past each sequence's blocks
    assert (g["block_tables"][3] == 0).all()
    assert g["positions"][:3].tolist() == [n - 1 for n in lengths]


def test_batches_beyond_the_largest_graph_run_eagerly(tiny_model, monkeypatch):
    engine = graph_engine(tiny_model, monkeypatch)
    batch = prompts(5)
    ours = answers(engine, batch)
    assert [g.replays for g in engine.runner.graphs.values()] == [0, 0, 0]
    assert ours == answers(eager_engine(tiny_model), batch)


def test_graph_replays_with_a_merged_adapter_match_eager_decode(tiny_model, tiny_adapter, monkeypatch):
    """A mixed batch (the merged default adapter and the base model, whose delta the mask selects), then a
    batch on the default adapter alone (no mask: the static mask buffer must be cleared, not replayed)."""
    engine = graph_engine(tiny_model, monkeypatch, tiny_adapter)
    eager = eager_engine(tiny_model, tiny_adapter)
    assert engine.runner.lora.merged == 1
    batch = prompts(3)
    for adapters in ([1, 0, 1], [1, 1, 1]):
        assert_same_answers(answers(engine, batch, adapters), answers(eager, batch, adapters))
    assert engine.runner.graphs[4].replays == 2 * 19
    base = answers(eager, batch[:1], [0])[0][0]
    assert base != answers(eager, batch[:1], [1])[0][0]  # the adapter changes the answer
