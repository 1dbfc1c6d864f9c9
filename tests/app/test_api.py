"""The REST API end to end with the real models: documents, queries, deletes and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.services import Services
from tests.app.state import snapshot
from tests.conftest import shared_file


def upload(client: TestClient, name: str, content: bytes, collection: str = "default"):  # type: ignore[no-untyped-def]
    return client.post("/v1/documents", files={"file": (name, content)}, data={"collection": collection})


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/openapi.json").json()["info"]["title"] == "Archivist"


def test_upload_list_query_delete(client: TestClient, services: Services) -> None:
    created = upload(client, "volcano.md", b"# Volcanoes\n\nMount Etna is an active volcano in Sicily.")
    assert created.status_code == 201, created.text
    document = created.json()["document"]
    assert document["title"] == "Volcanoes" and created.json()["chunks"] == 1
    assert (
        upload(client, "volcano.md", b"# Volcanoes\n\nMount Etna is an active volcano in Sicily.").json()[
            "status"
        ]
        == "unchanged"
    )
    other = upload(client, "glacier.txt", b"The Aletsch Glacier is the largest glacier in the Alps.").json()
    listed = client.get("/v1/documents", params={"collection": "default"}).json()["documents"]
    assert {d["id"] for d in listed} == {document["id"], other["document"]["id"]}
    assert client.get("/v1/collections").json()["collections"][0]["document_count"] == 2

    reply = client.post("/v1/query", json={"question": "Where is Mount Etna?", "top_k": 2})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"].strip()
    assert [s["n"] for s in body["sources"]] == [1, 2]
    assert body["sources"][0]["document_id"] == document["id"]
    assert set(body["cited"]) <= {1, 2}
    assert body["timings"]["retrieve_ms"] > 0 and body["timings"]["generate_ms"] > 0

    kb = services.kb()
    index_before = kb.synced_index(1, kb.collection_version("default")).size
    deleted = client.delete(f"/v1/documents/{document['id']}")
    assert deleted.status_code == 200 and deleted.json()["chunk_count"] == 1
    assert kb.synced_index(1, kb.collection_version("default")).size == index_before - 1
    after = client.post("/v1/query", json={"question": "Where is Mount Etna?", "top_k": 5}).json()
    assert all(s["document_id"] != document["id"] for s in after["sources"])
    assert client.get(f"/v1/documents/{document['id']}").status_code == 404


def test_bad_input_answers_json_errors_and_loses_nothing(client: TestClient) -> None:
    upload(client, "keep.txt", b"Kept content about lighthouses.")
    cases = [
        (client.post("/v1/query", json={"question": "   "}), 422),
        (client.post("/v1/query", json={"question": ""}), 422),
        (client.post("/v1/query", json={}), 422),
        (client.post("/v1/query", json={"question": "x", "top_k": 0}), 422),
        (client.post("/v1/query", json={"question": "x", "top_k": 51}), 422),
        (client.post("/v1/query", json={"question": "x", "top_k": "many"}), 422),
        (client.post("/v1/query", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (client.post("/v1/query", json={"question": "x", "collection": "nope"}), 404),
        (client.delete("/v1/documents/999999"), 404),
        (client.get("/v1/documents", params={"collection": "nope"}), 404),
        (upload(client, "garbage.txt", bytes(range(256))), 422),
        (upload(client, "empty.md", b""), 422),
        (upload(client, "sheet.xlsx", b"PK\x03\x04"), 422),
        (upload(client, "x.txt", b"content", collection="../etc"), 422),
        (client.post("/v1/documents", data={"collection": "default"}), 422),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert "detail" in response.json()
    garbage = cases[10][0].json()["detail"]
    assert "garbage.txt" in garbage and "binary" in garbage
    documents = client.get("/v1/documents").json()["documents"]
    assert [d["title"] for d in documents] == ["keep"]


def test_uploads_keep_the_relative_path_so_distinct_names_stay_distinct(
    client: TestClient, services: Services
) -> None:
    """`alpha/report.txt` and `beta/report.txt` are two documents, and so are names that differ only in
    characters that are unsafe in a file name; uploading the same name again updates that one alone."""
    names = ["alpha/report.txt", "beta/report.txt", "a?b.txt", "a_b.txt", "a%3Fb.txt"]
    ids = {}
    for n, name in enumerate(names):
        response = upload(client, name, f"Report number {n} says the river froze in {1900 + n}.".encode())
        assert response.status_code == 201 and response.json()["status"] == "added", (name, response.text)
        ids[name] = response.json()["document"]["id"]
    listed = {d["id"]: d["source_path"] for d in client.get("/v1/documents").json()["documents"]}
    assert listed == {
        ids["alpha/report.txt"]: "upload://default/alpha/report.txt",
        ids["beta/report.txt"]: "upload://default/beta/report.txt",
        ids["a?b.txt"]: "upload://default/a%3Fb.txt",
        ids["a_b.txt"]: "upload://default/a_b.txt",
        ids["a%3Fb.txt"]: "upload://default/a%253Fb.txt",
    }
    again = upload(client, "alpha/report.txt", b"Report number 0, revised: the river froze in 1903.")
    assert again.status_code == 200 and again.json()["status"] == "updated"
    assert again.json()["document"]["id"] == ids["alpha/report.txt"]
    beta = client.get(f"/v1/documents/{ids['beta/report.txt']}").json()
    assert beta["source_path"] == "upload://default/beta/report.txt"
    too_long = upload(client, "folder/" * 30 + "report.txt", b"Too deep to keep under one file name.")
    assert too_long.status_code == 422 and "200 bytes" in too_long.json()["detail"]
    kept = services.settings.upload_dir / "default"
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        ["alpha%2Freport.txt", "beta%2Freport.txt", "a%3Fb.txt", "a_b.txt", "a%253Fb.txt"]
    )


REFUSED_NAMES = [".", "./", "..", "../../outside.txt", "a/../../x", "/etc/passwd", "C:/x.txt"]


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_empty_absolute_and_climbing_upload_names_are_refused(
    client: TestClient, services: Services, name: str
) -> None:
    assert upload(client, "first.txt", b"The first document stays.").status_code == 201
    before = snapshot(services)
    single = upload(client, name, b"Escapes are not allowed.")
    several = client.post(
        "/v1/documents", files=[("files", ("fine.txt", b"Fine.")), ("files", (name, b"Escapes."))]
    )
    for response in (single, several):
        assert response.status_code == 422, response.text
        assert repr(name) in response.json()["detail"]
    assert snapshot(services) == before
    assert client.get("/v1/jobs").json()["jobs"] == []
    upload_dir = services.settings.upload_dir.resolve()
    assert [p.name for p in (upload_dir / "default").iterdir()] == ["first.txt"]
    assert not (upload_dir.parent.parent / "outside.txt").exists()


def test_squad_questions_retrieve_their_gold_paragraph(client: TestClient, tmp_path: Path) -> None:
    """Ingest the paragraphs of one SQuAD article, ask 10 of its questions through the API: the gold
    paragraph must be among the sources for at least 8 of them."""
    squad = json.loads(shared_file("squad/squad-v1.1-dev-a.json").read_text())
    article = next(a for a in squad["data"] if a["title"] == "Warsaw")
    questions = []
    for number, paragraph in enumerate(article["paragraphs"][:50]):
        name = f"warsaw-{number:02d}.txt"
        assert upload(client, name, paragraph["context"].encode(), "squad").status_code == 201
        questions.append((name, paragraph["qas"][0]["question"]))
    asked = questions[::5][:10]
    found = 0
    for name, question in asked:
        reply = client.post("/v1/query", json={"question": question, "collection": "squad", "top_k": 5})
        assert reply.status_code == 200 and reply.json()["answer"].strip()
        titles = {source["title"] for source in reply.json()["sources"]}
        found += name.removesuffix(".txt") in titles
    assert found >= 8, f"gold paragraph retrieved for only {found} of {len(asked)} questions"


def test_a_no_answer_reply_says_why(client: TestClient) -> None:
    """`refusal` names the cause of a no-answer reply: here the relevance gate, which never asks the model."""
    owls = b"# Owls\n\nOwls hunt at night. An owl can turn its head 270 degrees."
    assert client.post("/v1/documents", files={"file": ("owls.md", owls)}).status_code == 201
    gated = client.post("/v1/query", json={"question": "What is the boiling point of mercury in kelvin?"})
    body = gated.json()
    assert gated.status_code == 200 and body["grounded"] is False, body
    assert body["refusal"] == "relevance" and body["finish_reason"] == "no_answer"
    assert body["usage"]["completion_tokens"] == 0
    answered = client.post(
        "/v1/query", json={"question": "How far can an owl turn its head?", "max_tokens": 24}
    )
    assert answered.json()["refusal"] is None if answered.json()["grounded"] else answered.json()["refusal"]
