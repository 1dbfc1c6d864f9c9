"""Fixtures for the service: an API client over real models and a fresh data dir."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.services import Services
from app.settings import Settings, get_settings
from retriever.store import KnowledgeBase
from tests.app.corpus import Corpus, no_model_settings, upload_corpus, wait_for_llm
from tests.app.live import free_port


@pytest.fixture
def services(settings: Settings, kb: KnowledgeBase, generator) -> Services:  # type: ignore[no-untyped-def]
    return Services(settings, kb=kb, generator=generator)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as test_client:
        yield test_client


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data dir for commands that read their settings from the environment (the CLI)."""
    monkeypatch.setenv("ARCHIVIST_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


@pytest.fixture
def corpus(tmp_path: Path, kb: KnowledgeBase) -> Iterator[Corpus]:
    """The API, started, over three documents; its language model failed to load."""
    services = Services(no_model_settings(tmp_path), kb=kb)
    with TestClient(create_app(services)) as client:
        wait_for_llm(services)
        yield Corpus(client, services, upload_corpus(client))


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `redis-server` of this test's own on a free port, which the test may kill."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed; skipping the test of a Redis that goes away")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.05)
    yield url, server
    server.kill()
    server.wait()
