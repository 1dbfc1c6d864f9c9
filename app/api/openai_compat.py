"""Answers in OpenAI's chat-completion shapes, whole or as a chunk stream, with the passages as
`references`. Finish reasons outside OpenAI's vocabulary are mapped: no_answer → stop (the reply says
the documents lack the answer), cancelled/timeout → length (the text was cut short). A failed generation is
an OpenAI error object: the whole response's body (503), or in a stream a last chunk with finish reason
"error" followed by the error object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from app.api.errors import status_of
from app.api.openai_schemas import (
    MODEL_PREFIX,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessageOut,
    Choice,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    ReferencePublic,
)
from app.api.sse import sse
from app.api.views import source_public
from app.rag.answering import Answering, Prepared
from app.rag.generation import Delta, GenerationFailedError
from app.rag.grounding import NO_ANSWER
from app.rag.pipeline import Answer
from retriever.records import NotFoundError

OPENAI_FINISH = {
    "stop": "stop",
    "length": "length",
    "no_answer": "stop",
    "cancelled": "length",
    "timeout": "length",
}


def model_target(model: str, default: str) -> tuple[str, str | None]:
    """(collection, adapter) named by a model id: `archivist:<collection>` asks a collection with the default
    adapter, `archivist:<collection>+<adapter>` with that LoRA adapter (`+none`: the base model); plain
    `archivist` is the default collection. Collection names never contain `+`."""
    prefix, _, rest = model.partition(":")
    if prefix != MODEL_PREFIX:
        raise NotFoundError(
            f"model {model!r} does not exist: use '{MODEL_PREFIX}:<collection>' or "
            f"'{MODEL_PREFIX}:<collection>+<adapter>' (see GET /v1/models)"
        )
    collection, plus, adapter = rest.partition("+")
    return collection or default, adapter if plus else None


def error_object(error: Exception) -> tuple[int, dict[str, object]]:
    """The HTTP status and OpenAI's error body for `error`; our own bugs say only where to look."""
    status = status_of(error)
    message = str(error) if status != 500 else "internal error; see the server log"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return status, {"error": {"message": message, "type": kind, "param": None, "code": status}}


def error_response(error: Exception) -> JSONResponse:
    status, body = error_object(error)
    return JSONResponse(body, status_code=status, headers=getattr(error, "headers", None))


def references(answer: Answer) -> list[ReferencePublic]:
    return [
        ReferencePublic(
            **source_public(source, answer.highlights.get(source.n)).model_dump(),
            cited=source.n in answer.cited,
        )
        for source in answer.sources
    ]


def usage(answer: Answer) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        total_tokens=answer.prompt_tokens + answer.completion_tokens,
    )


@dataclass(frozen=True)
class Completion:
    """Identity of one chat completion, shared by all its chunks."""

    id: str
    created: int
    model: str

    def whole(self, answer: Answer) -> ChatCompletion:
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                Choice(
                    message=ChatMessageOut(content=answer.answer),
                    finish_reason=OPENAI_FINISH.get(answer.finish_reason, "stop"),
                )
            ],
            usage=usage(answer),
            references=references(answer),
            grounded=answer.grounded,
        )

    def chunk(self, delta: ChunkDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    async def chunks(
        self, answering: Answering, prepared: Prepared, include_usage: bool
    ) -> AsyncIterator[str]:
        yield sse(None, self.chunk(ChunkDelta(role="assistant", content="")))
        streamed = ""
        try:
            async for event in answering.stream(prepared):
                if isinstance(event, Delta):
                    streamed += event.text
                    yield sse(None, self.chunk(ChunkDelta(content=event.text)))
                    continue
                answer = event.result
                if not answer.grounded and streamed.strip() != NO_ANSWER:
                    # Streamed text cannot be taken back: say plainly that the documents do not back it.
                    yield sse(None, self.chunk(ChunkDelta(content=f"\n\n{NO_ANSWER}")))
                last = self.chunk(ChunkDelta(), OPENAI_FINISH.get(answer.finish_reason, "stop"))
                last.references, last.grounded = references(answer), answer.grounded
                yield sse(None, last)
                if include_usage:
                    tail = ChatCompletionChunk(
                        id=self.id, created=self.created, model=self.model, choices=[], usage=usage(answer)
                    )
                    yield sse(None, tail)
        except Exception as error:  # the response has started: report in-band, as OpenAI streams do
            if isinstance(error, GenerationFailedError):
                yield sse(None, self.chunk(ChunkDelta(), "error"))
            yield sse(None, error_object(error)[1])
        yield sse(None, "[DONE]")
