"""Rate limits and the answer cache shared by API replicas through Redis (ARCHIVIST_REDIS_URL): two
replicas on one database and one Redis count one limit and serve each other's cached answers; Redis down at
start is one line and exit 2, down later a 503 for the rate-limited routes while the rest keep working.

The replicas run on the machine's Redis (127.0.0.1:6379, each test under its own key prefix); the test of a
Redis that goes away starts and kills a private `redis-server`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.ops.shared_state import (
    SharedAnswerCache,
    SharedStateError,
    answer_from_json,
    answer_to_json,
    connect,
)
from app.rag.cache import CacheKey
from app.rag.pipeline import Answer, Source
from app.services import Services
from app.settings import Settings
from retriever.records import SearchHit
from retriever.store import KnowledgeBase
from tests.app.live import free_port
from tests.app.test_streaming import LAVA, OWLS
from tests.conftest import make_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "shared-state-admin-8d1e5b3a"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
QUESTION = {"question": "How far can an owl turn its head?", "max_tokens": 6}


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis, its keys deleted afterwards."""
    try:
        client = connect(REDIS_URL)
    except SharedStateError as error:
        pytest.skip(f"no Redis server on 127.0.0.1:6379 ({error}); skipping the shared-state tests")
    name = f"archivist-test-{uuid.uuid4().hex[:12]}"
    yield name
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)


def replicas(
    stack: ExitStack, settings: Settings, kb: KnowledgeBase, generator, count: int = 2
) -> list[TestClient]:  # type: ignore[no-untyped-def]
    """`count` API replicas on one database, one index and one Redis (each its own Services)."""
    return [
        stack.enter_context(TestClient(create_app(Services(settings, kb=kb, generator=generator))))
        for _ in range(count)
    ]


def test_an_answer_survives_the_trip_through_json() -> None:
    hit = SearchHit(7, 3, "Owls", "/docs/owls.md", 0, 10, 90, "Owls turn their heads 270 degrees.", 0.8, 0.71,
                    page=2, heading_path="Birds > Owls")  # fmt: skip
    answer = Answer("270 degrees [1]", [Source(1, hit)], [1], timings={"generate_ms": 12.5},
                    highlights={1: (0, 34)}, relevance=0.71, prompt_tokens=40, completion_tokens=5,
                    question="How far can an owl turn its head?")  # fmt: skip
    assert answer_from_json(answer_to_json(answer)) == answer


def test_a_newer_version_drops_the_older_and_an_older_one_is_never_put_back(prefix: str) -> None:
    client = connect(REDIS_URL)
    cache = SharedAnswerCache(client, prefix, max_entries=2, ttl_s=60)
    old, new = CacheKey("c", 1, "q", "s"), CacheKey("c", 2, "q", "s")
    cache.put(old, Answer("old", [], []))
    assert cache.get(old) == Answer("old", [], [])
    cache.put(new, Answer("new", [], []))
    assert cache.get(old) is None and cache.get(new) == Answer("new", [], [])
    cache.put(old, Answer("late", [], []))  # a replica still on version 1 finishes after version 2 was stored
    assert cache.get(old) is None and len(cache) == 1
    for question in ("q2", "q3", "q4"):
        cache.put(CacheKey("c", 2, question, "s"), Answer(question, [], []))
    assert len(cache) == 2  # bounded per collection
    assert cache.get(CacheKey("c", 2, "q4", "s")) is not None  # the newest answer is never the one evicted
    assert 0 < client.ttl(f"{prefix}:answers:c:v2") <= 60
    assert (cache.hits, cache.misses) == (3, 2)


def test_two_replicas_share_one_rate_limit_per_key(
    tmp_path: Path, kb: KnowledgeBase, generator, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", require_auth=True, admin_key=ADMIN_KEY,
                             rate_limit_per_minute=3, redis_url=REDIS_URL, redis_prefix=prefix)  # fmt: skip
    with ExitStack() as stack:
        first, second = replicas(stack, settings, kb, generator)
        created = first.post("/v1/keys", json={"name": "reader", "read": ["default"]}, headers=ADMIN)
        assert created.status_code == 201, created.text
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        statuses = [
            replica.get("/v1/collections", headers=headers).status_code for replica in (first, first, second)
        ]
        assert statuses == [200, 200, 200]
        for replica in (second, first):  # three used up between them: each replica refuses the fourth
            refused = replica.get("/v1/collections", headers=headers)
            assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
            assert "rate limit of 3 requests per minute" in refused.json()["detail"]
        assert second.get("/v1/collections", headers=ADMIN).status_code == 200  # the admin key has no limit


def test_failed_authentications_are_counted_across_replicas(
    tmp_path: Path, kb: KnowledgeBase, generator, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", require_auth=True, admin_key=ADMIN_KEY,
                             auth_failures_per_minute=4, redis_url=REDIS_URL,
                             redis_prefix=prefix)  # fmt: skip
    with ExitStack() as stack:
        first, second = replicas(stack, settings, kb, generator)
        guesses = [
            replica.get("/v1/collections", headers={"Authorization": f"Bearer ak_guess{n}"}).status_code
            for n, replica in enumerate((first, second, first, second, first, second))
        ]
        assert guesses == [401, 401, 401, 401, 429, 429]
        refused = second.get("/v1/collections", headers=ADMIN)  # not even the right key is looked at now
        assert refused.status_code == 429 and "failed authentications" in refused.json()["detail"]


def test_an_answer_cached_by_one_replica_is_served_by_the_other(
    tmp_path: Path, kb: KnowledgeBase, generator, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", redis_url=REDIS_URL, redis_prefix=prefix)
    with ExitStack() as stack:
        first, second = replicas(stack, settings, kb, generator)
        assert first.post("/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
        generated = first.post("/v1/query", json=QUESTION)
        assert generated.status_code == 200 and generated.json()["cached"] is False
        served = second.post("/v1/query", json={**QUESTION, "question": "how far can an OWL turn its head"})
        assert served.status_code == 200 and served.json()["cached"] is True
        assert served.json()["answer"] == generated.json()["answer"]
        assert served.json()["sources"] == generated.json()["sources"]
        assert second.post("/v1/documents", files={"file": ("lava.md", LAVA)}).status_code == 201
        changed = first.post("/v1/query", json=QUESTION)  # the collection changed through the other replica
        assert changed.status_code == 200 and changed.json()["cached"] is False
        metrics = second.get("/metrics").text
        assert "archivist_answer_cache_entries 1.0" in metrics


def test_redis_down_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"redis://someone:hunter2@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "ARCHIVIST_DATA_DIR": str(tmp_path / "data"), "ARCHIVIST_REDIS_URL": url}
    started = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    output = (started.stdout + started.stderr).strip()
    assert started.returncode == 2, output
    assert (
        output.startswith("error: cannot reach Redis at redis://127.0.0.1:")
        and "ARCHIVIST_REDIS_URL" in output
    )
    assert "hunter2" not in output and "Traceback" not in output


def test_redis_down_later_is_503_for_limited_routes_and_the_rest_keeps_working(
    tmp_path: Path,
    kb: KnowledgeBase,
    generator,
    private_redis: tuple[str, subprocess.Popen[bytes]],  # type: ignore[no-untyped-def]
) -> None:
    url, server = private_redis
    settings = make_settings(tmp_path / "data", require_auth=True, admin_key=ADMIN_KEY, redis_url=url)
    with TestClient(create_app(Services(settings, kb=kb, generator=generator))) as client:
        created = client.post("/v1/keys", json={"name": "writer", "write": ["default"]}, headers=ADMIN)
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        assert client.get("/v1/collections", headers=headers).status_code == 200
        server.kill()
        server.wait()
        refused = client.get("/v1/collections", headers=headers)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "Redis" in refused.json()["detail"] and "unreachable" in refused.json()["detail"]
        wrong = client.get("/v1/collections", headers={"Authorization": "Bearer ak_wrong"})
        assert wrong.status_code == 503  # its failure cannot be counted
        # A right key gets in while failures cannot be counted, and the admin key has no rate limit: its
        # upload goes on, and its query misses the cache that is gone and is answered.
        assert (
            client.post("/v1/documents", files={"file": ("owls.md", OWLS)}, headers=ADMIN).status_code == 201
        )
        answered = client.post("/v1/query", json=QUESTION, headers=ADMIN)
        assert answered.status_code == 200 and answered.json()["cached"] is False
        assert client.get("/healthz").status_code == 200
