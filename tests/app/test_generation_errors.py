"""A generation that fails in the engine (finish reason "error") reaches every client as an error, never as
the no-answer reply: 503 JSON for `/v1/query`, an `error` event for its stream, an OpenAI error object (and
`finish_reason: "error"` in a stream) for `/v1/chat/completions`, exit status 1 for `archivist ask` and
`generate`. Nothing of it is cached or stored in a conversation.

The generator is the real `EngineGenerator` over a real engine and the model's tokenizer; only the model
runner is a double, whose step raises as a device error or a kernel bug would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.api.app import create_app
from app.cli import cli
from app.services import Services
from llm.engine.block_manager import BlockManager
from llm.engine.engine import LLMEngine, Request, Sample
from llm.engine.generator import EngineGenerator
from llm.engine.scheduler import ScheduledBatch, Scheduler
from retriever.store import KnowledgeBase
from tests.app.test_streaming import OWLS, read_events
from tests.conftest import make_settings

QUESTION = "How far can an owl turn its head?"
FAILED = "failed while generating"


class FailingRunner:
    def __init__(self) -> None:
        self.steps = 0

    def execute(self, batch: ScheduledBatch, requests: list[Request]) -> list[Sample | None]:
        self.steps += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.fixture
def runner() -> FailingRunner:
    return FailingRunner()


@pytest.fixture
def broken(generator, runner: FailingRunner) -> Iterator[EngineGenerator]:  # type: ignore[no-untyped-def]
    tokenizer = generator.tokenizer
    scheduler = Scheduler(BlockManager(256, 16), 4, 512, 4096)
    engine = LLMEngine(runner, tokenizer.decode, tokenizer.stop_token_ids, scheduler, encode=tokenizer.encode,
                       copy_table=lambda: tokenizer.copy_table)  # fmt: skip
    broken = EngineGenerator(engine, tokenizer, "broken-model")
    yield broken
    broken.shutdown()


@pytest.fixture
def services(tmp_path: Path, kb: KnowledgeBase, broken: EngineGenerator) -> Services:
    return Services(make_settings(tmp_path / "data", max_new_tokens=8), kb=kb, generator=broken)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as test_client:
        uploaded = test_client.post("/v1/documents", files={"file": ("owls.md", OWLS)})
        assert uploaded.status_code == 201, uploaded.text
        yield test_client


def test_query_answers_503_and_caches_nothing(
    client: TestClient, services: Services, runner: FailingRunner
) -> None:
    for attempt in (1, 2):
        reply = client.post("/v1/query", json={"question": QUESTION})
        assert reply.status_code == 503, reply.text
        assert FAILED in reply.json()["detail"] and "broken-model" in reply.json()["detail"]
        assert runner.steps == attempt  # asked again, not answered from the cache
    assert len(services.cache) == 0
    metrics = client.get("/metrics").text
    assert 'archivist_generations_total{finish_reason="error"} 2.0' in metrics


def test_a_failed_turn_is_not_stored_in_the_conversation(client: TestClient) -> None:
    cid = client.post("/v1/conversations", json={"collection": "default"}).json()["id"]
    reply = client.post("/v1/query", json={"question": QUESTION, "conversation_id": cid})
    assert reply.status_code == 503, reply.text
    assert client.get(f"/v1/conversations/{cid}").json()["messages"] == []


def test_stream_ends_with_an_error_event(client: TestClient) -> None:
    with client.stream("POST", "/v1/query", json={"question": QUESTION, "stream": True}) as response:
        assert response.status_code == 200
        events = list(read_events(response.iter_lines()))
    assert [kind for kind, _ in events] == ["sources", "error"]
    error = events[-1][1]
    assert error["status"] == 503 and FAILED in error["detail"]


def test_chat_completion_is_an_openai_error(client: TestClient) -> None:
    body = {"model": "archivist:default", "messages": [{"role": "user", "content": QUESTION}]}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert FAILED in error["message"] and error["type"] == "server_error" and error["code"] == 503

    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="-", http_client=client, max_retries=0)
    with pytest.raises(openai.APIStatusError, match=FAILED) as raised:
        sdk.chat.completions.create(model="archivist:default", messages=body["messages"])
    assert raised.value.status_code == 503


def test_chat_stream_ends_with_finish_reason_error(client: TestClient) -> None:
    body = {"model": "archivist:default", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        data = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    *chunks, error = [json.loads(payload) for payload in data[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "error"
    assert FAILED in error["error"]["message"] and error["error"]["code"] == 503

    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="-", http_client=client, max_retries=0)
    stream = sdk.chat.completions.create(model="archivist:default", messages=body["messages"], stream=True)
    with pytest.raises(openai.APIError, match=FAILED):
        list(stream)


@pytest.fixture
def cli_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch, broken: EngineGenerator) -> Path:
    monkeypatch.setenv("ARCHIVIST_MAX_NEW_TOKENS", "8")
    monkeypatch.setattr("app.services.load_generator", lambda settings, compile_in_background=False: broken)
    return data_dir


def test_cli_ask_and_generate_exit_non_zero(cli_env: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "owls.md").write_bytes(OWLS)
    assert runner.invoke(cli, ["ingest", str(tmp_path / "owls.md")]).exit_code == 0
    for command in (["ask", QUESTION], ["generate", "Hello"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and FAILED in lines[0], result.output
