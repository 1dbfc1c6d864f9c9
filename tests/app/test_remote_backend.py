"""The engine as a service of its own (`archivist engine serve`) and the `openai` backend that calls it: a
real engine server subprocess on loopback, spoken to by the OpenAI client and by the RAG service through
`RemoteGenerator`; same greedy answers as the engine in process; a dead server is skipped, all of them dead
is a 503 that names them, never the no-answer reply."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.services import Services
from llm.base import ChatMessage, SamplingParams, collect
from llm.remote import BackendUnavailableError, RemoteGenerator
from retriever.store import KnowledgeBase
from tests.app.live import free_port
from tests.app.test_streaming import OWLS
from tests.conftest import make_settings, service_engine

KEY = "engine-test-key-5c1d9e"
QUESTION = {"question": "How far can an owl turn its head?", "max_tokens": 24}
HELLO = [ChatMessage("user", "Name three colours of the rainbow.")]


def start_engine(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    """`archivist engine serve` as the session's in-process engine is built: the default model, no adapter,
    eager decode, 4096 tokens, 16 sequences; once it answers /healthz."""
    env = {**os.environ, "ARCHIVIST_DATA_DIR": str(tmp_path / "engine"), "ARCHIVIST_LLM_ADAPTER": "",
           "ARCHIVIST_LLM_ENFORCE_EAGER": "true", "ARCHIVIST_LLM_MAX_NUM_SEQS": "16",
           "ARCHIVIST_LLM_MAX_MODEL_LEN": "4096", "ARCHIVIST_LLM_API_KEY": KEY}  # fmt: skip
    log = (tmp_path / f"engine-{port}.log").open("wb")
    command = [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, (tmp_path / f"engine-{port}.log").read_text()
        assert time.monotonic() < deadline, "the engine server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def generator():  # type: ignore[no-untyped-def]
    """This module's own engine in process, so that its prefix cache holds what the server's holds: the
    session's engine, filled by earlier tests, reuses cached blocks of a RAG prompt where the server computes
    them afresh, and the last bits of difference may tip one of SmolLM2's near-ties the other way."""
    engine = service_engine()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    server = start_engine(tmp_path_factory.mktemp("engine"), port)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def test_the_engine_server_speaks_openai_and_answers_as_the_engine_in_process(
    engine_url: str, generator
) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key=KEY)
    [model] = [card.id for card in client.models.list().data if "+" not in card.id]
    assert model == generator.name
    expected = collect(generator.stream(HELLO, SamplingParams(max_new_tokens=16)))
    whole = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": HELLO[0].content}], max_tokens=16, temperature=0
    )
    assert whole.choices[0].message.content == expected.text
    assert whole.usage is not None and whole.usage.completion_tokens == expected.completion_tokens
    streamed = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": HELLO[0].content}], max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    stopped = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": HELLO[0].content}], max_tokens=16, temperature=0,
        stop=[expected.text.split()[1]],
    )  # fmt: skip
    assert len(stopped.choices[0].message.content or "") < len(expected.text)


def test_text_completions_continue_the_prompt_as_the_engine_in_process_does(
    engine_url: str, generator
) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key=KEY)
    prompt = "The three primary colours are"
    expected = collect(generator.complete(prompt, SamplingParams(max_new_tokens=12)))
    whole = client.completions.create(model=generator.name, prompt=prompt, max_tokens=12, temperature=0)
    assert whole.choices[0].text == expected.text and whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.prompt_tokens == expected.prompt_tokens
    streamed = client.completions.create(model=generator.name, prompt=prompt, max_tokens=12, temperature=0,
                                         stream=True)  # fmt: skip
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected.text


def test_logprobs_in_process_are_the_models_score_of_the_reply(generator) -> None:  # type: ignore[no-untyped-def]
    """Each generated token with its log-probability, equal to the model's score of the whole reply read back
    in one prefill (within bfloat16's reach: decode reads the cached keys and values, scoring computes them
    afresh; a token off by one position would be off by far more); greedy and unconstrained, the chosen
    token is the best of its alternatives."""
    events = list(generator.stream(HELLO, SamplingParams(max_new_tokens=16, logprobs=3)))
    tokens = [token for event in events for token in event.logprobs]
    text = "".join(event.text for event in events)
    assert text and "".join(t.token for t in tokens) == text
    assert len(tokens) == events[-1].completion_tokens - (events[-1].finish_reason == "stop")  # not the EOS
    for token in tokens:  # the chosen token is a best one (two can tie exactly; either may be listed first)
        assert len(token.top) == 3 and (token.token, token.logprob) in token.top
        assert token.top[0][1] == token.logprob
        assert [lp for _, lp in token.top] == sorted((lp for _, lp in token.top), reverse=True)
    prompt, reply = generator.tokenizer.apply_chat_template(HELLO), generator.tokenizer.encode(text)
    assert [generator.engine.decode([i]) for i in reply] == [t.token for t in tokens]
    scored = generator.engine.runner.score(prompt + reply)[len(prompt) - 1 :].tolist()
    assert [t.logprob for t in tokens] == pytest.approx(scored, abs=0.15)


def test_logprobs_through_the_server_and_the_openai_backend_equal_those_in_process(
    engine_url: str, generator
) -> None:  # type: ignore[no-untyped-def]
    expected = [
        t for e in generator.stream(HELLO, SamplingParams(max_new_tokens=16, logprobs=2)) for t in e.logprobs
    ]
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key=KEY)
    asked = {"model": generator.name, "messages": [{"role": "user", "content": HELLO[0].content}],
             "max_tokens": 16, "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    whole = client.chat.completions.create(**asked)
    content = whole.choices[0].logprobs.content
    assert [c.token for c in content] == [t.token for t in expected]
    assert [c.logprob for c in content] == pytest.approx([t.logprob for t in expected], abs=1e-3)
    assert all(c.bytes == list(c.token.encode()) and len(c.top_logprobs) == 2 for c in content)
    streamed = list(client.chat.completions.create(**asked, stream=True))
    pieces = [c.choices[0].logprobs.content for c in streamed if c.choices and c.choices[0].logprobs]
    assert [token.token for piece in pieces for token in piece] == [t.token for t in expected]
    plain = client.chat.completions.create(**{**asked, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None
    text = client.completions.create(model=generator.name, prompt="The three primary colours are",
                                     max_tokens=8, temperature=0, logprobs=2)  # fmt: skip
    legacy = text.choices[0].logprobs
    assert "".join(legacy.tokens) == text.choices[0].text and len(legacy.token_logprobs) == len(legacy.tokens)
    assert legacy.text_offset == [sum(len(t) for t in legacy.tokens[:i]) for i in range(len(legacy.tokens))]
    assert all(1 <= len(top) <= 2 for top in legacy.top_logprobs)
    remote = RemoteGenerator([engine_url], api_key=KEY)
    through = [
        t for e in remote.stream(HELLO, SamplingParams(max_new_tokens=16, logprobs=2)) for t in e.logprobs
    ]
    assert [t.token for t in through] == [t.token for t in expected]
    assert [[a for a, _ in t.top] for t in through] == [[a for a, _ in t.top] for t in expected]
    assert [lp for t in through for _, lp in t.top] == pytest.approx(
        [lp for t in expected for _, lp in t.top], abs=1e-3
    )


def test_the_engine_server_refuses_what_it_cannot_do(engine_url: str) -> None:
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key=KEY)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{engine_url}/v1", api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model=client.models.list().data[0].id, top_logprobs=2,
                                       messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    with pytest.raises(
        openai.BadRequestError, match="top_logprobs: Input should be less than or equal to 20"
    ):
        client.chat.completions.create(model=client.models.list().data[0].id, logprobs=True, top_logprobs=21,
                                       messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="copy_spans"):
        client.chat.completions.create(model=client.models.list().data[0].id, extra_body={"copy_spans": {}},
                                       messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=client.models.list().data[0].id,
                                       messages=[{"role": "user", "content": "owl " * 5000}])  # fmt: skip


def test_rag_answers_through_the_servers_equal_those_of_the_engine_in_process(
    tmp_path: Path,
    kb: KnowledgeBase,
    generator,  # type: ignore[no-untyped-def]
    engine_url: str,
) -> None:
    """The first URL has nothing listening: it is skipped, and the answers come from the engine server."""
    local = make_settings(tmp_path / "data", answer_cache_size=0)
    with TestClient(create_app(Services(local, kb=kb, generator=generator))) as client:
        assert client.post("/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
        expected = client.post("/v1/query", json=QUESTION).json()
    remote = make_settings(tmp_path / "data", llm_backend="openai", llm_api_key=KEY, answer_cache_size=0,
                           llm_url=f"http://127.0.0.1:{free_port()},{engine_url}")  # fmt: skip
    services = Services(remote, kb=kb)
    with TestClient(create_app(services)) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        for _ in range(2):  # one of the two goes to the dead URL first, and on to the live one
            answered = client.post("/v1/query", json={**QUESTION})
            assert answered.status_code == 200, answered.text
            assert answered.json()["answer"] == expected["answer"]
            assert answered.json()["sources"] == expected["sources"]
        with client.stream("POST", "/v1/query", json={**QUESTION, "stream": True}) as streamed:
            assert streamed.status_code == 200 and "event: done" in streamed.read().decode()


@pytest.fixture(scope="module")
def llama_cpp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's own OpenAI-compatible server (`python -m llama_cpp.server`) on the default model's GGUF."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    from llm.locate import default_llm_path

    port = free_port()
    log = (tmp_path_factory.mktemp("llama-cpp") / "server.log").open("wb")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_llm_path()),
               "--port", str(port), "--n_ctx", "4096"]  # fmt: skip
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None and time.monotonic() < deadline, "llama.cpp's server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def test_the_openai_backend_on_llama_cpps_server(
    tmp_path: Path, kb: KnowledgeBase, llama_cpp_url: str
) -> None:
    """Another engine's server as the backend: it ignores our extensions (the refusal margin, copied spans)
    and the service still answers, streamed or not, with passages; logprobs come back in OpenAI's layout."""
    remote = RemoteGenerator([llama_cpp_url])
    events = list(remote.stream(HELLO, SamplingParams(max_new_tokens=12, logprobs=2)))
    text = "".join(event.text for event in events)
    tokens = [token for event in events for token in event.logprobs]
    assert (
        text and "".join(t.token for t in tokens) == text and events[-1].finish_reason in ("stop", "length")
    )
    assert all(len(t.top) == 2 and t.logprob <= 0 for t in tokens)
    settings = make_settings(
        tmp_path / "data", llm_backend="openai", llm_url=llama_cpp_url, answer_cache_size=0
    )
    with TestClient(create_app(Services(settings, kb=kb))) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert client.post("/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
        answered = client.post("/v1/query", json=QUESTION)
        assert answered.status_code == 200, answered.text
        assert answered.json()["answer"] and answered.json()["sources"]
        with client.stream("POST", "/v1/query", json={**QUESTION, "stream": True}) as streamed:
            assert streamed.status_code == 200 and "event: done" in streamed.read().decode()


def test_no_server_answering_is_a_503_naming_them_and_readyz_says_why(
    tmp_path: Path,
    kb: KnowledgeBase,
) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    settings = make_settings(tmp_path / "data", llm_backend="openai", llm_url=",".join(dead))
    services = Services(settings, kb=kb)
    with TestClient(create_app(services)) as client:
        assert client.post("/v1/documents", files={"file": ("owls.md", OWLS)}).status_code == 201
        started = time.monotonic()
        refused = client.post("/v1/query", json=QUESTION)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
        assert all(url in refused.json()["detail"] for url in dead)
        assert time.monotonic() - started < 20
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["llm"] == "unavailable"
        assert "no LLM server answers" in ready.json()["errors"]["llm"]
    with pytest.raises(BackendUnavailableError):
        list(RemoteGenerator(dead).stream(HELLO, SamplingParams(max_new_tokens=4)))


def test_engine_serve_with_a_missing_model_or_the_openai_backend_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    base = {**os.environ, "ARCHIVIST_DATA_DIR": str(tmp_path / "data")}
    for settings, expected in (
        ({"ARCHIVIST_LLM_PATH": str(tmp_path / "nowhere.gguf")}, "nowhere.gguf"),
        (
            {"ARCHIVIST_LLM_BACKEND": "openai", "ARCHIVIST_LLM_URL": "http://127.0.0.1:9"},
            "ARCHIVIST_LLM_BACKEND",
        ),
    ):
        command = [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(free_port())]
        started = subprocess.run(
            command, env={**base, **settings}, capture_output=True, text=True, timeout=120
        )
        output = (started.stdout + started.stderr).strip()
        assert started.returncode == 2 and output.startswith("error:") and expected in output, output
        assert "Traceback" not in output
