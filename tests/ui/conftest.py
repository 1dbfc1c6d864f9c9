"""The chat page's tests answer with the engine `make run` serves: the default model with the shipped RAG
adapter, so the page shows the answers and highlights a user sees."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import make_settings


@pytest.fixture(scope="session")
def generator(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from llm.engine import load_engine

    served = make_settings(tmp_path_factory.mktemp("served") / "data").engine_config()
    engine = load_engine(replace(served, max_model_len=4096, max_num_seqs=16, enforce_eager=True))
    assert engine.default_adapter is not None, "the shipped RAG adapter is missing"
    yield engine
    engine.shutdown()
