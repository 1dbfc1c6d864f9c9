"""SQL tables the service owns: API keys with their collection grants, conversations with their messages,
and ingest jobs with their files. They live in the knowledge base's database but in their own metadata and
their own migration chain (`app.schema`, `app/migrations`), so the retriever never needs to know of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from retriever.models import utcnow


class AppBase(DeclarativeBase):
    pass


class ApiKey(AppBase):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # The first characters of the key, shown in listings so a user can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key: keys are 256 random bits, so an unsalted fast hash cannot be brute-forced.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    grants: Mapped[list[ApiKeyGrant]] = relationship(
        back_populates="key", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )


class ApiKeyGrant(AppBase):
    __tablename__ = "api_key_grants"
    __table_args__ = (UniqueConstraint("key_id", "collection", name="uq_grant_collection"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    # A collection name, or "*" for every collection.
    collection: Mapped[str] = mapped_column(String(128))
    can_write: Mapped[bool] = mapped_column(Boolean, default=False)

    key: Mapped[ApiKey] = relationship(back_populates="grants")


class Conversation(AppBase):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection: Mapped[str] = mapped_column(String(128), index=True)
    title: Mapped[str] = mapped_column(String(200))
    # The API key that started it, the only key that may use it (besides the admin); None: the admin's, or
    # started with auth off. Not a foreign key, so that adding it to an existing table is a plain ALTER.
    owner_key_id: Mapped[int | None] = mapped_column(nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Message.id",
    )


class Message(AppBase):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # For a user message: the standalone question it was rewritten to. For an answer: the reply's details
    # (sources, cited numbers, highlights, grounded, finish reason), so a reloaded page shows them again.
    standalone: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class IngestJob(AppBase):
    """A multi-file upload being ingested: any replica reads its progress, and a restart keeps it."""

    __tablename__ = "ingest_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16))  # queued, running, done, failed
    # Who runs it: "broker" (whichever `archivist worker` the broker hands it to), or "<host>+<pid>" of the
    # API process that runs it in a thread of its own.
    runner: Mapped[str] = mapped_column(String(300))
    files_total: Mapped[int] = mapped_column(Integer)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_written: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    files: Mapped[list[IngestJobFile]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="IngestJobFile.position",
    )


class IngestJobFile(AppBase):
    """One file of a job: its name in the upload, and its result once ingested (a `FileResult` as JSON)."""

    __tablename__ = "ingest_job_files"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_ingest_job_file_position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("ingest_jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    job: Mapped[IngestJob] = relationship(back_populates="files")
