"""`POST /v1/search`: ranked passages with their document, page, headings and offsets; the rights, filters,
modes, limits and errors of `/v1/query`; and no language model needed, loading or failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.services import Services
from retriever.store import KnowledgeBase
from tests.app.corpus import (
    ADMIN,
    ANIMALS,
    GLACIER,
    GUIDE,
    KEEPER,
    OWL,
    Corpus,
    no_model_settings,
    upload,
    upload_corpus,
)
from tests.conftest import make_settings


def search(client: TestClient, question: str, **fields: object) -> dict[str, Any]:
    response = client.post("/v1/search", json={"question": question, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def results(body: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = body["results"]
    return found


def test_passages_are_ranked_with_document_page_headings_and_offsets(corpus: Corpus) -> None:
    body = search(corpus.client, OWL)
    assert body["collection"] == "default" and body["mode"] == "hybrid"
    assert isinstance(body["took_ms"], float) and body["took_ms"] > 0
    found = results(body)
    assert len(found) == 3  # the settings' top_k
    assert [r["rank"] for r in found] == [1, 2, 3]
    scores = [r["score"] for r in found]
    assert scores == sorted(scores, reverse=True)
    best = found[0]
    assert "barn owl nests" in str(best["text"])
    assert best["document_id"] == corpus.ids["animals.txt"] and best["title"] == "animals"
    assert str(best["source_path"]).endswith("animals.txt")
    assert best["page"] is None and best["heading_path"] == ""
    # Offsets locate the passage in the document; chunk id and ordinal name the stored chunk.
    assert ANIMALS[best["char_start"] : best["char_end"]] == best["text"]
    chunks = {c.id: c for c in corpus.services.kb().get_chunks(corpus.ids["animals.txt"])}
    assert len(chunks) > 1
    stored = chunks[best["chunk_id"]]
    assert (stored.ordinal, stored.char_start, stored.char_end, stored.text) == (
        best["ordinal"], best["char_start"], best["char_end"], best["text"],
    )  # fmt: skip

    keeper = results(search(corpus.client, KEEPER))[0]
    assert keeper["document_id"] == corpus.ids["guide.md"]
    assert keeper["heading_path"] == "Lighthouses > Keepers" and keeper["page"] is None
    assert GUIDE[keeper["char_start"] : keeper["char_end"]] == keeper["text"]

    glacier = results(search(corpus.client, GLACIER))[0]
    assert glacier["document_id"] == corpus.ids["report.pdf"] and "largest glacier" in glacier["text"]
    assert glacier["page"] == 2
    timber = results(search(corpus.client, "Portwick timber", filters={"file_types": ["pdf"]}))
    assert {r["page"] for r in timber} == {1}


def test_modes_filters_and_top_k_shape_the_search(corpus: Corpus) -> None:
    client, ids = corpus.client, corpus.ids
    for mode in ("dense", "lexical", "hybrid"):
        body = search(client, KEEPER, mode=mode, top_k=2)
        found = results(body)
        assert body["mode"] == mode and len(found) == 2
        assert found[0]["document_id"] == ids["guide.md"], mode
        if mode == "lexical":
            assert all(r["similarity"] is None for r in found)  # the question is not embedded
        else:
            assert all(isinstance(r["similarity"], float) for r in found)
        if mode == "dense":
            # The same cosine, summed in FAISS's order and in torch's: float32 rounding of 384 products.
            assert all(r["score"] == pytest.approx(r["similarity"], abs=1e-4) for r in found)
    assert len(results(search(client, KEEPER, top_k=1))) == 1
    assert len(results(search(client, "owls", top_k=50))) > 3  # beyond the default of 3, up to the limit

    pdf_only = results(search(client, KEEPER, filters={"file_types": ["pdf"]}))
    assert pdf_only and {r["document_id"] for r in pdf_only} == {ids["report.pdf"]}
    chosen = [ids["guide.md"], ids["report.pdf"]]
    by_id = results(search(client, OWL, mode="dense", filters={"document_ids": chosen}))
    assert by_id and {r["document_id"] for r in by_id} <= set(chosen)
    assert results(search(client, OWL, filters={"updated_after": "2999-01-01T00:00:00Z"})) == []


def test_search_draws_on_the_passages_query_answers_from(  # type: ignore[no-untyped-def]
    tmp_path: Path, kb: KnowledgeBase, generator
) -> None:
    services = Services(make_settings(tmp_path / "data", max_new_tokens=4), kb=kb, generator=generator)
    with TestClient(create_app(services)) as client:
        ids = upload_corpus(client)
        for mode in ("dense", "lexical", "hybrid"):
            ask = {"question": GLACIER, "top_k": 2, "mode": mode, "filters": {"file_types": ["pdf", "md"]}}
            answered = client.post("/v1/query", json=ask)
            assert answered.status_code == 200, answered.text
            sources = [(s["document_id"], s["chunk_id"]) for s in answered.json()["sources"]]
            searched = [(r["document_id"], r["chunk_id"]) for r in results(search(client, **ask))]
            assert searched == sources and searched[0][0] == ids["report.pdf"], mode


def test_search_answers_while_the_model_is_unavailable(corpus: Corpus) -> None:
    assert corpus.services.readiness() == {"knowledge_base": "ready", "llm": "failed"}
    refused = corpus.client.post("/v1/query", json={"question": OWL})
    assert refused.status_code == 503 and "language model" in refused.json()["detail"]
    assert results(search(corpus.client, OWL))[0]["document_id"] == corpus.ids["animals.txt"]


@pytest.mark.timeout(60)
def test_search_answers_while_the_model_is_still_loading(tmp_path: Path, kb: KnowledgeBase) -> None:
    services = Services(no_model_settings(tmp_path), kb=kb)
    client = TestClient(create_app(services))  # no lifespan: the model never finishes loading
    try:
        ids = upload_corpus(client)
        assert results(search(client, KEEPER))[0]["document_id"] == ids["guide.md"]
        assert services.readiness()["llm"] == "loading"  # and the search did not start loading it
    finally:
        services.db.dispose()


@pytest.mark.timeout(60)
def test_while_the_model_loads_a_question_gets_503_with_retry_after_at_once(
    tmp_path: Path, kb: KnowledgeBase
) -> None:
    services = Services(no_model_settings(tmp_path), kb=kb)
    client = TestClient(create_app(services))  # no lifespan: the model never finishes loading
    try:
        upload_corpus(client)
        started = time.monotonic()
        refused = client.post("/v1/query", json={"question": KEEPER})
        assert time.monotonic() - started < 10  # not the minutes a load can take
        assert refused.status_code == 503 and "still loading" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "5"
    finally:
        services.db.dispose()


@pytest.fixture
def guarded(tmp_path: Path, kb: KnowledgeBase) -> Iterator[Corpus]:
    """Auth required, three requests a minute per key; collections alpha and beta."""
    settings = no_model_settings(
        tmp_path, require_auth=True, admin_key="admin-secret-for-tests", rate_limit_per_minute=3
    )
    services = Services(settings, kb=kb)
    with TestClient(create_app(services)) as client:
        ids = {
            "alpha": upload(client, "owls.txt", ANIMALS.encode(), "alpha", headers=ADMIN),
            "beta": upload(client, "guide.md", GUIDE.encode(), "beta", headers=ADMIN),
        }
        yield Corpus(client, services, ids)


def test_search_needs_a_key_that_may_read_the_collection(guarded: Corpus) -> None:
    client, keys = guarded.client, guarded.services.keys
    _, reader = keys.create("alpha reader", read=["alpha"])
    read_alpha = {"Authorization": f"Bearer {reader}"}
    ask_alpha = {"question": OWL, "collection": "alpha"}
    for headers in ({}, {"Authorization": "Bearer ak_wrong"}, {"X-API-Key": "nope"}):
        response = client.post("/v1/search", json=ask_alpha, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    found = client.post("/v1/search", json=ask_alpha, headers=read_alpha)
    assert found.status_code == 200, found.text
    assert {r["document_id"] for r in found.json()["results"]} == {guarded.ids["alpha"]}
    for collection in ("beta", None):  # None: the default collection, which the key may not read either
        refused = client.post(
            "/v1/search", json={"question": KEEPER, "collection": collection}, headers=read_alpha
        )
        assert refused.status_code == 403 and "may not read" in refused.json()["detail"]
    admin = client.post("/v1/search", json={"question": KEEPER, "collection": "beta"}, headers=ADMIN)
    assert admin.status_code == 200 and admin.json()["results"][0]["document_id"] == guarded.ids["beta"]


def test_search_counts_against_the_keys_rate_limit(guarded: Corpus) -> None:
    _, secret = guarded.services.keys.create("busy", read=["alpha"])
    headers = {"Authorization": f"Bearer {secret}"}
    ask = {"question": OWL, "collection": "alpha"}
    statuses = [guarded.client.post("/v1/search", json=ask, headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = guarded.client.post("/v1/search", json=ask, headers=headers)
    assert limited.status_code == 429 and limited.headers["retry-after"] and limited.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "question"),
        ({"question": ""}, "question"),
        ({"question": "   "}, "question"),
        ({"question": 5}, "question"),
        ({"question": "x" * 20_001}, "question"),
        ({"question": "owls", "top_k": 0}, "top_k"),
        ({"question": "owls", "top_k": 51}, "top_k"),
        ({"question": "owls", "mode": "semantic"}, "mode"),
        ({"question": "owls", "collection": ""}, "collection"),
        ({"question": "owls", "filters": {"author": "me"}}, "author"),
        ({"question": "owls", "filters": {"file_types": []}}, "file_types"),
        ({"question": "owls", "filters": {"document_ids": [2**70]}}, "document_ids"),
        ({"question": "owls", "filters": {"updated_after": "yesterday"}}, "updated_after"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(corpus: Corpus, body: dict[str, object], field: str) -> None:
    response = corpus.client.post("/v1/search", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert any(field in error["loc"] for error in response.json()["detail"]), response.text


def test_other_bad_requests_get_a_json_4xx(corpus: Corpus) -> None:
    client = corpus.client
    unknown = client.post("/v1/search", json={"question": "owls", "collection": "ghost"})
    assert unknown.status_code == 404 and "'ghost'" in unknown.json()["detail"]
    assert client.post("/v1/search", json={"question": "owls", "collection": "../../etc"}).status_code == 404
    json_type = {"content-type": "application/json"}
    cases = [
        ("POST", {"content": b'{"question": "caf\xe9"}', "headers": json_type}, 400),
        ("POST", {"content": b'{"question": ', "headers": json_type}, 422),
        ("POST", {"json": {"question": "x" * 2_000_000}}, 413),
        ("GET", {}, 405),
    ]
    for method, kwargs, status in cases:
        response = client.request(method, "/v1/search", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (kwargs, response.text)
        assert response.json()["detail"]
