"""Request and response schemas of the REST API (Base / Create / Public families)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.rag.grounding import Refusal
from retriever.config import SearchMode
from retriever.filters import SearchFilters

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class QueryFilters(BaseModel):
    """Metadata filters, applied inside the search; an unknown field is a 422, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    # Ids bounded to what SQL integers hold: a larger one is a 422, not a database error.
    document_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        None, min_length=1, max_length=10_000, description="Only these"
    )
    file_types: list[NonBlank] | None = Field(None, min_length=1, description='e.g. ["md", "txt"]')
    updated_after: datetime | None = Field(None, description="Documents stored at or after (UTC if no zone)")
    updated_before: datetime | None = Field(None, description="Documents stored at or before")

    def search_filters(self) -> SearchFilters:
        return SearchFilters(
            document_ids=tuple(self.document_ids) if self.document_ids is not None else None,
            file_types=tuple(self.file_types) if self.file_types is not None else None,
            updated_after=self.updated_after,
            updated_before=self.updated_before,
        )


class QueryBase(BaseModel):
    # A misspelt field ("temprature") is a 422 naming it, as in `filters`, not a setting silently dropped.
    model_config = ConfigDict(extra="forbid")

    question: Annotated[NonBlank, StringConstraints(max_length=20_000)] = Field(
        description="The question; long questions are truncated to the embedder's limit for retrieval"
    )
    collection: NonBlank | None = Field(None, description="Collection to search; default from settings")
    top_k: int | None = Field(None, ge=1, le=50, description="Passages to retrieve (1-50)")
    mode: SearchMode | None = Field(None, description="dense, lexical or hybrid; default from settings")
    filters: QueryFilters | None = Field(None, description="Metadata filters applied inside the search")


class QueryCreate(QueryBase):
    stream: bool = Field(False, description="Answer as Server-Sent Events: sources, text deltas, done")
    conversation_id: str | None = Field(
        None,
        max_length=64,
        description="Ask within a conversation: history rewrites follow-ups, and both "
        "question and answer are stored in it",
    )
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature; default 0 (greedy)"
    )
    max_tokens: int | None = Field(None, ge=1, le=4096, description="Longest answer; capped by the settings")
    adapter: str | None = Field(
        None,
        max_length=128,
        description="LoRA adapter of the model to answer with (see GET /v1/models); default from the "
        "settings (ARCHIVIST_LLM_ADAPTER); 'none' for the base model",
    )


class SearchCreate(QueryBase):
    """`POST /v1/search`: the retrieval fields of a query, validated alike, and nothing of generation."""


class Span(BaseModel):
    start: int
    end: int


class PassageBase(BaseModel):
    """A retrieved passage, as both answers (`sources`) and searches (`results`) show it."""

    document_id: int
    title: str
    chunk_id: int
    ordinal: int = Field(description="Position of the chunk within its document")
    char_start: int = Field(description="Offset of its first character in the document's (cleaned) text")
    char_end: int = Field(description="Offset just past its last character")
    text: str
    score: float
    page: int | None = Field(None, description="1-based page the passage starts on, for paged formats (PDF)")
    heading_path: str = Field("", description='Headings of its section, outermost first: "Intro > Setup"')


class SourcePublic(PassageBase):
    n: int = Field(description="The number the passage had in the prompt, as cited: [n]")
    highlight: Span | None = Field(None, description="Characters of `text` that support the answer")


class SearchResultPublic(PassageBase):
    rank: int = Field(description="1 for the best passage")
    score: float = Field(
        description="The ranking score: cosine similarity (dense), BM25 (lexical), the fused score "
        "(hybrid) or the reranker's; compare it within one search only"
    )
    similarity: float | None = Field(
        None,
        description="Cosine similarity of question and passage, comparable across searches and modes "
        "(absent when the question was not embedded: lexical mode)",
    )
    source_path: str = Field(description="The file (or upload name) the document came from")


class SearchPublic(BaseModel):
    collection: str
    mode: SearchMode = Field(description="The retrieval mode used (the request's, or the default)")
    results: list[SearchResultPublic] = Field(description="Best first; at most `top_k`")
    took_ms: float = Field(description="Time spent retrieving")


class Timings(BaseModel):
    retrieve_ms: float
    generate_ms: float
    ttft_ms: float | None = Field(None, description="Time to the first generated text")
    queue_ms: float | None = Field(None, description="Time spent waiting for a generation slot")
    tokens_per_s: float | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class QueryPublic(BaseModel):
    answer: str
    sources: list[SourcePublic]
    cited: list[int] = Field(description="Numbers of the sources the answer verifiably uses")
    finish_reason: str = Field(description="stop, length, cancelled, timeout, or no_answer (not generated)")
    timings: Timings
    grounded: bool = Field(True, description="False when the reply is that the documents lack the answer")
    refusal: Refusal | None = Field(
        None,
        description="Why the reply is that the documents lack the answer: relevance (no passage relevant "
        "enough; the model was not asked), model (the model said so), degenerate (an empty or looping "
        "reply), unsupported (no passage supports the answer); null when answered",
    )
    relevance: float = Field(0.0, description="Best question-passage cosine similarity")
    question: str = Field("", description="The standalone question that was retrieved and answered")
    collection: str = ""
    conversation_id: str | None = None
    cached: bool = False
    usage: Usage = Field(default_factory=Usage)


class StreamSources(BaseModel):
    """First event of a streamed answer."""

    question: str
    collection: str
    conversation_id: str | None
    sources: list[SourcePublic]


class StreamDelta(BaseModel):
    text: str


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


class DocumentChunkPublic(BaseModel):
    chunk_id: int
    ordinal: int
    char_start: int = Field(description="Offset of its first character in `text`")
    char_end: int = Field(description="Offset just past its last character")
    page: int | None = Field(None, description="1-based page it starts on, for paged formats (PDF)")
    heading_path: str = Field("", description='Headings of its section, outermost first: "Intro > Setup"')


class DocumentTextPublic(BaseModel):
    """A document's cleaned text, which every passage's `char_start`/`char_end` point into."""

    document: DocumentPublic
    text: str
    complete: bool = Field(
        description="False for a document stored by an earlier version, whose text was put back together "
        "from its chunks: what no chunk covers shows as line breaks (ingest it again to keep its text)"
    )
    chunks: list[DocumentChunkPublic]


class DuplicatePublic(BaseModel):
    chunks: int = Field(description="Chunks left out as copies; 0: the whole document was a copy")
    of_source: str = Field(description="Source of the document they copy")
    of_title: str
    similarity: float = Field(description="Estimated Jaccard similarity of their word 3-grams (1.0: exact)")


class IngestResultPublic(BaseModel):
    status: str = Field(description="added, updated, unchanged, duplicate, skipped or failed")
    reason: str = ""
    chunks: int = 0
    document: DocumentPublic | None = None
    duplicates: list[DuplicatePublic] = []


class FileResultPublic(BaseModel):
    path: str = Field(description="The stored (safe) file name")
    status: str = Field(description="added, updated, unchanged, duplicate, skipped or failed")
    reason: str = ""
    chunks: int = Field(0, description="Chunks written")
    documents: int = Field(0, description="Documents the file gave (several for JSON Lines or SQuAD)")
    document_id: int | None = Field(None, description="The document, for a file that is one")
    duplicates: list[DuplicatePublic] = []


class JobPublic(BaseModel):
    id: str
    state: str = Field(description="queued, running, done or failed")
    collection: str
    files_total: int
    files_done: int
    chunks_written: int
    results: list[FileResultPublic]
    error: str = ""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobList(BaseModel):
    jobs: list[JobPublic]


class CollectionPublic(BaseModel):
    name: str
    document_count: int
    chunk_count: int
    version: int


class CollectionList(BaseModel):
    collections: list[CollectionPublic]


class ErrorPublic(BaseModel):
    detail: str | list[dict[str, object]]


class ConversationBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class ConversationCreate(ConversationBase):
    collection: NonBlank | None = Field(None, description="Collection the conversation asks; default setting")


class MessagePublic(BaseModel):
    id: int
    role: str
    content: str
    created_at: datetime
    question: str | None = Field(None, description="For a question: the standalone question it became")
    reply: QueryPublic | None = Field(None, description="For an answer: sources, citations, timings")


class ConversationPublic(ConversationBase):
    id: str
    collection: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    messages: list[MessagePublic] = Field(default_factory=list)


class ConversationList(BaseModel):
    conversations: list[ConversationPublic]


class KeyBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class KeyCreate(KeyBase):
    read: list[NonBlank] = Field(default_factory=list, description="Collections it may read ('*': all)")
    write: list[NonBlank] = Field(default_factory=list, description="Collections it may read and change")
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def some_collection(self) -> KeyCreate:
        if not self.read and not self.write:
            raise ValueError("a key needs at least one collection to read or write ('*' for all)")
        return self


class KeyPublic(KeyBase):
    id: int
    prefix: str = Field(description="The first characters of the key")
    read: list[str]
    write: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="The secret; shown only now")


class KeyList(BaseModel):
    keys: list[KeyPublic]
