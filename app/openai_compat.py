"""Answers in OpenAI's chat-completion shapes, whole or as a chunk stream, with the passages as
`references`. Finish reasons outside OpenAI's vocabulary are mapped: no_answer → stop (the reply says
the documents lack the answer), cancelled/timeout → length (the text was cut short)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.answering import Answering, Prepared
from app.errors import status_of
from app.generation import Delta
from app.grounding import NO_ANSWER
from app.openai_schemas import (
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
from app.rag import Answer
from app.sse import sse
from app.views import source_public
from retriever.store import NotFoundError

OPENAI_FINISH = {
    "stop": "stop",
    "length": "length",
    "no_answer": "stop",
    "cancelled": "length",
    "timeout": "length",
}


def collection_of(model: str, default: str) -> str:
    """`archivist:<collection>` names a collection; plain `archivist` the default one."""
    prefix, _, collection = model.partition(":")
    if prefix != MODEL_PREFIX:
        raise NotFoundError(
            f"model {model!r} does not exist: use '{MODEL_PREFIX}:<collection>' (see GET /v1/models)"
        )
    return collection or default


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
            status = status_of(error)
            message = str(error) if status != 500 else "internal error; see the server log"
            yield sse(None, {"error": {"message": message, "code": status}})
        yield sse(None, "[DONE]")
