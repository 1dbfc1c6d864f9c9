"""Observability: Prometheus metrics (per-route latency, TTFT, tokens/s, queue, engine and cache state,
ingest), JSON logs carrying the request id, and the id echoed in a response header."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.ops.logs import JsonFormatter
from app.services import Services
from llm.base import ChatMessage, GenerationEvent, Generator, SamplingParams
from retriever.store import KnowledgeBase
from tests.app.test_streaming import OWLS
from tests.conftest import make_settings


class EngineStats:
    """The real model behind the optional interface a batching engine adds: `max_concurrency` and
    `stats()`. Generation is delegated untouched."""

    def __init__(self, generator: Generator) -> None:
        self.inner = generator
        self.name = generator.name
        self.context_window = generator.context_window
        self.max_concurrency = 4

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Iterator[GenerationEvent]:
        return self.inner.stream(messages, params)

    def stats(self) -> dict[str, float]:
        return {"running": 0, "waiting": 0, "kv_cache_usage": 0.25, "prefix_cache_hit_rate": 0.5}


@pytest.fixture
def observed(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", max_new_tokens=6)
    with TestClient(create_app(Services(settings, kb=kb, generator=EngineStats(generator)))) as client:
        yield client


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


def test_metrics_cover_routes_generation_queue_engine_cache_and_ingest(observed: TestClient) -> None:
    client = observed
    assert client.post("/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
    jobs = client.post("/v1/documents", files=[("files", ("a.txt", b"Barn owls nest in barns."))])
    while client.get(f"/v1/jobs/{jobs.json()['id']}").json()["state"] != "done":
        time.sleep(0.05)
    for _ in range(2):
        assert (
            client.post("/v1/query", json={"question": "How far can an owl turn its head?"}).status_code
            == 200
        )
    client.get("/v1/documents/12345")

    text = client.get("/metrics").text
    assert sample(text, 'archivist_http_request_duration_seconds_count{method="POST",route="/v1/query"}') == 2
    assert sample(text, 'archivist_http_requests_total{method="GET",route="/v1/documents/{document_id}",'
                        'status="404"}') == 1  # fmt: skip
    assert sample(text, "archivist_ttft_seconds_count") == 1  # the second answer came from the cache
    assert sample(text, "archivist_generation_tokens_per_second_count") == 1
    assert sample(text, "archivist_generation_queue_seconds_count") == 1
    finished = [line for line in text.splitlines() if line.startswith("archivist_generations_total{")]
    assert len(finished) == 1 and finished[0].endswith(" 1.0") and "cancelled" not in finished[0]
    assert sample(text, "archivist_completion_tokens_total") > 0
    assert sample(text, "archivist_retrieve_seconds_count") == 1
    assert (
        sample(text, "archivist_generation_running") == 0
        and sample(text, "archivist_generation_waiting") == 0
    )
    assert sample(text, "archivist_generation_slots") == 4  # the engine's max_concurrency
    assert sample(text, "archivist_engine_kv_cache_usage") == 0.25
    assert sample(text, "archivist_engine_prefix_cache_hit_rate") == 0.5
    assert sample(text, "archivist_answer_cache_hit_rate") == 0.5
    assert sample(text, 'archivist_answer_cache_lookups_total{result="hit"}') == 1
    assert sample(text, 'archivist_ingest_files_total{status="added"}') == 2
    assert sample(text, "archivist_ingest_jobs_done") == 1


def test_request_ids_are_echoed_and_logged_as_json(observed: TestClient) -> None:
    client = observed
    given = client.get("/v1/collections", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = client.get("/v1/collections").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    unsafe = client.get("/v1/collections", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 80})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])
    assert client.get("/nowhere").headers["x-request-id"]

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("archivist.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        client.get("/v1/documents/777", headers={"X-Request-ID": "trace-43"})
    finally:
        access.removeHandler(handler)
    [line] = lines.getvalue().splitlines()
    record = json.loads(line)
    assert record["request_id"] == "trace-43" and record["message"] == "request"
    assert record["route"] == "/v1/documents/{document_id}" and record["path"] == "/v1/documents/777"
    assert record["status"] == 404 and record["method"] == "GET" and record["duration_ms"] > 0
    assert record["level"] == "info" and record["ts"].endswith("+00:00")
