"""Limits: per-key rate limit, failed authentications per client address, the bounded generation queue
(429 + Retry-After), body size limits and generation deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.ops.limits import GenerationGate, RateLimiter, TooBusyError
from app.rag.generation import GenerationRun, GenerationTimeoutError
from app.services import Services
from llm.base import ChatMessage, SamplingParams
from retriever.store import KnowledgeBase
from tests.app.live import serve
from tests.app.state import snapshot
from tests.app.test_streaming import OWLS, read_events
from tests.conftest import make_settings

QUESTION = "How far can an owl turn its head?"
ADMIN_KEY = "limits-test-admin-4f9c2e71"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_rate_limiter_is_a_token_bucket_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(TooBusyError) as refused:
        limiter.check("a")
    assert refused.value.retry_after == 30 and refused.value.headers == {"Retry-After": "30"}
    limiter.check("b")  # another key has its own bucket
    now[0] = 30.0
    limiter.check("a")  # half a minute refills one request
    with pytest.raises(TooBusyError):
        limiter.check("a")
    now[0] = 90.0
    limiter.peek("a")  # a full bucket again: looking takes nothing from it
    limiter.peek("a")
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(TooBusyError):
        limiter.peek("a")
    unlimited = RateLimiter(per_minute=0)
    for _ in range(1000):
        unlimited.check("a")


def test_gate_runs_slots_queues_in_order_and_turns_away_the_rest() -> None:
    gate = GenerationGate(slots=1, max_waiting=2)
    first, second, third = gate.admit(), gate.admit(), gate.admit()
    assert (gate.running, gate.waiting) == (1, 2)
    with pytest.raises(TooBusyError) as refused:
        gate.admit()
    assert refused.value.retry_after >= 1
    never = threading.Event()
    assert first.wait(never, time.monotonic() + 1)
    assert not second.wait(never, time.monotonic() + 0.1)  # still queued behind the first
    first.release()
    assert second.wait(never, time.monotonic() + 1) and not third.granted.is_set()
    cancelled = threading.Event()
    cancelled.set()
    assert not third.wait(cancelled, time.monotonic() + 10)
    third.release()  # gave up while waiting: leaves the queue
    second.release()
    assert (gate.running, gate.waiting) == (0, 0)


def test_no_slot_before_the_deadline_is_a_timeout_error(generator) -> None:  # type: ignore[no-untyped-def]
    gate = GenerationGate(slots=1, max_waiting=1)
    holder = gate.admit()
    run: GenerationRun[str] = GenerationRun(
        generator,
        [ChatMessage("user", "hi")],
        SamplingParams(max_new_tokens=1),
        gate.admit(),
        0.3,
        lambda o: o.text,
    )
    with pytest.raises(GenerationTimeoutError):
        run.result()
    holder.release()
    assert (gate.running, gate.waiting) == (0, 0)


@pytest.fixture
def limited(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[tuple[TestClient, Services, str]]:  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "data", max_new_tokens=4, require_auth=True, admin_key=ADMIN_KEY, rate_limit_per_minute=3,
        max_body_bytes=2048, max_upload_request_bytes=4096, auth_failures_per_minute=20,
    )  # fmt: skip
    services = Services(settings, kb=kb, generator=generator)
    with TestClient(create_app(services)) as client:
        _, key = services.keys.create("limited", write=["default"])
        yield client, services, key


def test_a_key_over_its_rate_gets_429_with_retry_after(limited: tuple[TestClient, Services, str]) -> None:
    client, _, key = limited
    headers = {"Authorization": f"Bearer {key}"}
    assert [client.get("/v1/collections", headers=headers).status_code for _ in range(3)] == [200] * 3
    refused = client.get("/v1/collections", headers=headers)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "rate limit" in refused.json()["detail"]
    assert client.get("/v1/collections", headers=ADMIN).status_code == 200
    metrics = client.get("/metrics", headers=ADMIN).text
    assert 'archivist_rejected_requests_total{reason="rate_limit"} 1.0' in metrics


def test_an_address_guessing_keys_gets_429_and_its_guesses_are_not_checked(
    limited: tuple[TestClient, Services, str],
) -> None:
    """150 wrong keys from one address: the first 20 (the limit a minute) get 401, the rest 429 without
    the key being looked at, so even the right key gets 429 from there until the bucket refills."""
    client, services, key = limited
    per_minute = services.settings.auth_failures_per_minute
    # Time stands still, so that no failure is refilled while the 150 requests are sent.
    services.auth_failures = RateLimiter(per_minute, clock=lambda: 0.0, what="failed authentications")
    statuses = [
        client.get("/v1/collections", headers={"Authorization": f"Bearer ak_guess{n}"}).status_code
        for n in range(150)
    ]
    assert per_minute == 20 and statuses == [401] * 20 + [429] * 130
    refused = client.get("/v1/collections", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "failed authentications" in refused.json()["detail"]
    services.auth_failures.per_minute = 0  # the limit lifted: the same address gets in with a right key
    assert client.get("/v1/collections", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    metrics = client.get("/metrics", headers=ADMIN).text
    assert 'archivist_rejected_requests_total{reason="auth_failures"} 131.0' in metrics


def test_bodies_over_the_limits_get_413_and_store_nothing(limited: tuple[TestClient, Services, str]) -> None:
    client, services, _ = limited
    assert (
        client.post("/v1/documents", files={"file": ("a.txt", b"Small.")}, headers=ADMIN).status_code == 201
    )
    before = snapshot(services)
    huge_json = client.post("/v1/query", json={"question": "x" * 3000}, headers=ADMIN)
    assert huge_json.status_code == 413 and huge_json.json()["detail"]
    chunked = client.post("/v1/query", content=iter([b'{"question": "', b"y" * 3000, b'"}']),
                          headers={**ADMIN, "content-type": "application/json"})  # fmt: skip
    assert chunked.status_code == 413 and chunked.json()["detail"]
    upload = client.post("/v1/documents", files={"file": ("big.txt", b"z " * 3000)}, headers=ADMIN)
    assert upload.status_code == 413 and upload.json()["detail"]
    assert snapshot(services) == before


@pytest.fixture
def one_slot(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[tuple[str, Services]]:  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "data", max_new_tokens=160, generation_slots=1, max_queued_generations=0
    )
    services = Services(settings, kb=kb, generator=generator)
    with serve(create_app(services)) as url:
        assert httpx.post(f"{url}/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
        yield url, services


def test_a_full_generation_queue_answers_429_with_retry_after(one_slot: tuple[str, Services]) -> None:
    url, services = one_slot
    body = {"question": QUESTION, "stream": True, "max_tokens": 160}
    with httpx.stream("POST", f"{url}/v1/query", json=body, timeout=120) as response:
        events = read_events(response.iter_lines())
        assert [next(events)[0], next(events)[0]] == ["sources", "delta"]  # the slot is taken
        refused = httpx.post(f"{url}/v1/query", json={"question": "Do owls hunt at night?"}, timeout=60)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1 and "busy" in refused.json()["detail"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'archivist_rejected_requests_total{reason="queue_full"} 1.0' in metrics
    deadline = time.monotonic() + 30
    while services.gate().running:
        assert time.monotonic() < deadline, "the slot was not freed after the client left"
        time.sleep(0.1)
    answered = httpx.post(f"{url}/v1/query", json={"question": "Do owls hunt at night?", "max_tokens": 4},
                          timeout=120)  # fmt: skip
    assert answered.status_code == 200


def test_a_generation_past_its_deadline_stops_with_finish_reason_timeout(
    tmp_path: Path,
    kb: KnowledgeBase,
    generator,  # type: ignore[no-untyped-def]
) -> None:
    # Free text: asked to go on at length, the model writes past the deadline, where a copied answer may end
    # with its span before it.
    settings = make_settings(
        tmp_path / "data", max_new_tokens=400, generation_timeout_s=1.0, answer_copy_spans=False
    )
    with TestClient(create_app(Services(settings, kb=kb, generator=generator))) as client:
        client.post("/v1/documents", files={"file": ("owls.md", OWLS)})
        started = time.monotonic()
        reply = client.post("/v1/query", json={"question": "Tell me all about owls, at length."})
        assert reply.status_code == 200, reply.text
        assert reply.json()["finish_reason"] == "timeout"
        assert reply.json()["usage"]["completion_tokens"] < 400
        assert time.monotonic() - started < 30


def test_the_probes_answer_while_every_worker_thread_is_held(
    tmp_path: Path, kb: KnowledgeBase, generator
) -> None:  # type: ignore[no-untyped-def]
    """One worker thread, held by a query waiting for the generation slot the test holds: /healthz and
    /readyz still answer at once, while a sync route waits for the thread."""
    settings = make_settings(tmp_path / "data", max_new_tokens=4, api_threads=1, generation_slots=1)
    services = Services(settings, kb=kb, generator=generator)
    with serve(create_app(services)) as url:
        assert httpx.post(f"{url}/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
        holder = services.gate().admit()
        replies: list[httpx.Response] = []
        query = threading.Thread(
            target=lambda: replies.append(
                httpx.post(f"{url}/v1/query", json={"question": QUESTION}, timeout=120)
            )
        )
        query.start()
        deadline = time.monotonic() + 30
        while services.gate().waiting == 0:
            assert time.monotonic() < deadline, "the query never reached the generation queue"
            time.sleep(0.02)
        started = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
        with pytest.raises(httpx.ReadTimeout):  # the only thread is the waiting query's
            httpx.get(f"{url}/v1/collections", timeout=1)
        holder.release()
        query.join(timeout=120)
        assert replies and replies[0].status_code == 200, replies
