"""The `openai` backend: a `Generator` over one or more OpenAI-compatible servers (`archivist engine serve`,
vLLM, SGLang, llama.cpp's server, Ollama), chosen with `ARCHIVIST_LLM_BACKEND=openai` and `ARCHIVIST_LLM_URL`.

Requests go round-robin over the URLs. A server that cannot be reached, or answers 5xx, before the first token
is taken out of rotation for `RETRY_DEAD_AFTER_S` and the request goes to the next one; when none answers the
request fails with `BackendUnavailableError` (a 503 in the API, never the no-answer reply). Closing a stream
closes its HTTP response, which cancels the generation on the server.

Tokens are counted with a local tokenizer when one is given (a GGUF file or a model folder); otherwise they
are estimated as one per 3 bytes of UTF-8, which over-counts English (about 4 to 5 bytes a token) and matches
Chinese (3 bytes a character, about a token each), so passages are never fitted past the context window.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from llm.base import (
    NO_ADAPTER,
    ChatMessage,
    ContextOverflowError,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
)

RETRY_DEAD_AFTER_S = 10.0
BYTES_PER_TOKEN = 3


class BackendUnavailableError(RuntimeError):
    """No LLM server answered (503 with Retry-After)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": "5"}


class RemoteGenerator:
    """A `Generator` whose model runs on OpenAI-compatible servers at `urls` (each with or without `/v1`)."""

    reports_logprobs = True  # asked of the server (`logprobs`, `top_logprobs`); one that cannot answers 400

    def __init__(
        self,
        urls: Sequence[str],
        model: str | None = None,
        api_key: str | None = None,
        context_window: int = 4096,
        max_concurrency: int = 8,
        tokenizer: Path | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        if not urls:
            raise ValueError("the openai backend needs at least one server URL (ARCHIVIST_LLM_URL)")
        self.urls = [url.rstrip("/").removesuffix("/v1") for url in urls]
        self.max_concurrency = max_concurrency * len(self.urls)
        self._model = model
        self._context_window = context_window
        self._adapters: tuple[str, ...] = ()
        self._discovered = False
        self._discover_after = 0.0  # a failed discovery is not retried before this (time.monotonic)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=2.0), headers=self._headers)
        self._lock = threading.Lock()
        self._next = 0
        self._dead_until: dict[str, float] = {}
        self._tokenizer = None
        if tokenizer is not None:
            from llm.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(tokenizer)

    # -- what the model is: asked of the servers once one answers ----------------------------------------

    def _discover(self) -> None:
        """The model id, served adapters and context window from the first server that lists its models.
        While none answers, tried once per `RETRY_DEAD_AFTER_S`: every request reads the properties."""
        if self._discovered or time.monotonic() < self._discover_after:
            return
        for url in self.urls:
            try:
                response = self._client.get(f"{url}/v1/models", timeout=3.0)
                response.raise_for_status()
                cards = response.json()["data"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            ids = [str(card["id"]) for card in cards]
            name = self._model or (ids[0] if ids else None)
            if name is None:
                continue
            card = next((c for c in cards if c["id"] == name), cards[0])
            self._model = name
            served = (i.removeprefix(f"{name}+") for i in ids if i.startswith(f"{name}+"))
            self._adapters = tuple(a for a in served if a != NO_ADAPTER)
            self._context_window = int(card.get("max_model_len") or self._context_window)
            self._discovered = True
            return
        self._discover_after = time.monotonic() + RETRY_DEAD_AFTER_S

    @property
    def name(self) -> str:
        self._discover()
        return self._model or "openai"

    @property
    def context_window(self) -> int:
        self._discover()
        return self._context_window

    @property
    def adapters(self) -> tuple[str, ...]:
        self._discover()
        return self._adapters

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text))
        return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)

    def unavailable(self) -> str | None:
        """Why no server can take a request now (for `/readyz`), or None when one can."""
        problems = []
        for url in self.urls:
            try:
                self._client.get(f"{url}/v1/models", timeout=2.0).raise_for_status()
                return None
            except httpx.HTTPError as error:
                problems.append(f"{url}: {_reason(error)}")
        return "no LLM server answers: " + "; ".join(problems)

    def shutdown(self) -> None:
        self._client.close()

    # -- generating ------------------------------------------------------------------------------------

    def _rotation(self) -> list[str]:
        """The URLs from the next in turn, those out of rotation last (tried only when the rest fail)."""
        with self._lock:
            start, self._next = self._next, (self._next + 1) % len(self.urls)
            now = time.monotonic()
            ordered = self.urls[start:] + self.urls[:start]
            return sorted(ordered, key=lambda url: self._dead_until.get(url, 0.0) > now)

    def _take_out(self, url: str) -> None:
        with self._lock:
            self._dead_until[url] = time.monotonic() + RETRY_DEAD_AFTER_S

    def _body(self, messages: Sequence[ChatMessage], params: SamplingParams) -> dict[str, Any]:
        model = self.name if params.adapter is None else f"{self.name}+{params.adapter}"
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        extras: dict[str, tuple[Any, Any]] = {
            "presence_penalty": (params.presence_penalty, 0.0),
            "seed": (params.seed, None),
            "stop": (list(params.stop), []),
            "top_k": (params.top_k, 0),  # vLLM, SGLang and llama.cpp extensions, like the two below
            "min_p": (params.min_p, 0.0),
            "repetition_penalty": (params.repetition_penalty, 1.0),
            "opening_bias": ([list(pair) for pair in params.opening_bias], []),  # `archivist engine serve`'s
        }
        body.update({key: value for key, (value, default) in extras.items() if value != default})
        if params.copy_spans is not None:  # `archivist engine serve`'s too
            body["copy_spans"] = dataclasses.asdict(params.copy_spans)
        if params.logprobs is not None:
            body.update(logprobs=True, top_logprobs=params.logprobs)
        return body

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Iterator[GenerationEvent]:
        body = self._body(messages, params)
        failures = []
        for url in self._rotation():
            try:
                with self._client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                    if response.status_code >= 500:
                        failures.append(f"{url}: HTTP {response.status_code}")
                        self._take_out(url)
                        continue
                    if response.status_code >= 400:
                        response.read()
                        _raise_for_request(response, url)
                    yield from _events(response, url)
                    return
            except httpx.TransportError as error:  # before the first token: another server may answer
                failures.append(f"{url}: {_reason(error)}")
                self._take_out(url)
        raise BackendUnavailableError("no LLM server answered: " + "; ".join(failures))


def _reason(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        return str(error.get("message") if isinstance(error, dict) else error or response.text)
    except (ValueError, AttributeError):
        return response.text[:300]


def _raise_for_request(response: httpx.Response, url: str) -> None:
    """A 4xx: the request, not the server, is at fault (or the key, which no other server would take)."""
    if response.status_code < 400:
        return
    message = _message(response)
    if response.status_code == 404:
        raise UnknownAdapterError(f"the LLM server at {url}: {message}")
    if response.status_code == 400 and "context" in message.lower():
        raise ContextOverflowError(f"the LLM server at {url}: {message}")
    if response.status_code in (401, 403):
        raise BackendUnavailableError(
            f"the LLM server at {url} refused the key (ARCHIVIST_LLM_API_KEY): {message}"
        )
    raise ValueError(f"the LLM server at {url} refused the request (HTTP {response.status_code}): {message}")


def _token_logprobs(logprobs: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    """A chat chunk's `logprobs.content` as events carry it."""
    entries = (logprobs or {}).get("content") or []
    return tuple(
        TokenLogprob(
            entry["token"],
            float(entry["logprob"]),
            tuple((top["token"], float(top["logprob"])) for top in entry.get("top_logprobs") or ()),
        )
        for entry in entries
    )


def _events(response: httpx.Response, url: str) -> Iterator[GenerationEvent]:
    """The server's chunks as events; the last carries the finish reason and the token counts."""
    finish: FinishReason = "stop"
    prompt_tokens = completion_tokens = 0
    try:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                yield GenerationEvent("", "error")
                return
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                tokens = _token_logprobs(choice.get("logprobs"))
                if text or tokens:
                    completion_tokens += 1
                    yield GenerationEvent(text, logprobs=tokens)
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
            if usage := chunk.get("usage"):
                prompt_tokens = int(usage.get("prompt_tokens") or 0)
                completion_tokens = int(usage.get("completion_tokens") or completion_tokens)
    except httpx.HTTPError as error:  # the server went away mid-answer: too late to ask another
        raise BackendUnavailableError(
            f"the LLM server at {url} stopped mid-answer: {_reason(error)}"
        ) from error
    yield GenerationEvent("", finish, prompt_tokens, completion_tokens)
