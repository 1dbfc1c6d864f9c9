"""The Streamlit chat page driven by `AppTest` against a real API server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from app.api.app import create_app
from app.rag.grounding import NO_ANSWER
from app.services import Services
from retriever.store import KnowledgeBase
from tests.app.live import free_port, serve
from tests.conftest import make_settings
from ui.app import CITED, REFUSALS

PAGE = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
OWLS = b"# Owls\n\nOwls hunt at night. An owl can turn its head 270 degrees."


@pytest.fixture
def api_url(tmp_path: Path, kb: KnowledgeBase, generator) -> Iterator[str]:  # type: ignore[no-untyped-def]
    services = Services(make_settings(tmp_path / "data", max_new_tokens=12), kb=kb, generator=generator)
    with serve(create_app(services)) as url:
        yield url


def fresh_page(api_url: str, monkeypatch: pytest.MonkeyPatch, **query: str) -> AppTest:
    monkeypatch.setenv("ARCHIVIST_API_URL", api_url)
    page = AppTest.from_file(PAGE, default_timeout=180)
    page.query_params.update(query)
    page.run()
    return page


def test_ask_see_cited_sources_and_find_the_conversation_after_a_reload(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"file": ("owls.md", OWLS)}
    assert httpx.post(f"{api_url}/v1/documents", files=files, data={"collection": "birds"}).status_code == 201
    page = fresh_page(api_url, monkeypatch)
    assert not page.exception
    assert page.selectbox[0].options == ["birds"]
    assert [s.label for s in page.slider] == ["Passages (top-k)", "Temperature"]
    assert page.selectbox[1].options == ["hybrid", "dense", "lexical"]

    page.chat_input[0].set_value("How far can an owl turn its head?").run()
    assert not page.exception and not page.error
    user, assistant = page.chat_message
    assert user.markdown[0].value == "How far can an owl turn its head?"
    answer = assistant.markdown[0].value
    assert answer.strip()
    [source] = page.main.expander
    assert source.label.startswith("[1] Owls · chunk 0")
    passage = source.markdown[0].value
    assert "270 degrees" in passage
    reply = httpx.get(f"{api_url}/v1/conversations").json()["conversations"]
    [conversation] = reply
    assert page.query_params["c"] == conversation["id"]
    if f" · {CITED} · " in source.label:  # the supporting sentence is highlighted
        assert "<mark>An owl can turn its head 270 degrees.</mark>" in passage

    reloaded = fresh_page(api_url, monkeypatch, c=conversation["id"])
    assert not reloaded.exception
    assert [m.markdown[0].value for m in reloaded.chat_message] == [
        "How far can an owl turn its head?",
        answer,
    ]
    assert [b.label for b in reloaded.sidebar.button if b.label.startswith("▶")] == [
        "▶ How far can an owl turn its head?"
    ]
    assert reloaded.main.expander[0].label == source.label

    # The passage shown in its document, marked, with the original file to download.
    reloaded.main.expander[0].toggle[0].set_value(True).run()
    assert not reloaded.exception and not reloaded.error
    view = reloaded.main.expander[0].markdown[1].value
    assert view.startswith("<div>") and "270 degrees" in view.split("<mark>")[1].split("</mark>")[0]
    shown = view.removeprefix("<div>").removesuffix("</div>").replace("<mark>", "").replace("</mark>", "")
    assert shown == OWLS.decode().replace("\n", "<br>")
    [download] = reloaded.get("download_button")
    assert download.proto.label == "Download owls.md"


def test_a_no_answer_reply_says_why(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"file": ("owls.md", OWLS)}
    assert httpx.post(f"{api_url}/v1/documents", files=files, data={"collection": "birds"}).status_code == 201
    page = fresh_page(api_url, monkeypatch)
    page.chat_input[0].set_value("What is the boiling point of mercury in kelvin?").run()
    assert not page.exception and not page.error
    _, assistant = page.chat_message
    assert assistant.markdown[0].value == NO_ANSWER
    assert [caption.value for caption in assistant.caption] == [REFUSALS["relevance"]]


def test_upload_runs_a_job_and_reports_each_file(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    page = fresh_page(api_url, monkeypatch)
    assert page.selectbox[0].options == []
    page.text_input[0].set_value("notes")
    page.get("file_uploader")[0].set_value(
        [("owls.md", OWLS, "text/markdown"), ("blank.txt", b"   ", "text/plain")]
    ).run()
    page.sidebar.button[-1].click().run()
    assert not page.exception
    assert "owls.md: added" in [m.value for m in page.sidebar.markdown]
    [warning] = page.sidebar.warning
    assert warning.value.startswith("blank.txt: skipped") or warning.value.startswith("blank.txt: failed")
    page.run()
    assert page.selectbox[0].options == ["notes"]


def test_page_reports_an_unreachable_api(monkeypatch: pytest.MonkeyPatch) -> None:
    page = fresh_page(f"http://127.0.0.1:{free_port()}", monkeypatch)
    assert not page.exception
    assert "cannot reach the Archivist API" in page.error[0].value


def test_page_reports_a_refusal_with_its_retry_time(
    tmp_path: Path,
    kb: KnowledgeBase,
    generator,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(tmp_path / "data", require_auth=True, rate_limit_per_minute=1)
    services = Services(settings, kb=kb, generator=generator)
    _, key = services.keys.create("page", read=["*"])
    monkeypatch.setenv("ARCHIVIST_API_KEY", key)
    with serve(create_app(services)) as url:
        kb.ensure_collection("birds")
        page = fresh_page(url, monkeypatch)  # the second request of the page is over the limit
    assert not page.exception
    assert "429" in page.error[0].value and "try again in" in page.error[0].value
