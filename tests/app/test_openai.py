"""Acceptance: the official `openai` client, pointed at a real server on a loopback port with an API
key, lists the collections as models and gets a streamed answer with references."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from app.api.app import create_app
from app.services import Services
from retriever.store import KnowledgeBase
from tests.app.live import serve
from tests.conftest import make_settings

ADMIN = "admin-secret-for-tests"


@pytest.fixture
def api(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A server that requires keys, with two collections and a key that may read only `birds`."""
    settings = make_settings(tmp_path / "data", max_new_tokens=12, require_auth=True, admin_key=ADMIN)
    services = Services(settings, kb=kb, generator=generator)
    with serve(create_app(services)) as url:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for collection, name, content in (
            ("birds", "owls.md", b"# Owls\n\nOwls hunt at night. An owl can turn its head 270 degrees."),
            ("secret", "plans.md", b"# Plans\n\nThe secret launch date of the product is 12 May."),
        ):
            files = {"file": (name, content)}
            response = httpx.post(
                f"{url}/v1/documents", files=files, data={"collection": collection}, headers=admin
            )
            assert response.status_code == 201, response.text
        _, secret = services.keys.create("reader", read=["birds"])
        yield url, secret


def test_openai_client_streams_an_answer_with_references(api: tuple[str, str]) -> None:
    url, key = api
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    assert [model.id for model in client.models.list()] == ["archivist:birds"]

    stream = client.chat.completions.create(
        model="archivist:birds",
        messages=[{"role": "user", "content": "How far can an owl turn its head?"}],
        stream=True,
        max_tokens=12,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    [last] = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert last.choices[0].finish_reason in ("stop", "length")
    references = (last.model_extra or {})["references"]
    assert (
        references[0]["title"] == "Owls"
        and references[0]["n"] == 1
        and "270 degrees" in references[0]["text"]
    )
    assert all(set(ref) >= {"cited", "document_id", "chunk_id", "score"} for ref in references)
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 12
    assert len({chunk.id for chunk in chunks}) == 1

    whole = client.chat.completions.create(
        model="archivist:birds",
        messages=[{"role": "user", "content": "How far can an owl turn its head?"}],
        max_tokens=12,
    )
    assert whole.choices[0].message.content and whole.choices[0].message.role == "assistant"
    assert (whole.model_extra or {})["references"][0]["title"] == "Owls"
    assert whole.usage is not None and whole.usage.prompt_tokens > 20


def test_openai_client_errors_for_wrong_keys_models_and_collections(api: tuple[str, str]) -> None:
    url, key = api
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="ak_not-a-key", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    question = [{"role": "user", "content": "When is the launch?"}]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="archivist:secret", messages=question)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=question)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="archivist:birds", messages=[{"role": "assistant", "content": "I end the chat"}]
        )
