"""`POST /v1/query` retrieval options: mode, metadata filters, and the bad inputs around them."""

from __future__ import annotations

from fastapi.testclient import TestClient


def upload(client: TestClient, name: str, content: bytes) -> int:
    response = client.post("/v1/documents", files={"file": (name, content)}, data={"collection": "default"})
    assert response.status_code == 201, response.text
    return int(response.json()["document"]["id"])


def test_modes_and_filters(client: TestClient) -> None:
    lighthouse = upload(
        client, "lighthouse.md", b"# Lighthouses\n\nThe Eddystone lighthouse stands on a reef."
    )
    glacier = upload(client, "glacier.txt", b"The Aletsch Glacier is the largest glacier in the Alps.")
    for mode in ("dense", "lexical", "hybrid"):
        reply = client.post(
            "/v1/query", json={"question": "Where is the Eddystone lighthouse?", "mode": mode}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["sources"][0]["document_id"] == lighthouse, mode
    filtered = client.post(
        "/v1/query",
        json={
            "question": "Where is the Eddystone lighthouse?",
            "top_k": 1,
            "filters": {"file_types": ["txt"]},
        },
    )
    assert filtered.status_code == 200, filtered.text
    assert [s["document_id"] for s in filtered.json()["sources"]] == [glacier]
    by_id = client.post(
        "/v1/query",
        json={
            "question": "lighthouse",
            "filters": {"document_ids": [glacier], "updated_after": "2000-01-01"},
        },
    )
    assert {s["document_id"] for s in by_id.json()["sources"]} == {glacier}


def test_bad_retrieval_options_are_422_and_long_questions_are_fine(client: TestClient) -> None:
    upload(client, "keep.txt", b"Kept content about lighthouses and their keepers.")
    bad = [
        {"question": "x", "filters": {"author": "me"}},
        {"question": "x", "filters": {"file_types": []}},
        {"question": "x", "filters": {"updated_after": "yesterday"}},
        {"question": "x", "mode": "semantic"},
        {"question": ""},
    ]
    for body in bad:
        response = client.post("/v1/query", json=body)
        assert response.status_code == 422, (body, response.text)
        assert "detail" in response.json()
    long_question = ("Who keeps the lighthouses? " * 400)[:10_000]
    reply = client.post("/v1/query", json={"question": long_question, "mode": "hybrid"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["sources"]
