"""Conversations kept in SQL: each belongs to one collection and to the API key that started it, and holds
the questions asked (with the standalone question each was rewritten to) and the answers given, with their
sources and citations. Only that key (and the admin) may see or use it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from app.models import Conversation, Message
from app.ops.auth import Principal
from retriever.db import Database
from retriever.records import NotFoundError, validate_collection_name

TITLE_CHARS = 80


@dataclass(frozen=True)
class MessageInfo:
    id: int
    role: str
    content: str
    standalone: str | None
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    collection: str
    title: str
    owner_key_id: int | None
    created_at: datetime
    updated_at: datetime
    messages: list[MessageInfo] = field(default_factory=list)

    @property
    def previous_questions(self) -> list[str]:
        """The standalone questions asked so far, oldest first (what follow-ups are rewritten from)."""
        return [m.standalone or m.content for m in self.messages if m.role == "user"]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _info(conversation: Conversation, with_messages: bool) -> ConversationInfo:
    messages = [
        MessageInfo(m.id, m.role, m.content, m.standalone, m.details or {}, _utc(m.created_at))
        for m in (conversation.messages if with_messages else [])
    ]
    return ConversationInfo(
        id=conversation.id,
        collection=conversation.collection,
        title=conversation.title,
        owner_key_id=conversation.owner_key_id,
        created_at=_utc(conversation.created_at),
        updated_at=_utc(conversation.updated_at),
        messages=messages,
    )


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, collection: str, title: str | None = None, owner_key_id: int | None = None
    ) -> ConversationInfo:
        """A new conversation, used only by the key `owner_key_id` (and the admin) when given."""
        validate_collection_name(collection)
        with self.db.session() as session:
            conversation = Conversation(
                id=uuid.uuid4().hex,
                collection=collection,
                title=(title or "").strip()[:TITLE_CHARS],
                owner_key_id=owner_key_id,
            )
            session.add(conversation)
            session.flush()
            return _info(conversation, with_messages=False)

    def get(self, conversation_id: str) -> ConversationInfo:
        with self.db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFoundError(f"conversation {conversation_id} does not exist")
            return _info(conversation, with_messages=True)

    def visible(self, conversation_id: str, principal: Principal) -> ConversationInfo:
        """The conversation with its messages, when `principal` may use it: it reads the collection and
        started it (or is the admin). Any other is reported as missing, as if it did not exist."""
        conversation = self.get(conversation_id)
        if not principal.can_read(conversation.collection) or not principal.owns(conversation.owner_key_id):
            raise NotFoundError(f"conversation {conversation_id} does not exist")
        return conversation

    def list_conversations(
        self, collections: Sequence[str] | None = None, principal: Principal | None = None
    ) -> list[ConversationInfo]:
        """Newest first; only those in `collections`, and only those `principal` may use, when given."""
        query = select(Conversation).order_by(Conversation.updated_at.desc(), Conversation.id)
        if collections is not None:
            query = query.where(Conversation.collection.in_(list(collections)))
        if principal is not None and not principal.admin:
            query = query.where(Conversation.owner_key_id == principal.key_id)
        with self.db.session() as session:
            found = [_info(c, with_messages=False) for c in session.scalars(query)]
        return [c for c in found if principal is None or principal.can_read(c.collection)]

    def delete(self, conversation_id: str) -> ConversationInfo:
        with self.db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFoundError(f"conversation {conversation_id} does not exist")
            info = _info(conversation, with_messages=False)
            session.delete(conversation)
            return info

    def append_exchange(
        self, conversation_id: str, question: str, standalone: str, answer: str, details: dict[str, Any]
    ) -> None:
        """Store a question and its answer together; the first question titles an untitled conversation."""
        with self.db.session() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                return  # deleted while the answer was being written
            session.add(
                Message(conversation_id=conversation_id, role="user", content=question, standalone=standalone)
            )
            session.add(
                Message(conversation_id=conversation_id, role="assistant", content=answer, details=details)
            )
            if not conversation.title:
                conversation.title = question.strip()[:TITLE_CHARS]
            conversation.updated_at = datetime.now(timezone.utc)
