"""Conversations: stored in SQL through the API, and follow-up questions rewritten into standalone ones
before retrieval — shown to find the right document where the raw follow-up cannot."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.rag.rewrite import standalone_history, standalone_question
from app.services import Services

COMPANIES = {
    "Globex Corporation": ("makes industrial robots for car factories", 1987, "Hank Scorpio"),
    "Initech": ("writes banking software for credit unions", 1994, "Bill Lumbergh"),
    "Umbrella Pharmaceuticals": ("produces vaccines and antiviral drugs", 1968, "Oswell Spencer"),
    "Soylent Foods": ("sells protein crackers to supermarkets", 2003, "Harriet Thorn"),
    "Cyberdyne Systems": ("designs neural network processors for drones", 1981, "Miles Dyson"),
    "Wonka Confectionery": ("produces chocolate bars and chewing gum", 1964, "Willy Wonka"),
}


def company_files() -> list[tuple[str, bytes]]:
    return [
        (f"{name}.md", f"# {name}\n\n{name} {what}. It was founded in {year} by {founder}.".encode())
        for name, (what, year, founder) in COMPANIES.items()
    ]


@pytest.mark.parametrize(
    ("previous", "follow_up", "expected"),
    [
        (["What does Globex Corporation make?"], "and who founded it?", "Who founded Globex Corporation?"),
        (["Where is Mount Etna?"], "How many people live there?", "How many people live in Mount Etna?"),
        (["What does Initech sell?"], "What about its revenue?", "Initech's revenue?"),
        (["Who won Super Bowl 50?"], "when?", "Super Bowl 50: When?"),
        (["What does Globex Corporation make?"], "Who founded Initech?", "Who founded Initech?"),
        ([], "and who founded it?", "and who founded it?"),
    ],
)
def test_follow_ups_become_standalone(previous: list[str], follow_up: str, expected: str) -> None:
    assert standalone_question(follow_up, previous) == expected


def test_a_follow_up_of_a_follow_up_keeps_the_subject() -> None:
    history = standalone_history(["What does Initech sell?", "And who founded it?"])
    assert history == ["What does Initech sell?", "Who founded Initech?"]
    assert standalone_question("When was it founded?", history) == "When was Initech founded?"


def test_rewriting_finds_the_document_the_raw_follow_up_misses(
    client: TestClient, services: Services
) -> None:
    """The same follow-up after six different first questions: asked raw it is one query with one top
    document, right at most once; rewritten it must find each company's own document."""
    for name, content in company_files():
        assert client.post("/v1/documents", files={"file": (name, content)}).status_code == 201
    kb = services.kb()
    raw_hits = rewritten_hits = 0
    for company in COMPANIES:
        first = f"What does {company} do?"
        raw_hits += kb.search("And who founded it?", "default", 1)[0].title == company
        rewritten = standalone_question("And who founded it?", [first])
        rewritten_hits += kb.search(rewritten, "default", 1)[0].title == company
    assert raw_hits <= 1
    assert rewritten_hits == len(COMPANIES), rewritten_hits


def test_conversation_is_stored_and_follow_ups_are_rewritten(client: TestClient) -> None:
    for name, content in company_files():
        client.post("/v1/documents", files={"file": (name, content)})
    created = client.post("/v1/conversations", json={"collection": "default"})
    assert created.status_code == 201, created.text
    conversation = created.json()
    assert conversation["messages"] == [] and conversation["title"] is None
    cid = conversation["id"]

    first = client.post("/v1/query", json={"question": "What does Globex Corporation make?",
                                           "conversation_id": cid, "max_tokens": 6})  # fmt: skip
    assert first.status_code == 200, first.text
    follow_up = client.post(
        "/v1/query", json={"question": "And who founded it?", "conversation_id": cid, "max_tokens": 6}
    ).json()
    assert follow_up["question"] == "Who founded Globex Corporation?"
    assert follow_up["conversation_id"] == cid and follow_up["collection"] == "default"
    assert follow_up["sources"][0]["title"] == "Globex Corporation"

    stored = client.get(f"/v1/conversations/{cid}").json()
    assert stored["title"] == "What does Globex Corporation make?"
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    question, answer = stored["messages"][2:]
    assert (
        question["content"] == "And who founded it?"
        and question["question"] == "Who founded Globex Corporation?"
    )
    assert answer["content"] == follow_up["answer"]
    assert (
        answer["reply"]["sources"] == follow_up["sources"] and answer["reply"]["cited"] == follow_up["cited"]
    )
    listed = client.get("/v1/conversations").json()["conversations"]
    assert [c["id"] for c in listed] == [cid] and listed[0]["messages"] == []

    wrong = client.post("/v1/query", json={"question": "x", "conversation_id": cid, "collection": "other"})
    assert wrong.status_code == 422 and "default" in wrong.json()["detail"]
    assert client.post("/v1/query", json={"question": "x", "conversation_id": "nope"}).status_code == 404
    assert len(client.get(f"/v1/conversations/{cid}").json()["messages"]) == 4

    assert client.delete(f"/v1/conversations/{cid}").status_code == 200
    assert client.get(f"/v1/conversations/{cid}").status_code == 404
    assert client.get("/v1/conversations").json()["conversations"] == []
