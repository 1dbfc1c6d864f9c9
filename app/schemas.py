"""Request and response schemas of the REST API (Base / Create / Public families)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class QueryBase(BaseModel):
    question: Annotated[NonBlank, StringConstraints(max_length=20_000)] = Field(
        description="The question; long questions are truncated to the embedder's limit for retrieval"
    )
    collection: NonBlank | None = Field(None, description="Collection to search; default from settings")
    top_k: int | None = Field(None, ge=1, le=50, description="Passages to retrieve (1-50)")


class QueryCreate(QueryBase):
    pass


class SourcePublic(BaseModel):
    n: int = Field(description="The number the passage had in the prompt, as cited: [n]")
    document_id: int
    title: str
    chunk_id: int
    ordinal: int = Field(description="Position of the chunk within its document")
    char_start: int
    char_end: int
    text: str
    score: float


class Timings(BaseModel):
    retrieve_ms: float
    generate_ms: float


class QueryPublic(BaseModel):
    answer: str
    sources: list[SourcePublic]
    cited: list[int] = Field(description="Numbers of the sources the answer cites")
    finish_reason: str
    timings: Timings


class DocumentPublic(BaseModel):
    id: int
    collection: str
    title: str
    source_path: str
    file_type: str
    size_bytes: int
    chunk_count: int
    content_hash: str
    created_at: datetime
    updated_at: datetime


class DocumentList(BaseModel):
    documents: list[DocumentPublic]


class IngestResultPublic(BaseModel):
    status: str
    reason: str = ""
    chunks: int = 0
    document: DocumentPublic | None = None


class CollectionPublic(BaseModel):
    name: str
    document_count: int
    chunk_count: int
    version: int


class CollectionList(BaseModel):
    collections: list[CollectionPublic]


class ErrorPublic(BaseModel):
    detail: str | list[dict[str, object]]
