"""The Streamlit chat page driven by `AppTest` against a real API server on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from streamlit.testing.v1 import AppTest

from app.api import create_app
from app.services import Services
from app.settings import Settings
from retriever.store import KnowledgeBase

PAGE = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def api_url(settings: Settings, kb: KnowledgeBase, generator) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Services(settings, kb=kb, generator=generator)), port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def fresh_page(api_url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("ARCHIVIST_API_URL", api_url)
    page = AppTest.from_file(PAGE, default_timeout=120)
    page.run()
    return page


def test_ask_and_see_numbered_sources(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    files = {"file": ("owls.md", b"# Owls\n\nOwls hunt at night and can turn their heads 270 degrees.")}
    assert httpx.post(f"{api_url}/v1/documents", files=files, data={"collection": "birds"}).status_code == 201
    page = fresh_page(api_url, monkeypatch)
    assert not page.exception
    assert page.selectbox[0].options == ["birds"]
    page.chat_input[0].set_value("How far can owls turn their heads?").run()
    assert not page.exception and not page.error
    user, assistant = page.chat_message
    assert user.markdown[0].value == "How far can owls turn their heads?"
    assert assistant.markdown[0].value.strip()
    [source] = page.expander
    assert source.label.startswith("[1] Owls · chunk 0")
    assert "270 degrees" in source.markdown[0].value


def test_page_reports_an_unreachable_api(monkeypatch: pytest.MonkeyPatch) -> None:
    page = fresh_page(f"http://127.0.0.1:{free_port()}", monkeypatch)
    assert not page.exception
    assert "cannot reach the Archivist API" in page.error[0].value
