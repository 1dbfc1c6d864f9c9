"""The chat page's tests answer with the engine `make run` serves: the default model with the shipped RAG
adapter, so the page shows the answers and highlights a user sees."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings, service_engine


@pytest.fixture(scope="session")
def generator(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    engine = service_engine(make_settings(tmp_path_factory.mktemp("served") / "data").engine_config())
    assert engine.default_adapter is not None, "the shipped RAG adapter is missing"
    yield engine
    engine.shutdown()
