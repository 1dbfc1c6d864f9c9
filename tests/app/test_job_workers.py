"""Ingest jobs as SQL rows, run by a thread of the API or by `archivist worker` processes over a broker: any
replica reads a job, a restart keeps its record and resumes its work, a killed worker's job finishes on
another worker with no document missing or doubled, and a broker that is down is a clear error.

The workers are real `archivist worker` processes on the machine's RabbitMQ (127.0.0.1:5672, guest/guest),
each test on a queue of its own; the test of a broker that goes away uses a private `redis-server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from app.api.app import create_app
from app.models import IngestJob
from app.ops.jobs import JobStore, job_folder
from app.services import Services
from app.settings import Settings
from retriever.models import Chunk, Collection, Document
from retriever.store import KnowledgeBase
from tests.app.live import free_port
from tests.app.test_jobs import finished

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
TOPICS = ("harbours", "glaciers", "volcanoes", "orchards", "lighthouses", "comets", "beehives", "canals")


def notes(count: int) -> list[tuple[str, tuple[str, bytes]]]:
    """`count` small, distinct documents (none a near-duplicate of another), as multipart `files`."""
    files = []
    for n in range(count):
        topic = TOPICS[n % len(TOPICS)]
        text = (
            f"# Note {n} on {topic}\n\nRecord {n * 7919 % 10007} describes {topic} seen in survey {n}. "
            f"Its measurements were {n * 13 % 97} units on day {n % 31 + 1}, logged by team {n % 11}. "
            f"Observers wrote {' '.join(f'w{n}x{k}' for k in range(12))}."
        )
        files.append(("files", (f"notes/{n:03d}.md", text.encode())))
    return files


def stored(services: Services, collection: str) -> tuple[list[str], set[int]]:
    """The collection's document sources and chunk ids, as SQL holds them."""
    with services.kb().db.session() as session:
        sources = session.scalars(
            select(Document.source_path).join(Collection).where(Collection.name == collection)
        ).all()
        chunks = session.scalars(
            select(Chunk.id).join(Document).join(Collection).where(Collection.name == collection)
        ).all()
    return sorted(sources), set(chunks)


def indexed(kb: KnowledgeBase, collection: str) -> set[int]:
    """The chunk ids in a replica's vector index of the collection, once synced with SQL."""
    with kb.db.session() as session:
        found = session.scalars(select(Collection).where(Collection.name == collection)).one()
        collection_id, version = found.id, found.version
    return {int(chunk_id) for chunk_id in kb.synced_index(collection_id, version).ids()}


def test_a_job_is_read_through_any_replica_and_its_record_outlives_a_restart(
    settings: Settings,
    kb: KnowledgeBase,
    generator,  # type: ignore[no-untyped-def]
) -> None:
    with TestClient(create_app(Services(settings, kb=kb, generator=generator))) as first:
        submitted = first.post("/v1/documents", files=notes(3), data={"collection": "shared"})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        with TestClient(create_app(Services(settings, kb=kb, generator=generator))) as second:
            done = finished(second, job_id)  # polled through the replica that did not take the upload
            assert done["state"] == "done" and done["files_done"] == 3
    with TestClient(create_app(Services(settings, kb=kb, generator=generator))) as restarted:
        again = restarted.get(f"/v1/jobs/{job_id}")
        assert again.status_code == 200 and again.json()["results"] == done["results"]
        assert [job["id"] for job in restarted.get("/v1/jobs").json()["jobs"]] == [job_id]


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(ended.stdout)


def test_a_starting_process_resumes_the_jobs_a_dead_process_left(services: Services) -> None:
    """A job that a process of this host was running when it died, one file ingested: the next process to
    start ingests the rest from the staged copies, and the first file keeps its one result."""
    store = JobStore(services.db)
    job_id = uuid.uuid4().hex
    names = ["first.md", "second.md", "third.md"]
    for position, name in enumerate(names):
        staged = job_folder(services.settings.upload_dir, job_id) / str(position) / name
        staged.parent.mkdir(parents=True)
        staged.write_text(f"# {name}\n\nThe {name.split('.')[0]} report of the lighthouse keeper, in full.")
    store.create(job_id, "resumed", names, f"{socket.gethostname()}+{dead_pid()}")
    store.start(job_id)
    services.ingestor().ingest_file(
        job_folder(services.settings.upload_dir, job_id) / "0" / "first.md",
        "resumed",
        source_path="upload://resumed/first.md",
    )  # ingested, and the process died before recording it
    with TestClient(create_app(services)) as client:
        done = finished(client, job_id)
    assert done["state"] == "done" and done["files_done"] == 3
    assert [result["status"] for result in done["results"]] == ["unchanged", "added", "added"]
    assert stored(services, "resumed")[0] == [f"upload://resumed/{name}" for name in names]
    assert not job_folder(services.settings.upload_dir, job_id).exists()


@pytest.fixture
def broker_queue() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672; skipping the tests of ingest workers")
    return f"archivist-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def workers(
    settings: Settings, broker_queue: str
) -> Iterator[tuple[Settings, list[subprocess.Popen[bytes]]]]:
    """Two `archivist worker` processes on the test's data dir and queue, once both are listening."""
    broker_settings = settings.model_copy(
        update={"broker_url": SecretStr(RABBITMQ_URL), "broker_queue": broker_queue}
    )
    env = {
        **os.environ,
        "ARCHIVIST_DATA_DIR": str(settings.data_dir),
        "ARCHIVIST_BROKER_URL": RABBITMQ_URL,
        "ARCHIVIST_BROKER_QUEUE": broker_queue,
        "ARCHIVIST_LOG_FORMAT": "text",
        # small groups, each its own transaction: a job's files finish a few at a time, so a test can stop a
        # worker mid-job (with the default of 256 chunks, 120 one-chunk notes end in one burst)
        "ARCHIVIST_INGEST_BATCH_CHUNKS": "4",
    }
    logs = [settings.data_dir.parent / f"worker-{n}.log" for n in range(2)]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for log in logs
    ]
    deadline = time.monotonic() + 180
    while not all(" ready." in log.read_text(errors="replace") for log in logs):
        assert all(p.poll() is None for p in processes), [log.read_text(errors="replace") for log in logs]
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.2)
    yield broker_settings, processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def runner_of(services: Services, job_id: str) -> str:
    """Who runs the job: `broker:<host>+<pid>` of the worker that took it last."""
    with services.db.session() as session:
        return str(session.scalars(select(IngestJob.runner).where(IngestJob.id == job_id)).one())


def test_a_killed_workers_job_finishes_on_another_worker_with_nothing_lost_or_doubled(
    kb: KnowledgeBase,
    embedder: Any,
    generator,  # type: ignore[no-untyped-def]
    workers: tuple[Settings, list[subprocess.Popen[bytes]]],
) -> None:
    settings, processes = workers
    count = 120
    services = Services(settings, kb=kb, generator=generator)
    with TestClient(create_app(services)) as client:
        submitted = client.post("/v1/documents", files=notes(count), data={"collection": "w"})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["files_done"] == 0:
            assert time.monotonic() < deadline and job["state"] != "failed", job
            time.sleep(0.02)
        runner = runner_of(services, job_id)
        assert job["state"] == "running" and job["files_done"] < count, job
        killed = next(p for p in processes if runner.endswith(f"+{p.pid}"))
        killed.kill()  # SIGKILL mid-job: no chance to finish, acknowledge or clean up
        killed.wait()
        done = finished(client, job_id, timeout=240)
        assert done["state"] == "done" and done["files_done"] == count, done
        survivor = next(p for p in processes if p is not killed)
        assert runner_of(services, job_id).endswith(f"+{survivor.pid}")
        sources, chunks = stored(services, "w")
        assert sources == [f"upload://w/notes/{n:03d}.md" for n in range(count)]  # each once, none missing
        statuses = {result["status"] for result in done["results"]}
        assert statuses <= {"added", "unchanged"} and len(done["results"]) == count
        assert indexed(kb, "w") == chunks  # this replica's index
        other = KnowledgeBase(settings.retriever_config(), embedder)
        try:
            assert indexed(other, "w") == chunks  # and another replica's, built from SQL
        finally:
            other.close()
        assert not job_folder(settings.upload_dir, job_id).exists()


def test_a_broker_down_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"amqp://guest:secret-pass@127.0.0.1:{free_port()}//"
    env = {**os.environ, "ARCHIVIST_DATA_DIR": str(tmp_path / "data"), "ARCHIVIST_BROKER_URL": url}
    for command in (["serve", "--port", str(free_port())], ["worker"]):
        started = subprocess.run([sys.executable, "-m", "app.cli", *command], env=env, capture_output=True,
                                 text=True, timeout=120)  # fmt: skip
        output = (started.stdout + started.stderr).strip()
        assert started.returncode == 2, output
        assert output.startswith("error: cannot reach the broker at amqp://127.0.0.1:"), output
        assert "ARCHIVIST_BROKER_URL" in output and "secret-pass" not in output and "Traceback" not in output


def test_a_broker_gone_later_is_503_and_the_job_is_recorded_failed(
    settings: Settings,
    kb: KnowledgeBase,
    generator,  # type: ignore[no-untyped-def]
    private_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, server = private_redis
    broker_settings = settings.model_copy(update={"broker_url": SecretStr(url)})
    with TestClient(create_app(Services(broker_settings, kb=kb, generator=generator))) as client:
        server.kill()
        server.wait()
        refused = client.post("/v1/documents", files=notes(2), data={"collection": "gone"})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "could not be queued" in refused.json()["detail"]
        [job] = client.get("/v1/jobs").json()["jobs"]
        assert job["state"] == "failed" and "could not be handed to a worker" in job["error"]
        assert not any((broker_settings.upload_dir / ".jobs").iterdir())
        one = {"file": ("one.md", b"# One\n\nA single file needs no broker.")}
        single = client.post("/v1/documents", files=one, data={"collection": "gone"})
        assert single.status_code == 201, single.text
