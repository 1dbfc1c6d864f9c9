"""`POST /v1/query` with `stream: true` over real HTTP: event order and content, and a client that goes
away mid-answer cancelling its generation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from app.api.app import create_app
from app.services import Services
from app.settings import Settings
from retriever.store import KnowledgeBase
from tests.app.live import serve
from tests.conftest import make_settings

OWLS = b"# Owls\n\nOwls hunt at night. An owl can turn its head 270 degrees."
LAVA = b"# Volcanoes\n\nMount Etna is an active volcano on the island of Sicily in Italy."


def read_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:  # type: ignore[type-arg]
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))
            event = "message"


@pytest.fixture
def live(tmp_path, kb: KnowledgeBase, generator) -> Iterator[tuple[str, Services]]:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings(tmp_path / "data", max_new_tokens=160)
    services = Services(settings, kb=kb, generator=generator)
    with serve(create_app(services)) as url:
        for name, content in (("owls.md", OWLS), ("etna.md", LAVA)):
            response = httpx.post(f"{url}/v1/documents", files={"file": (name, content)}, timeout=60)
            assert response.status_code == 201, response.text
        yield url, services


def test_stream_sends_sources_then_deltas_then_done(live: tuple[str, Services]) -> None:
    url, _ = live
    body = {"question": "How far can an owl turn its head?", "stream": True, "max_tokens": 12, "top_k": 2}
    with httpx.stream("POST", f"{url}/v1/query", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(read_events(response.iter_lines()))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "sources" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) > 3, kinds
    sources = events[0][1]["sources"]
    assert [s["n"] for s in sources] == [1, 2] and sources[0]["title"] == "Owls"
    done = events[-1][1]
    streamed = "".join(data["text"] for kind, data in events if kind == "delta").strip()
    assert done["answer"] == streamed if done["grounded"] else done["answer"].startswith("The documents")
    assert set(done["cited"]) <= {1, 2}
    assert done["finish_reason"] in ("stop", "length")
    assert done["usage"]["prompt_tokens"] > 50 and 0 < done["usage"]["completion_tokens"] <= 12
    timings = done["timings"]
    assert timings["retrieve_ms"] > 0 and timings["ttft_ms"] > 0 and timings["tokens_per_s"] > 0
    assert timings["generate_ms"] >= timings["ttft_ms"]


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


def test_client_disconnect_cancels_the_generation(live: tuple[str, Services]) -> None:
    """Read the sources and the first piece of text, then hang up: the worker must stop generating long
    before the 160 tokens it was allowed, and free the slot."""
    url, services = live
    body = {"question": "Tell me everything about owls and volcanoes.", "stream": True, "max_tokens": 160}
    with httpx.stream("POST", f"{url}/v1/query", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert next(read_events(lines))[0] == "sources"
        assert next(read_events(lines))[0] == "delta"
        hung_up = time.monotonic()
    cancelled = 'archivist_generations_total{finish_reason="cancelled"}'
    while metric(url, cancelled) < 1:
        assert time.monotonic() - hung_up < 20, "the generation was not cancelled"
        time.sleep(0.1)
    assert services.gate().running == 0
    assert metric(url, "archivist_completion_tokens_total") < 100
    assert metric(url, 'archivist_generations_total{finish_reason="stop"}') == 0
