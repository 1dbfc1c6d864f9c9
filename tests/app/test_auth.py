"""API keys scoped to collections, checked through every route: a key for collection `alpha` can never
retrieve, list, change or delete anything of collection `beta`, nor use a conversation another key started;
no key, a wrong, revoked or expired key gets 401; rejected requests change nothing. The API's description,
its docs page and the metrics need a key too."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api.app import create_app
from app.models import ApiKey
from app.services import Services
from app.settings import Settings
from retriever.store import KnowledgeBase
from tests.app.state import snapshot
from tests.conftest import make_settings

ADMIN = "admin-secret-for-tests"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class World:
    client: TestClient
    services: Services
    alpha_doc: int
    beta_doc: int
    beta_conversation: str
    beta_job: str
    reader: dict[str, str]  # may read alpha
    writer: dict[str, str]  # may read and change alpha

    def snapshot(self) -> tuple[object, ...]:
        return snapshot(self.services)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def world(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[World]:  # type: ignore[no-untyped-def]
    # Over a hundred bad keys are sent below from one address: more than the failed-authentication limit.
    settings = make_settings(
        tmp_path / "data", max_new_tokens=4, require_auth=True, admin_key=ADMIN, auth_failures_per_minute=1000
    )
    services = Services(settings, kb=kb, generator=generator)
    with TestClient(create_app(services)) as client:
        docs = {}
        for collection, text in (
            ("alpha", b"Alpha fact: owls hunt at night."),
            ("beta", b"Beta secret: 12 May."),
        ):
            response = client.post(
                "/v1/documents", files={"file": (f"{collection}.txt", text)}, data={"collection": collection},
                headers=ADMIN_HEADERS,
            )  # fmt: skip
            assert response.status_code == 201, response.text
            docs[collection] = response.json()["document"]["id"]
        conversation = client.post("/v1/conversations", json={"collection": "beta"}, headers=ADMIN_HEADERS)
        job = client.post("/v1/documents", files=[("files", ("j.txt", b"Beta job file."))],
                          data={"collection": "beta"}, headers=ADMIN_HEADERS)  # fmt: skip
        assert job.status_code == 202, job.text
        while client.get(f"/v1/jobs/{job.json()['id']}", headers=ADMIN_HEADERS).json()["state"] != "done":
            time.sleep(0.05)  # a finished job changes nothing any more
        _, reader = services.keys.create("alpha reader", read=["alpha"])
        _, writer = services.keys.create("alpha writer", write=["alpha"])
        yield World(client, services, docs["alpha"], docs["beta"], conversation.json()["id"],
                    job.json()["id"], bearer(reader), bearer(writer))  # fmt: skip


def v1_routes(client: TestClient) -> set[tuple[str, str]]:
    paths = client.get("/openapi.json", headers=ADMIN_HEADERS).json()["paths"]
    return {
        (method.upper(), path)
        for path, methods in paths.items()
        if path.startswith("/v1")
        for method in methods
    }


def cross_collection_requests(w: World) -> dict[tuple[str, str], list[tuple[str, dict[str, object], int]]]:
    """For every /v1 route, requests of the alpha *writer* aimed at beta, with the status each must get."""
    ask_beta = {"question": "When?", "collection": "beta"}
    chat_beta = {"model": "archivist:beta", "messages": [{"role": "user", "content": "When?"}]}
    beta_file = {"files": {"file": ("x.txt", b"Injected into beta.")}, "data": {"collection": "beta"}}
    return {
        ("POST", "/v1/query"): [
            ("/v1/query", {"json": ask_beta}, 403),
            ("/v1/query", {"json": {"question": "When?", "conversation_id": w.beta_conversation}}, 404),
        ],
        ("POST", "/v1/search"): [("/v1/search", {"json": ask_beta}, 403)],
        ("POST", "/v1/chat/completions"): [("/v1/chat/completions", {"json": chat_beta}, 403)],
        ("GET", "/v1/documents"): [("/v1/documents", {"params": {"collection": "beta"}}, 403)],
        ("GET", "/v1/documents/{document_id}"): [(f"/v1/documents/{w.beta_doc}", {}, 404)],
        ("DELETE", "/v1/documents/{document_id}"): [(f"/v1/documents/{w.beta_doc}", {}, 404)],
        ("GET", "/v1/documents/{document_id}/text"): [(f"/v1/documents/{w.beta_doc}/text", {}, 404)],
        ("GET", "/v1/documents/{document_id}/file"): [(f"/v1/documents/{w.beta_doc}/file", {}, 404)],
        ("POST", "/v1/documents"): [
            ("/v1/documents", beta_file, 403),
            (
                "/v1/documents",
                {"files": [("files", ("x.txt", b"Into beta."))], "data": {"collection": "beta"}},
                403,
            ),
        ],
        ("GET", "/v1/jobs/{job_id}"): [(f"/v1/jobs/{w.beta_job}", {}, 404)],
        ("POST", "/v1/conversations"): [("/v1/conversations", {"json": {"collection": "beta"}}, 403)],
        ("GET", "/v1/conversations"): [("/v1/conversations", {"params": {"collection": "beta"}}, 403)],
        ("GET", "/v1/conversations/{conversation_id}"): [
            (f"/v1/conversations/{w.beta_conversation}", {}, 404)
        ],
        ("DELETE", "/v1/conversations/{conversation_id}"): [
            (f"/v1/conversations/{w.beta_conversation}", {}, 404)
        ],
        # Listings are checked for what they leave out, below; key management is the admin's alone.
        ("GET", "/v1/collections"): [],
        ("GET", "/v1/models"): [],
        ("GET", "/v1/jobs"): [],
        ("POST", "/v1/keys"): [("/v1/keys", {"json": {"name": "mine", "write": ["beta"]}}, 403)],
        ("GET", "/v1/keys"): [("/v1/keys", {}, 403)],
        ("DELETE", "/v1/keys/{key_id}"): [("/v1/keys/1", {}, 403)],
    }


def test_a_key_for_alpha_never_touches_beta(world: World) -> None:
    w, client = world, world.client
    cases = cross_collection_requests(w)
    assert set(cases) == v1_routes(client), "a /v1 route without an access test"
    before = w.snapshot()
    for (method, _), requests in cases.items():
        for path, kwargs, status in requests:
            response = client.request(method, path, headers=w.writer, **kwargs)  # type: ignore[arg-type]
            assert response.status_code == status, (method, path, response.text)
            assert "detail" in response.json()
    assert w.snapshot() == before

    collections = client.get("/v1/collections", headers=w.writer).json()["collections"]
    assert [c["name"] for c in collections] == ["alpha"]
    assert [m["id"] for m in client.get("/v1/models", headers=w.writer).json()["data"]] == ["archivist:alpha"]
    documents = client.get("/v1/documents", headers=w.writer).json()["documents"]
    assert [d["id"] for d in documents] == [w.alpha_doc]
    assert client.get("/v1/conversations", headers=w.writer).json()["conversations"] == []
    assert client.get("/v1/jobs", headers=w.writer).json()["jobs"] == []

    # The same key does what it may on alpha.
    assert client.get(f"/v1/documents/{w.alpha_doc}", headers=w.writer).status_code == 200
    mine = client.post("/v1/conversations", json={"collection": "alpha"}, headers=w.writer)
    assert mine.status_code == 201
    asked = client.post("/v1/query", json={"question": "When do owls hunt?", "collection": "alpha"},
                        headers=w.writer)  # fmt: skip
    assert asked.status_code == 200 and all(s["document_id"] == w.alpha_doc for s in asked.json()["sources"])
    assert client.delete(f"/v1/documents/{w.alpha_doc}", headers=w.writer).status_code == 200


def test_a_read_only_key_cannot_change_its_collection(world: World) -> None:
    w, client = world, world.client
    before = w.snapshot()
    upload = {"files": {"file": ("y.txt", b"More about owls.")}, "data": {"collection": "alpha"}}
    assert client.post("/v1/documents", headers=w.reader, **upload).status_code == 403  # type: ignore[arg-type]
    assert client.delete(f"/v1/documents/{w.alpha_doc}", headers=w.reader).status_code == 403
    assert w.snapshot() == before
    assert client.get("/v1/documents", headers=w.reader).status_code == 200


def test_missing_wrong_revoked_and_expired_keys_get_401(world: World) -> None:
    w, client = world, world.client
    _, revoked = w.services.keys.create("old", read=["alpha"])
    w.services.keys.revoke(w.services.keys.list_keys()[-1].id)
    _, expired = w.services.keys.create("brief", read=["alpha"], expires_at=datetime.now(timezone.utc))
    before = w.snapshot()
    for headers in ({}, bearer("ak_wrong"), {"X-API-Key": "nope"}, bearer(revoked), bearer(expired),
                    {"Authorization": f"Basic {ADMIN}"}):  # fmt: skip
        for method, path in sorted(v1_routes(client)):
            concrete = path.replace("{document_id}", str(w.alpha_doc)).replace("{key_id}", "1")
            concrete = concrete.replace("{conversation_id}", w.beta_conversation).replace(
                "{job_id}", w.beta_job
            )
            response = client.request(method, concrete, headers=headers)
            assert response.status_code == 401, (headers, method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer" and response.json()["detail"]
    assert w.snapshot() == before
    for open_path in ("/healthz", "/readyz"):
        assert client.get(open_path).status_code == 200
    assert client.get("/v1/collections", headers={"X-API-Key": ADMIN}).status_code == 200


def test_a_conversation_is_for_the_key_that_started_it(world: World) -> None:
    """Two keys that read alpha: the second cannot list, read, ask in or delete the first's conversation;
    the admin sees every conversation."""
    w, client = world, world.client
    _, second = w.services.keys.create("second alpha reader", read=["alpha"])
    started = client.post("/v1/conversations", json={"collection": "alpha"}, headers=w.reader)
    assert started.status_code == 201, started.text
    mine = started.json()["id"]
    ask = {"question": "When do owls hunt?", "conversation_id": mine}
    assert client.post("/v1/query", json=ask, headers=w.reader).status_code == 200
    before = w.snapshot()
    for others in (bearer(second), w.writer):
        assert client.get("/v1/conversations", headers=others).json()["conversations"] == []
        listed = client.get("/v1/conversations", params={"collection": "alpha"}, headers=others)
        assert listed.json()["conversations"] == []
        assert client.get(f"/v1/conversations/{mine}", headers=others).status_code == 404
        assert client.post("/v1/query", json=ask, headers=others).status_code == 404
        assert client.delete(f"/v1/conversations/{mine}", headers=others).status_code == 404
    assert w.snapshot() == before

    own = client.get("/v1/conversations", headers=w.reader).json()["conversations"]
    assert [c["id"] for c in own] == [mine]  # not the admin's conversation of beta, nor anyone else's
    assert len(client.get(f"/v1/conversations/{mine}", headers=w.reader).json()["messages"]) == 2
    every = client.get("/v1/conversations", headers=ADMIN_HEADERS).json()["conversations"]
    assert {c["id"] for c in every} == {mine, w.beta_conversation}
    assert client.get(f"/v1/conversations/{mine}", headers=ADMIN_HEADERS).status_code == 200
    assert client.delete(f"/v1/conversations/{mine}", headers=w.reader).status_code == 200


def test_description_docs_and_metrics_need_a_key_and_the_page_loads_nothing_from_outside(
    world: World,
) -> None:
    w, client = world, world.client
    described = ("/openapi.json", "/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css")
    for path in (*described, "/metrics"):
        refused = client.get(path, headers=bearer("ak_wrong"))
        assert refused.status_code == 401 and refused.json()["detail"], path
    for path in described:
        assert client.get(path, headers=w.reader).status_code == 200, path
    assert client.get("/metrics", headers=w.reader).status_code == 403
    assert "archivist_http_requests_total" in client.get("/metrics", headers=ADMIN_HEADERS).text
    assert client.get("/redoc", headers=w.reader).status_code == 404

    page = client.get("/docs", headers=w.reader).text
    loaded = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page)
    assert sorted(loaded) == ["/docs/favicon.png", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css",
                              "/openapi.json"]  # fmt: skip
    for url in loaded:
        assert client.get(url, headers=w.reader).status_code == 200, url


def test_admin_manages_keys_and_only_hashes_are_stored(world: World) -> None:
    w, client = world, world.client
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    grants = {"name": "ci", "read": ["alpha"], "write": ["beta"], "expires_at": tomorrow}
    created = client.post("/v1/keys", json=grants, headers=ADMIN_HEADERS)
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["key"]
    assert secret.startswith("ak_") and body["read"] == ["alpha"] and body["write"] == ["beta"]
    with w.services.db.session() as session:
        stored = session.scalar(select(ApiKey).where(ApiKey.id == body["id"]))
        assert stored is not None and stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in repr([stored.key_hash, stored.prefix, stored.name])
    listed = client.get("/v1/keys", headers=ADMIN_HEADERS).json()["keys"]
    assert all("key" not in k for k in listed) and body["id"] in [k["id"] for k in listed]
    assert client.get("/v1/documents", headers=bearer(secret)).status_code == 200
    assert client.delete(f"/v1/keys/{body['id']}", headers=ADMIN_HEADERS).json()["revoked_at"]
    assert client.get("/v1/documents", headers=bearer(secret)).status_code == 401
    assert client.post("/v1/keys", json={"name": "no rights"}, headers=ADMIN_HEADERS).status_code == 422
    assert (
        client.post("/v1/keys", json={"name": "x", "read": ["../etc"]}, headers=ADMIN_HEADERS).status_code
        == 422
    )
    assert client.delete("/v1/keys/999", headers=ADMIN_HEADERS).status_code == 404


@pytest.mark.parametrize(
    ("host", "require", "required"),
    [("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
     ("127.0.0.1", True, True), ("0.0.0.0", False, True), ("192.168.1.20", False, True), ("::", False, True),
     ("archivist.example.org", False, True)],
)  # fmt: skip
def test_auth_is_off_only_on_loopback(host: str, require: bool, required: bool, tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, host=host, require_auth=require)
    assert settings.auth_required is required


def test_without_auth_on_loopback_everything_is_open(client: TestClient) -> None:
    assert client.get("/v1/collections").status_code == 200
    assert client.get("/v1/keys").status_code == 200


def test_a_file_ingested_on_the_server_shows_its_path_to_the_admin(world: World, tmp_path: Path) -> None:
    """Other keys see the file's name: the server's folders are not theirs to learn. Uploads keep the name
    their uploader gave."""
    w = world
    notes = tmp_path / "server-side" / "private" / "notes.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("# Notes\n\nOwls nest in hollow trees.", encoding="utf-8")
    result = w.services.ingestor().ingest_file(notes, "alpha")
    assert result.document_id is not None, result.reason

    def shown(headers: dict[str, str]) -> dict[str, str]:
        listed = w.client.get("/v1/documents", params={"collection": "alpha"}, headers=headers).json()
        one = w.client.get(f"/v1/documents/{result.document_id}", headers=headers).json()
        found = w.client.post("/v1/search", json={"question": "Where do owls nest?", "collection": "alpha"},
                              headers=headers).json()["results"]  # fmt: skip
        hit = next(h["source_path"] for h in found if h["document_id"] == result.document_id)
        assert one["source_path"] == hit
        return {d["title"]: d["source_path"] for d in listed["documents"]} | {"one": one["source_path"]}

    uploaded = "upload://alpha/alpha.txt"
    assert shown(ADMIN_HEADERS) == {"Notes": str(notes), "alpha": uploaded, "one": str(notes)}
    for key in (w.reader, w.writer):
        assert shown(key) == {"Notes": "notes.md", "alpha": uploaded, "one": "notes.md"}
