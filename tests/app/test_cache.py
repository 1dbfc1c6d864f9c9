"""The answer cache: the same (collection version, normalized question, settings) is answered from the
cache without generating; any change to the collection invalidates it; the hit rate is in the metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.rag.cache import AnswerCache, CacheKey, normalize_question
from app.rag.pipeline import Answer
from tests.app.test_streaming import LAVA, OWLS, read_events


def generations(client: TestClient) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("archivist_generations_total")
    )


def test_normalization_and_eviction_of_older_versions() -> None:
    assert normalize_question("  How far can an  OWL turn its head?? ") == "how far can an owl turn its head"
    assert normalize_question("Ｗｈｅｒｅ is Etna。") == "where is etna"
    cache = AnswerCache(max_entries=2)
    old, new = CacheKey("c", 1, "q", "s"), CacheKey("c", 2, "q", "s")
    cache.put(old, Answer("a", [], []))
    cache.put(new, Answer("b", [], []))
    assert cache.get(old) is None and cache.get(new) is not None  # storing version 2 dropped version 1
    assert (cache.hits, cache.misses, cache.hit_rate) == (1, 1, 0.5)


def test_repeated_questions_come_from_the_cache_until_the_collection_changes(client: TestClient) -> None:
    client.post("/v1/documents", files={"file": ("owls.md", OWLS)})
    first = client.post("/v1/query", json={"question": "How far can an owl turn its head?", "max_tokens": 6})
    assert first.status_code == 200 and first.json()["cached"] is False
    assert generations(client) == 1

    again = client.post(
        "/v1/query", json={"question": "  how far can an OWL turn its head ", "max_tokens": 6}
    )
    assert again.json()["cached"] is True
    assert (
        again.json()["answer"] == first.json()["answer"]
        and again.json()["sources"] == first.json()["sources"]
    )
    with client.stream("POST", "/v1/query", json={"question": "How far can an owl turn its head?",
                                                  "max_tokens": 6, "stream": True}) as streamed:  # fmt: skip
        events = list(read_events(streamed.iter_lines()))
    assert [kind for kind, _ in events] == ["sources", "delta", "done"] and events[-1][1]["cached"] is True
    assert generations(client) == 1
    assert "archivist_answer_cache_hit_rate 0.666" in client.get("/metrics").text

    # Other settings, or sampling, are not the same question.
    assert client.post("/v1/query", json={"question": "How far can an owl turn its head?", "max_tokens": 5,
                                          "top_k": 1}).json()["cached"] is False  # fmt: skip
    sampled = {"question": "How far can an owl turn its head?", "max_tokens": 6, "temperature": 0.8}
    assert client.post("/v1/query", json=sampled).json()["cached"] is False
    assert client.post("/v1/query", json=sampled).json()["cached"] is False
    assert generations(client) == 4

    # A new document changes the collection: the cached answer is not served any more.
    client.post("/v1/documents", files={"file": ("etna.md", LAVA)})
    after = client.post("/v1/query", json={"question": "How far can an owl turn its head?", "max_tokens": 6})
    assert after.json()["cached"] is False and generations(client) == 5
