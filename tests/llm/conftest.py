"""The real SmolLM2 GGUF, loaded once per session by transformers (the reference) and by our engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from llm.locate import default_llm_path


@pytest.fixture(scope="session", autouse=True)
def single_thread() -> Iterator[None]:
    # The test machines have 2 shared cores: two OpenMP threads stall each other under load (10x slower).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def gguf_path():
    return default_llm_path()


@pytest.fixture(scope="session")
def hf_model(gguf_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def exact_engine(gguf_path):
    """Our engine with the GGUF weights dequantized to float32: the numbers transformers computes with."""
    from llm.config import EngineConfig
    from llm.engine import create_engine

    config = EngineConfig(
        model_path=gguf_path,
        cpu_weights="dequantized",
        num_kv_blocks=256,
        max_model_len=1024,
        enforce_eager=True,
    )
    engine, tokenizer, _ = create_engine(config)
    return engine, tokenizer


@pytest.fixture(scope="session")
def packed_engine(gguf_path):
    """Our engine as served on the CPU: int4/int8 weights packed, bfloat16 activations."""
    from llm.config import EngineConfig
    from llm.engine import create_engine

    engine, tokenizer, _ = create_engine(
        EngineConfig(model_path=gguf_path, num_kv_blocks=256, max_model_len=1024, enforce_eager=True)
    )
    return engine, tokenizer
