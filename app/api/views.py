"""Turning service results into the public schemas, shared by the routes and by stored conversation
messages (which keep each answer as the same JSON the API returned)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePath

from app.api.schemas import (
    ConversationPublic,
    KeyPublic,
    MessagePublic,
    QueryPublic,
    SearchPublic,
    SearchResultPublic,
    SourcePublic,
    Span,
    Timings,
    Usage,
)
from app.ops.auth import KeyInfo, Principal
from app.rag.conversations import ConversationInfo, MessageInfo
from app.rag.pipeline import Answer, Source
from app.rag.searching import SearchResult


def source_public(source: Source, highlight: tuple[int, int] | None = None) -> SourcePublic:
    hit = source.hit
    return SourcePublic(
        n=source.n,
        document_id=hit.document_id,
        title=hit.title,
        chunk_id=hit.chunk_id,
        ordinal=hit.ordinal,
        char_start=hit.char_start,
        char_end=hit.char_end,
        text=hit.text,
        score=hit.score,
        page=hit.page,
        heading_path=hit.heading_path,
        highlight=Span(start=highlight[0], end=highlight[1]) if highlight else None,
    )


def answer_public(answer: Answer, collection: str = "", conversation_id: str | None = None) -> QueryPublic:
    return QueryPublic(
        answer=answer.answer,
        sources=[source_public(s, answer.highlights.get(s.n)) for s in answer.sources],
        cited=answer.cited,
        finish_reason=answer.finish_reason,
        timings=Timings(**answer.timings),
        grounded=answer.grounded,
        refusal=answer.refusal,
        relevance=answer.relevance,
        question=answer.question,
        collection=collection,
        conversation_id=conversation_id,
        cached=answer.cached,
        usage=Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens),
    )


def shown_source(source_path: str, principal: Principal) -> str:
    """A document's origin as the caller may see it: an upload's name (`upload://collection/alpha/report.txt`,
    which a caller of the API gave), and of a file ingested on the server its name alone; the admin sees the
    server's path."""
    if principal.admin or source_path.startswith("upload://"):
        return source_path
    return PurePath(source_path).name


def search_public(result: SearchResult, principal: Principal) -> SearchPublic:
    return SearchPublic(
        collection=result.collection,
        mode=result.mode,
        results=[
            SearchResultPublic.model_validate(
                {**asdict(hit), "rank": rank, "source_path": shown_source(hit.source_path, principal)}
            )
            for rank, hit in enumerate(result.hits, start=1)
        ],
        took_ms=result.took_ms,
    )


def message_public(message: MessageInfo) -> MessagePublic:
    return MessagePublic(
        id=message.id,
        role=message.role,
        content=message.content,
        created_at=message.created_at,
        question=message.standalone,
        reply=QueryPublic.model_validate(message.details) if message.details else None,
    )


def conversation_public(conversation: ConversationInfo) -> ConversationPublic:
    return ConversationPublic(
        id=conversation.id,
        collection=conversation.collection,
        title=conversation.title or None,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
        messages=[message_public(m) for m in conversation.messages],
    )


def key_public(key: KeyInfo) -> KeyPublic:
    return KeyPublic(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        read=sorted(c for c, write in key.grants.items() if not write),
        write=sorted(c for c, write in key.grants.items() if write),
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )
