"""The scale layout on loopback, every part a real process: 2 API replicas (`archivist serve`) on this
machine's PostgreSQL and Redis, 2 ingest workers (`archivist worker`) on its RabbitMQ, and 1 engine server
(`archivist engine serve`) that both replicas call.

Upload through replica 1 and follow the job through replica 2; search and answer through 2; delete through 2
and never see it again through 1; one rate limit for a key across both; a worker killed mid-job and its job
finished by the other with every document once; the engine stopped, 503 from both; started again, answers.
Skipped, saying which, where PostgreSQL, Redis or RabbitMQ is absent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.app.live import free_port
from tests.app.test_job_workers import TOPICS, notes
from tests.conftest import POSTGRES_URL, _postgres_available, _reset_postgres

ADMIN_KEY = "scale-test-admin-3e8b1f0c"
ENGINE_KEY = "scale-test-engine-9a7d2c"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OWLS = b"# Owls\n\nOwls hunt at night. An owl can turn its head 270 degrees."


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@dataclass
class Layout:
    root: Path
    env: dict[str, str]
    engine_port: int
    replicas: list[str]
    processes: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str, *command: str, **settings: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "app.cli", *command], env={**self.env, **settings},
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_until(self, ready: Any, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} stopped:\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
            time.sleep(0.2)

    def start_engine(self) -> None:
        # The engine runs the model itself, the default one with its RAG adapter.
        self.start(
            "engine", "engine", "serve", "--port", str(self.engine_port), ARCHIVIST_LLM_BACKEND="engine"
        )
        self.wait_until(
            lambda: _answers(f"http://127.0.0.1:{self.engine_port}/healthz"), "the engine's start"
        )


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    if reason := _postgres_available():
        pytest.skip(reason)
    for port, name in ((6379, "Redis"), (5672, "RabbitMQ")):
        if not _reachable(port):
            pytest.skip(f"no {name} on 127.0.0.1:{port}; skipping the scale test")
    _reset_postgres()
    prefix = f"archivist-scale-{uuid.uuid4().hex[:10]}"
    engine_port = free_port()
    env = {
        **os.environ,
        "ARCHIVIST_DATA_DIR": str(tmp_path / "shared-volume"),
        "ARCHIVIST_DATABASE_URL": POSTGRES_URL,
        "ARCHIVIST_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ARCHIVIST_REDIS_PREFIX": prefix,
        "ARCHIVIST_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        "ARCHIVIST_BROKER_QUEUE": prefix,
        "ARCHIVIST_LLM_BACKEND": "openai",
        "ARCHIVIST_LLM_URL": f"http://127.0.0.1:{engine_port}",
        "ARCHIVIST_LLM_API_KEY": ENGINE_KEY,
        "ARCHIVIST_LLM_ENFORCE_EAGER": "true",
        "ARCHIVIST_REQUIRE_AUTH": "true",
        "ARCHIVIST_ADMIN_KEY": ADMIN_KEY,
        "ARCHIVIST_RATE_LIMIT_PER_MINUTE": "12",
        "ARCHIVIST_LOG_FORMAT": "text",
    }
    ports = [free_port(), free_port()]
    found = Layout(tmp_path, env, engine_port, [f"http://127.0.0.1:{port}" for port in ports], {})
    try:
        found.start_engine()
        for n, port in enumerate(ports, 1):
            found.start(f"api-{n}", "serve", "--port", str(port))
        for n in (1, 2):
            found.start(f"worker-{n}", "worker")
        found.wait_until(
            lambda: all(_answers(f"{url}/readyz") for url in found.replicas), "the replicas' start"
        )
        found.wait_until(
            lambda: all(" ready." in found.log(f"worker-{n}") for n in (1, 2)), "the workers' start"
        )
        yield found
    finally:
        for process in found.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in found.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        _reset_postgres()


def finished(url: str, job_id: str, headers: dict[str, str], timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json())["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return dict(job)


def test_two_replicas_two_workers_and_an_engine_act_as_one_service(layout: Layout) -> None:
    first, second = layout.replicas

    # Upload through replica 1, follow the job through replica 2, search and answer through 2.
    uploads = [*notes(6), ("files", ("owls.md", OWLS))]
    submitted = httpx.post(f"{first}/v1/documents", files=uploads, data={"collection": "zoo"}, headers=ADMIN)
    assert submitted.status_code == 202, submitted.text
    done = finished(second, submitted.json()["id"], ADMIN)
    assert done["state"] == "done" and done["files_done"] == 7, done
    owl = {"question": "How far can an owl turn its head?", "collection": "zoo"}
    found = httpx.post(f"{second}/v1/search", json=owl, headers=ADMIN, timeout=60).json()["results"]
    owls = found[0]["document_id"]
    assert found[0]["title"] == "Owls"
    question = {**owl, "max_tokens": 16}
    answered = httpx.post(f"{second}/v1/query", json=question, headers=ADMIN, timeout=120)
    assert answered.status_code == 200 and answered.json()["sources"][0]["document_id"] == owls, answered.text

    # Delete through replica 2: replica 1 never returns it again.
    assert httpx.delete(f"{second}/v1/documents/{owls}", headers=ADMIN).status_code == 200
    again = httpx.post(f"{first}/v1/search", json=owl, headers=ADMIN, timeout=60).json()["results"]
    assert owls not in {result["document_id"] for result in again}

    # One rate limit for a key across both replicas: 12 a minute between them.
    created = httpx.post(f"{first}/v1/keys", json={"name": "reader", "read": ["zoo"]}, headers=ADMIN)
    reader = {"Authorization": f"Bearer {created.json()['key']}"}
    statuses = [
        httpx.get(f"{layout.replicas[n % 2]}/v1/collections", headers=reader).status_code for n in range(14)
    ]
    assert statuses == [200] * 12 + [429] * 2

    # A worker killed mid-job: the other finishes it, every document stored once.
    count = 120
    big = httpx.post(f"{first}/v1/documents", files=notes(count), data={"collection": "bulk"}, headers=ADMIN)
    job_id = big.json()["id"]
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{second}/v1/jobs/{job_id}", headers=ADMIN).json())["files_done"] == 0:
        assert time.monotonic() < deadline and job["state"] != "failed", job
        time.sleep(0.02)
    assert job["files_done"] < count, "the job ended before a worker could be killed"
    pids = {name: p.pid for name, p in layout.processes.items() if name.startswith("worker")}
    runner = _runner(job_id)
    [victim] = [name for name, pid in pids.items() if runner.endswith(f"+{pid}")]
    layout.processes[victim].kill()
    layout.processes[victim].wait()
    layout.processes.pop(victim)
    bulk = finished(first, job_id, ADMIN)
    assert bulk["state"] == "done" and bulk["files_done"] == count, bulk
    listed = httpx.get(f"{second}/v1/documents", params={"collection": "bulk"}, headers=ADMIN).json()[
        "documents"
    ]
    assert sorted(d["source_path"] for d in listed) == [
        f"upload://bulk/notes/{n:03d}.md" for n in range(count)
    ]
    for replica in (first, second):
        probe = {"question": "Observers wrote w57x3", "collection": "bulk", "mode": "lexical", "top_k": 1}
        [hit] = httpx.post(f"{replica}/v1/search", json=probe, headers=ADMIN, timeout=60).json()["results"]
        assert hit["title"] == f"Note 57 on {TOPICS[57 % len(TOPICS)]}"

    # The engine stopped: 503 from both replicas, naming it; started again: answers.
    engine = layout.processes.pop("engine")
    engine.send_signal(signal.SIGTERM)
    engine.wait(timeout=30)
    question = {**question, "collection": "bulk", "question": "What did observers write in survey 57?"}
    for replica in (first, second):
        refused = httpx.post(f"{replica}/v1/query", json=question, headers=ADMIN, timeout=60)
        assert refused.status_code == 503 and "no LLM server answered" in refused.json()["detail"], (
            refused.text
        )
        assert httpx.get(f"{replica}/readyz").status_code == 503
    layout.start_engine()
    for replica in (first, second):
        layout.wait_until(
            lambda replica=replica: _answers(f"{replica}/readyz"), "readiness after the restart"
        )
        back = httpx.post(f"{replica}/v1/query", json=question, headers=ADMIN, timeout=120)
        assert back.status_code == 200 and back.json()["answer"], back.text


def _runner(job_id: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            query = text("SELECT runner FROM ingest_jobs WHERE id = :id")
            return str(connection.execute(query, {"id": job_id}).scalar_one())
    finally:
        engine.dispose()
