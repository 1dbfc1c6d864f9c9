"""The engine as a service: an OpenAI-compatible HTTP API over one `Generator` (`archivist engine serve`), so
that API replicas share engine processes (`ARCHIVIST_LLM_BACKEND=openai`, `llm.remote`) and any OpenAI client
can use the model.

- `GET /v1/models`: the model, and `<model>+<adapter>` for each LoRA adapter it serves (`<model>+none`: the
  base model), each with `max_model_len` as vLLM reports it.
- `POST /v1/chat/completions`: streamed (server-sent events, `stream_options.include_usage`) or not, with
  `max_tokens`, `temperature`, `top_p`, `top_k`, `min_p`, `presence_penalty`, `repetition_penalty`, `seed`,
  `stop`, `opening_bias` (the RAG service's refusal margin, `SamplingParams.opening_bias`) and `copy_spans`
  (its answers copied from the passages, `SamplingParams.copy_spans`), and `logprobs` with `top_logprobs`
  (the engine backend; another answers 400): each generated token's log-probability under the model's own
  distribution, before temperature, penalties and constraints. Closing the stream cancels the generation.
  `n > 1` and `frequency_penalty` are refused, not ignored.
- `POST /v1/completions`: the same for a raw `prompt`, continued without the chat template (the engine
  backend; another answers 400); `logprobs` is there the number of alternatives, in the legacy layout
  (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
- `GET /healthz`, and `GET /metrics`: the engine's counters as Prometheus gauges.

With an API key set, every route but `/healthz` wants it as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llm.base import (
    MAX_TOP_LOGPROBS,
    NO_ADAPTER,
    ChatMessage,
    ContextOverflowError,
    GenerationEvent,
    Generator,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
    served_adapters,
)
from llm.copying import CopySpans


class ApiError(Exception):
    """An OpenAI-style error: `{"error": {"message", "type", "code"}}` with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class MessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class CopySpansIn(BaseModel):
    """`SamplingParams.copy_spans`: the reply copies its words from `sources` (or is one of `replies`)."""

    sources: list[str] = Field(default_factory=list, max_length=64)
    replies: list[str] = Field(default_factory=list, max_length=8)
    tail_opener: str = "["
    max_tail_tokens: int = Field(8, ge=0, le=64)

    def spans(self) -> CopySpans:
        return CopySpans(tuple(self.sources), tuple(self.replies), self.tail_opener, self.max_tail_tokens)


class SamplingRequest(BaseModel):
    """What chat and text completions share: the model, streaming, and how to sample."""

    model_config = ConfigDict(extra="ignore")  # other OpenAI fields (user, metadata, ...) change nothing

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, lt=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    opening_bias: list[tuple[str, float]] = Field(default_factory=list)
    copy_spans: CopySpansIn | None = None

    def logprobs_wanted(self) -> int | None:
        """How many alternatives per token to report (0: the chosen token only); None: no logprobs."""
        raise NotImplementedError


class ChatRequest(SamplingRequest):
    messages: list[MessageIn] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def logprobs_wanted(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    prompt: str = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def logprobs_wanted(self) -> int | None:
        return self.logprobs


def _adapter(model: str, name: str, adapters: tuple[str, ...]) -> str | None:
    """The adapter a model id asks for: `<model>` the default one, `<model>+<adapter>` that one."""
    base, plus, adapter = model.partition("+")
    if base != name or (plus and adapter != NO_ADAPTER and adapter not in adapters):
        known = ", ".join([name, *(f"{name}+{a}" for a in (*adapters, NO_ADAPTER))])
        raise ApiError(404, f"model {model!r} does not exist; this server has: {known}", "model_not_found")
    return adapter if plus else None


def sampling_params(
    request: SamplingRequest, adapter: str | None, max_tokens: int, reports_logprobs: bool
) -> SamplingParams:
    logprobs = request.logprobs_wanted()
    unsupported = [
        what
        for what, asked in (
            ("logprobs (with this backend)", logprobs is not None and not reports_logprobs),
            ("n > 1", request.n != 1),
            ("frequency_penalty", request.frequency_penalty != 0),
        )
        if asked
    ]
    if unsupported:
        raise ApiError(400, f"not supported by this server: {', '.join(unsupported)}")
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    try:
        return SamplingParams(
            max_new_tokens=request.max_completion_tokens or request.max_tokens or max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            seed=request.seed,
            stop=tuple(stop),
            adapter=adapter,
            opening_bias=tuple(request.opening_bias),
            copy_spans=request.copy_spans.spans() if request.copy_spans else None,
            logprobs=logprobs,
        )
    except ValueError as error:
        raise ApiError(400, str(error)) from error


def create_engine_app(generator: Generator, api_key: str | None = None, max_tokens: int = 256) -> FastAPI:
    """The server over `generator`; `max_tokens` is the reply length when a request gives none."""
    name, window = generator.name, generator.context_window
    adapters = served_adapters(generator)
    reports_logprobs = bool(getattr(generator, "reports_logprobs", False))

    def params_of(request: SamplingRequest) -> SamplingParams:
        return sampling_params(request, _adapter(request.model, name, adapters), max_tokens, reports_logprobs)

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(
                401, "a valid API key is needed: Authorization: Bearer <key>", "authentication_error"
            )

    app = FastAPI(title="Archivist engine", docs_url=None, redoc_url=None, openapi_url=None)
    keyed = [Depends(authorized)]

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": str(error), "type": error.kind, "code": error.status}},
            status_code=error.status,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """A 400 in OpenAI's shape naming each field at fault (never echoing the input, which may not even
        be JSON-encodable: NaN, lone surrogates)."""
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'] if part != 'body') or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        return await api_error(request, ApiError(400, f"invalid request: {problems}"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/v1/models", dependencies=keyed)
    def models() -> dict[str, Any]:
        ids = [name, *(f"{name}+{adapter}" for adapter in (*adapters, NO_ADAPTER))]
        cards = [
            {"id": i, "object": "model", "created": 0, "owned_by": "archivist", "max_model_len": window}
            for i in ids
        ]
        return {"object": "list", "data": cards}

    @app.get("/metrics", dependencies=keyed)
    def metrics() -> PlainTextResponse:
        stats = getattr(generator, "stats", None)
        figures = stats() if callable(stats) else {}
        lines = [f"archivist_engine_{key} {float(value)}" for key, value in sorted(figures.items())]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions", dependencies=keyed, response_model=None)
    def chat_completions(request: ChatRequest) -> JSONResponse | StreamingResponse:
        params = params_of(request)
        messages = [
            ChatMessage("system" if m.role == "developer" else m.role, m.content) for m in request.messages
        ]
        return _respond(
            request, lambda: generator.stream(messages, params), CHAT, params.logprobs is not None
        )

    @app.post("/v1/completions", dependencies=keyed, response_model=None)
    def completions(request: CompletionRequest) -> JSONResponse | StreamingResponse:
        """The prompt continued as it is, without the chat template (a backend that can)."""
        complete = getattr(generator, "complete", None)
        if not callable(complete):
            raise ApiError(400, "this backend serves chat completions only: use /v1/chat/completions")
        params = params_of(request)
        return _respond(request, lambda: complete(request.prompt, params), TEXT, params.logprobs is not None)

    return app


@dataclass(frozen=True)
class Shape:
    """How a kind of completion is written: its id prefix, object names, and where the text goes."""

    prefix: str
    whole: str
    chunk: str
    chat: bool


CHAT = Shape("chatcmpl", "chat.completion", "chat.completion.chunk", chat=True)
TEXT = Shape("cmpl", "text_completion", "text_completion", chat=False)


def _respond(
    request: SamplingRequest, start: Callable[[], Iterator[GenerationEvent]], shape: Shape, logprobs: bool
) -> JSONResponse | StreamingResponse:
    try:
        events = start()
    except ContextOverflowError as error:
        raise ApiError(400, str(error), "context_length_exceeded") from error
    except UnknownAdapterError as error:
        raise ApiError(404, str(error), "model_not_found") from error
    except ValueError as error:
        raise ApiError(400, str(error)) from error
    completion = f"{shape.prefix}-{uuid.uuid4().hex}"
    if request.stream:
        usage = request.stream_options is not None and request.stream_options.include_usage
        return StreamingResponse(
            _sse(events, completion, request.model, usage, shape, logprobs), media_type="text/event-stream"
        )
    return _whole(events, completion, request.model, shape, logprobs)


_LOWEST_LOGPROB = -9999.0  # what a log-probability of minus infinity is reported as (JSON has no infinity)


def _logprobs(shape: Shape, tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """Tokens with their log-probabilities as OpenAI lays them out: per token for chat completions; the
    legacy parallel lists for text completions, whose `text_offset` counts from `offset`."""

    def value(logprob: float) -> float:
        return max(logprob, _LOWEST_LOGPROB)

    if shape.chat:

        def entry(token: str, logprob: float) -> dict[str, Any]:
            return {"token": token, "logprob": value(logprob), "bytes": list(token.encode())}

        return {
            "content": [
                {**entry(t.token, t.logprob), "top_logprobs": [entry(*a) for a in t.top]} for t in tokens
            ]
        }
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [value(t.logprob) for t in tokens],
        "top_logprobs": [{a: value(lp) for a, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def _usage(event: GenerationEvent) -> dict[str, int]:
    total = event.prompt_tokens + event.completion_tokens
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": total,
    }


def _whole(
    events: Iterator[GenerationEvent], completion: str, model: str, shape: Shape, logprobs: bool
) -> JSONResponse:
    pieces, last = [], GenerationEvent("")
    tokens: list[TokenLogprob] = []
    for event in events:
        pieces.append(event.text)
        tokens.extend(event.logprobs)
        last = event
    if last.finish_reason == "error":
        raise ApiError(500, "the engine failed while generating; see the engine's log", "server_error")
    text = "".join(pieces)
    content: dict[str, Any] = (
        {"message": {"role": "assistant", "content": text}} if shape.chat else {"text": text}
    )
    choice = {"index": 0, **content, "logprobs": _logprobs(shape, tokens) if logprobs else None,
              "finish_reason": last.finish_reason or "stop"}  # fmt: skip
    body = {"id": completion, "object": shape.whole, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": _usage(last)}  # fmt: skip
    return JSONResponse(body)


def _sse(
    events: Iterator[GenerationEvent], completion: str, model: str, usage: bool, shape: Shape, logprobs: bool
) -> Iterator[str]:
    """The events as server-sent chunks. Leaving early (the client went away) closes `events`, which
    cancels the generation."""
    created = int(time.time())
    offset = 0  # of the next token in the text so far (text completions' `text_offset`)

    def chunk(
        delta: dict[str, str], finish: str | None = None, tokens: Sequence[TokenLogprob] = (), **extra: Any
    ) -> str:
        content: dict[str, Any] = {"delta": delta} if shape.chat else {"text": delta.get("content", "")}
        if logprobs and (delta or finish):
            content["logprobs"] = _logprobs(shape, tokens, offset) if tokens else None
        choices = [{"index": 0, **content, "finish_reason": finish}] if delta or finish else []
        body = {"id": completion, "object": shape.chunk, "created": created, "model": model,
                "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        if shape.chat:
            yield chunk({"role": "assistant", "content": ""})
        for event in events:
            if event.text or event.logprobs:
                yield chunk({"content": event.text}, tokens=event.logprobs)
                offset += sum(len(t.token) for t in event.logprobs)
            if event.finish_reason == "error":
                error = {
                    "message": "the engine failed while generating; see the engine's log",
                    "type": "server_error",
                }
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            if event.finish_reason is not None:
                yield chunk({}, event.finish_reason)
                if usage:
                    yield chunk({}, None, usage=_usage(event))
        yield "data: [DONE]\n\n"
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
