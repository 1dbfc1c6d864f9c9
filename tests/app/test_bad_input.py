"""Bad input for every route of the service: wrong types, missing fields, huge bodies, invalid UTF-8,
unknown ids → a 4xx with a JSON `detail`, and nothing stored changes. (Keys are covered in test_auth.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.services import Services
from retriever.store import KnowledgeBase
from tests.app.state import snapshot
from tests.conftest import make_settings

ask = {"question": "Where do owls live?"}
chat = {"model": "archivist", "messages": [{"role": "user", "content": "Where?"}]}
JSON = {"content-type": "application/json"}

CASES: list[tuple[str, str, dict[str, object], int]] = [
    ("POST", "/v1/query", {"json": {**ask, "question": 5}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "stream": "maybe"}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "temperature": -1}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "max_tokens": 0}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "mode": "psychic"}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "filters": {"document_ids": [2**70]}}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "conversation_id": "c" * 65}}, 422),
    ("POST", "/v1/query", {"json": {**ask, "conversation_id": "missing"}}, 404),
    ("POST", "/v1/query", {"json": {**ask, "collection": "../../etc"}}, 404),
    ("POST", "/v1/query", {"json": [ask]}, 422),
    ("POST", "/v1/query", {"json": {**ask, "temprature": 0.2}}, 422),  # a misspelt field is not dropped
    ("POST", "/v1/search", {"json": {**ask, "top": 3}}, 422),
    ("POST", "/v1/query", {"content": b'{"question": "caf\xe9"}', "headers": JSON}, 400),
    ("POST", "/v1/query", {"content": b'{"question": ', "headers": JSON}, 422),
    ("POST", "/v1/query", {"content": b"question=x", "headers": {"content-type": "text/plain"}}, 422),
    ("POST", "/v1/query", {"json": {"question": "x" * 2_000_000}}, 413),
    ("POST", "/v1/chat/completions", {"json": {}}, 422),
    ("POST", "/v1/chat/completions", {"json": {**chat, "messages": []}}, 422),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {**chat, "messages": [{"role": "wizard", "content": "x"}]}},
        422,
    ),
    ("POST", "/v1/chat/completions", {"json": {**chat, "messages": [{"role": "user", "content": 7}]}}, 422),
    ("POST", "/v1/chat/completions", {"json": {**chat, "messages": [{"role": "user", "content": " "}]}}, 422),
    ("POST", "/v1/chat/completions", {"json": {**chat, "n": 2}}, 422),
    ("POST", "/v1/chat/completions", {"json": {**chat, "max_tokens": -5}}, 422),
    ("POST", "/v1/chat/completions", {"json": {**chat, "model": "gpt-4"}}, 404),
    ("POST", "/v1/chat/completions", {"json": {**chat, "model": "archivist:nowhere"}}, 404),
    ("POST", "/v1/conversations", {"json": {"collection": "../x"}}, 404),
    ("POST", "/v1/conversations", {"json": {"collection": "ghost"}}, 404),
    ("POST", "/v1/conversations", {"json": {"title": ["a"]}}, 422),
    ("POST", "/v1/conversations", {"json": {"colection": "default"}}, 422),
    ("POST", "/v1/conversations", {"json": {"title": "t" * 201}}, 422),
    ("GET", "/v1/conversations/missing", {}, 404),
    ("DELETE", "/v1/conversations/missing", {}, 404),
    ("GET", "/v1/documents/abc", {}, 422),
    ("GET", "/v1/documents/999", {}, 404),
    ("DELETE", "/v1/documents/-1", {}, 422),
    ("GET", "/v1/documents/99999999999999999999999", {}, 422),
    ("GET", "/v1/documents", {"params": {"collection": "ghost"}}, 404),
    ("POST", "/v1/documents", {"files": {"file": ("x.txt", bytes(range(256)) * 4)}}, 422),
    ("POST", "/v1/documents", {"data": {"collection": "default"}}, 422),
    ("POST", "/v1/documents", {"files": {"file": ("", b"A file without a name.")}}, 422),
    (
        "POST",
        "/v1/documents",
        {"files": {"file": ("x.txt", b"Fine text.")}, "data": {"collection": "a/b"}},
        422,
    ),
    ("GET", "/v1/jobs/missing", {}, 404),
    ("POST", "/v1/keys", {"json": {"name": "x", "read": "default"}}, 422),
    ("POST", "/v1/keys", {"json": {"name": "", "read": ["default"]}}, 422),
    ("POST", "/v1/keys", {"json": {"name": "x", "read": ["default"], "admin": True}}, 422),
    ("DELETE", "/v1/keys/abc", {}, 422),
    ("DELETE", "/v1/keys/999", {}, 404),
    ("GET", "/v1/nowhere", {}, 404),
    ("PUT", "/v1/query", {"json": ask}, 405),
]


@pytest.fixture
def strict(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[tuple[TestClient, Services]]:  # type: ignore[no-untyped-def]
    services = Services(make_settings(tmp_path / "data", max_new_tokens=4), kb=kb, generator=generator)
    with TestClient(create_app(services)) as client:
        assert client.post("/v1/documents", files={"file": ("owls.md", b"# Owls\n\nOwls live in forests.")})
        assert client.post("/v1/conversations", json={}).status_code == 201
        yield client, services


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"), CASES, ids=[f"{c[0]} {c[1]} {i}" for i, c in enumerate(CASES)]
)
def test_bad_input_gets_a_json_4xx_and_changes_nothing(
    strict: tuple[TestClient, Services], method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    client, services = strict
    before = snapshot(services)
    response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]
    assert snapshot(services) == before


@pytest.mark.parametrize("token", ["NaN", "1e400", '"\\ud800"'], ids=["nan", "1e400", "lone-surrogate"])
def test_values_json_cannot_echo_get_a_422_naming_the_field(
    strict: tuple[TestClient, Services], token: str
) -> None:
    """Python's JSON parser reads `NaN`, `1e400` (infinity) and lone surrogates, which the 422's echo of
    the input must not turn into a 500: every route with a JSON body, every field of it given the value."""
    client, services = strict
    description = client.get("/openapi.json").json()
    bodies = {
        (method.upper(), path): operation["requestBody"]["content"]["application/json"]["schema"]
        for path, methods in description["paths"].items()
        for method, operation in methods.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }
    components = description["components"]["schemas"]
    assert {("POST", "/v1/query"), ("POST", "/v1/chat/completions"), ("POST", "/v1/conversations"),
            ("POST", "/v1/keys")} <= set(bodies)  # fmt: skip
    before = snapshot(services)
    for (method, path), schema in bodies.items():
        fields = components[schema["$ref"].rsplit("/", 1)[-1]]["properties"]
        body = "{" + ", ".join(f'"{field}": {token}' for field in fields) + "}"
        response = client.request(method, path, content=body.encode(), headers=JSON)
        assert response.status_code == 422, (path, response.text)
        named = {tuple(error["loc"][:2]) for error in response.json()["detail"]}
        assert named and named <= {("body", field) for field in fields}, (path, named)
    assert snapshot(services) == before


def test_json_nested_past_the_recursion_limit_is_invalid_input_on_every_json_route(
    strict: tuple[TestClient, Services],
) -> None:
    """Python's parser gives up on 100,000 nested lists with a RecursionError, which FastAPI answers as an
    unreadable body (400); it is malformed JSON like any other, a 422 naming the body."""
    client, services = strict
    description = client.get("/openapi.json").json()
    routes = [
        (method.upper(), path)
        for path, methods in description["paths"].items()
        for method, operation in methods.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert ("POST", "/v1/query") in routes and ("POST", "/v1/chat/completions") in routes
    body = ('{"question": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    before = snapshot(services)
    for method, path in routes:
        response = client.request(method, path, content=body, headers=JSON)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["detail"][0]["loc"][0] == "body", (path, response.text)
    assert snapshot(services) == before
