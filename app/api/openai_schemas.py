"""Schemas of the OpenAI-compatible endpoints (`/v1/models`, `/v1/chat/completions`): the subset of
OpenAI's chat API that a RAG service can honour, plus Archivist's extra fields (`references`,
`grounded`, and `top_k`/`mode` on requests). Unknown request fields are ignored, as OpenAI clients
send options we have no use for."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.api.schemas import SourcePublic
from retriever.config import SearchMode

MODEL_PREFIX = "archivist"
MessageText = Annotated[str, StringConstraints(max_length=20_000)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: MessageText


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: MessageText | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(description=f"'{MODEL_PREFIX}:<collection>', or '{MODEL_PREFIX}' for the default")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated")
    top_k: int | None = Field(None, ge=1, le=50, description="Archivist: passages to retrieve")
    mode: SearchMode | None = Field(None, description="Archivist: dense, lexical or hybrid retrieval")

    @model_validator(mode="after")
    def ends_with_a_question(self) -> ChatCompletionCreate:
        last = self.messages[-1]
        if last.role != "user" or not last.text.strip():
            raise ValueError("the last message must be a non-empty user message: the question to answer")
        return self

    @property
    def questions(self) -> list[str]:
        """The user messages, oldest first; the last one is the question to answer."""
        return [m.text for m in self.messages if m.role == "user" and m.text.strip()]


class ReferencePublic(SourcePublic):
    cited: bool = Field(description="Whether the answer verifiably uses this passage")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    references: list[ReferencePublic] = Field(description="Archivist: the passages given to the model")
    grounded: bool = Field(description="Archivist: False when the reply is that the documents lack it")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """A streamed piece; the last one with choices carries the finish reason, `references` and
    `grounded`; with `stream_options.include_usage` one more carries only `usage`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    references: list[ReferencePublic] | None = None
    grounded: bool | None = None


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = MODEL_PREFIX


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]
