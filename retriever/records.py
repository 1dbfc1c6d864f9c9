"""The knowledge base's records and errors: what `KnowledgeBase` takes in (drafts of documents and chunks) and
hands out (documents, chunks, collections, search hits), and the text the retrievers index for a chunk. A
module of its own so that the parts around the store (rerank, context assembly, ingest, the service) use
them without importing the store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from retriever.embedder import TextEmbedder

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class NotFoundError(LookupError):
    """A collection or document that does not exist."""


class ServiceUnavailableError(RuntimeError):
    """A service the processes share cannot be reached (Milvus here; Redis and the job broker in
    `app.ops.shared_state`): the CLI exits 2, a route answers 503 with Retry-After."""

    RETRY_AFTER_S = 5

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(self.RETRY_AFTER_S)}


class VectorStoreUnavailableError(ServiceUnavailableError):
    """The external vector store (Milvus) cannot be reached."""


class InvalidNameError(ValueError):
    pass


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk as produced by ingestion, before it has an id."""

    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    page: int | None = None
    heading_path: str = ""
    minhash: bytes | None = None


@dataclass(frozen=True)
class DocumentDraft:
    collection: str
    source_path: str
    title: str
    file_type: str
    size_bytes: int
    content_hash: str
    source_file: str = ""  # the file the document came from; "" means source_path itself
    text_hash: str = ""
    minhash: bytes | None = None
    clean_text: str = ""  # the cleaned text its chunks are slices of


@dataclass(frozen=True)
class DocumentWrite:
    """One document to store (replacing any earlier version from the same source) with its chunks and
    their embeddings, row for row."""

    draft: DocumentDraft
    chunks: Sequence[ChunkDraft]
    vectors: np.ndarray
    # The name of the embedder that made `vectors` (see `KnowledgeBase.embedder_for`); None: the
    # configured one (`KnowledgeBase.embedder`).
    embedded_by: str | None = None


@dataclass(frozen=True)
class DocumentFingerprint:
    """What incremental ingestion and duplicate detection need to know of a stored document."""

    id: int
    source_file: str
    source_path: str
    title: str
    content_hash: str
    text_hash: str


@dataclass(frozen=True)
class ChunkInfo:
    id: int
    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    page: int | None
    heading_path: str


@dataclass(frozen=True)
class DocumentText:
    """A document's cleaned text and its chunks in order; `complete` is False when the text was put back
    together from the chunks (a document stored by a version that did not keep it, see
    `retriever.document_text`)."""

    text: str
    chunks: list[ChunkInfo]
    complete: bool


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    collection: str
    title: str
    source_path: str
    content_hash: str
    file_type: str
    size_bytes: int
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    source_file: str  # the file it came from (one file can hold several documents)


@dataclass(frozen=True)
class CollectionProfile:
    """How a collection is embedded and searched."""

    language: str  # "cjk", "other", or "" before its first chunks (see `retriever.language`)
    embedder: TextEmbedder


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    document_count: int
    chunk_count: int
    version: int


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    document_id: int
    title: str
    source_path: str
    ordinal: int
    char_start: int
    char_end: int
    text: str
    score: float  # the ranking score: cosine (dense), BM25 (lexical), fused (hybrid) or the reranker's
    # Cosine similarity of the query and chunk embeddings whenever the query was embedded (dense, hybrid):
    # comparable across modes, unlike `score`, so relevance thresholds should use it.
    similarity: float | None = None
    page: int | None = None  # 1-based page of a paged format (PDF) the chunk starts on
    heading_path: str = ""  # the headings of its section, outermost first: "Intro > Setup"


def passage_text(title: str, text: str) -> str:
    """What the retrievers index for a chunk: its document's title, then the chunk."""
    return f"{title}\n\n{text}" if title else text


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    return name
