"""The service refuses to become ready with a model that cannot answer, and says why on `/readyz`, in the
log and from the CLI: a GGUF whose weights read as NaN, and a context window (set directly, or bounded by a
small KV cache) that cannot hold the system prompt, one passage and a question."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.api.app import create_app
from app.cli import cli
from app.services import Services, check_context_window
from llm.locate import default_llm_path
from retriever.store import KnowledgeBase
from tests.conftest import make_settings
from tests.llm.corrupt_gguf import corrupt_copy


@pytest.fixture(scope="module")
def corrupt_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corrupt_copy(default_llm_path(), tmp_path_factory.mktemp("models") / "corrupt.gguf")


def readiness_after_load(services: Services) -> tuple[int, dict[str, object]]:
    with TestClient(create_app(services)) as client:
        deadline = time.monotonic() + 300
        while (ready := client.get("/readyz")).json()["llm"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.5)
        asked = client.post("/v1/query", json={"question": "Where is Mount Etna?"})
        assert asked.status_code == 503 and "failed to load" in asked.json()["detail"], asked.text
        assert "/" not in asked.json()["detail"].replace("/readyz", ""), asked.text  # no server path
    services.close()
    return ready.status_code, ready.json()


def test_nan_weights_keep_the_service_unready(
    tmp_path: Path, kb: KnowledgeBase, corrupt_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "data", llm_path=corrupt_gguf, llm_enforce_eager=True)
    with caplog.at_level(logging.ERROR, logger="app.services"):
        status, body = readiness_after_load(Services(settings, kb=kb))
    assert status == 503 and body["llm"] == "failed" and body["knowledge_base"] == "ready", body
    assert "non-finite logits" in body["errors"]["llm"]  # type: ignore[index]
    assert any("non-finite logits" in record.getMessage() + str(record.exc_info) for record in caplog.records)


@pytest.mark.parametrize(
    "limit",
    [{"llm_max_model_len": 64}, {"llm_kv_cache_memory": 0.0004}],  # the latter: one 16-token KV block
    ids=["max_model_len", "kv_cache_memory"],
)
def test_a_context_window_too_small_keeps_the_service_unready(
    tmp_path: Path, kb: KnowledgeBase, limit: dict[str, object]
) -> None:
    settings = make_settings(tmp_path / "data", llm_enforce_eager=True, **limit)
    status, body = readiness_after_load(Services(settings, kb=kb))
    assert status == 503 and body["llm"] == "failed", body
    reason = body["errors"]["llm"]  # type: ignore[index]
    assert "cannot hold" in reason and "ARCHIVIST_LLM_MAX_MODEL_LEN" in reason
    assert "ARCHIVIST_LLM_KV_CACHE_MEMORY" in reason


def test_default_settings_fit(tmp_path: Path, generator) -> None:  # type: ignore[no-untyped-def]
    check_context_window(make_settings(tmp_path / "data"), generator)


def test_cli_generate_refuses_nan_weights(
    data_dir: Path, corrupt_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVIST_LLM_PATH", str(corrupt_gguf))
    result = CliRunner().invoke(cli, ["generate", "Hello"])
    assert result.exit_code == 1 and "non-finite logits" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_ask_refuses_a_context_window_too_small(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVIST_LLM_MAX_MODEL_LEN", "64")
    result = CliRunner().invoke(cli, ["ask", "Where is Mount Etna?"])
    assert result.exit_code == 1 and "ARCHIVIST_LLM_MAX_MODEL_LEN" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_model_file_that_fails_to_load_is_named_by_readyz_alone(tmp_path: Path, kb: KnowledgeBase) -> None:
    """The loader's reason names the file; /readyz (for whoever runs the server) shows it, a /v1 answer's
    503 does not show any server path."""
    broken = tmp_path / "models" / "broken.gguf"
    broken.parent.mkdir()
    broken.write_bytes(b"not a GGUF file at all" * 10)
    settings = make_settings(tmp_path / "data", llm_path=broken, llm_enforce_eager=True)
    status, body = readiness_after_load(Services(settings, kb=kb))
    assert status == 503 and body["llm"] == "failed", body
    assert str(broken) in body["errors"]["llm"]  # type: ignore[index]
