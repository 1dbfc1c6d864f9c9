"""LoRA adapters through the service: listed as models, chosen per request by `adapter` or by model id,
refused by name when unknown; and the settings that make the shipped RAG adapter the default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.services import Services
from llm.locate import DEFAULT_ADAPTER_DIR, default_adapter_path
from retriever.store import KnowledgeBase
from tests.conftest import make_settings
from tests.llm.adapters import write_random_adapter


@pytest.fixture(scope="module")
def adapted_generator(tmp_path_factory):  # type: ignore[no-untyped-def]
    from llm.config import EngineConfig
    from llm.engine import load_engine

    folder = write_random_adapter(tmp_path_factory.mktemp("lora") / "noisy")
    config = EngineConfig(num_kv_blocks=256, max_num_seqs=4, enforce_eager=True, adapters=(folder,))
    generator = load_engine(config)
    yield generator
    generator.shutdown()


@pytest.fixture
def client(tmp_path: Path, kb: KnowledgeBase, adapted_generator) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", max_new_tokens=8)
    with TestClient(create_app(Services(settings, kb=kb, generator=adapted_generator))) as test_client:
        files = {"file": ("owls.md", b"# Owls\n\nOwls hunt at night. An owl can turn its head 270 degrees.")}
        assert test_client.post("/v1/documents", files=files).status_code == 201
        yield test_client


def test_adapters_are_models_and_chosen_per_request(client: TestClient) -> None:
    ids = [model["id"] for model in client.get("/v1/models").json()["data"]]
    assert ids == ["archivist:default", "archivist:default+noisy"]
    question = {"question": "How far can an owl turn its head?", "top_k": 1}
    with_adapter = client.post("/v1/query", json={**question, "adapter": "noisy"})
    base = client.post("/v1/query", json={**question, "adapter": "none"})
    assert with_adapter.status_code == base.status_code == 200
    assert with_adapter.json()["usage"]["prompt_tokens"] == base.json()["usage"]["prompt_tokens"]
    unknown = client.post("/v1/query", json={**question, "adapter": "nope"})
    assert unknown.status_code == 422 and "adapter" in unknown.json()["detail"]
    assert "noisy" in unknown.json()["detail"]  # names what is served
    messages = [{"role": "user", "content": "How far can an owl turn its head?"}]
    for model, status in (
        ("archivist:default+noisy", 200),
        ("archivist:+none", 200),
        ("archivist:default+x", 422),
    ):
        reply = client.post(
            "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 8}
        )
        assert reply.status_code == status, reply.text


def test_the_shipped_adapter_is_the_default_for_the_default_model(tmp_path: Path) -> None:
    if default_adapter_path() is None:
        pytest.fail(f"the shipped RAG adapter is missing from {DEFAULT_ADAPTER_DIR}")
    config = make_settings(tmp_path).engine_config()
    assert config.adapters == (DEFAULT_ADAPTER_DIR,) and config.default_adapter == DEFAULT_ADAPTER_DIR.name
    assert make_settings(tmp_path, llm_adapter="").engine_config().adapters == ()
    other_model = make_settings(tmp_path, llm_path=tmp_path / "other.gguf").engine_config()
    assert other_model.adapters == () and other_model.default_adapter is None
