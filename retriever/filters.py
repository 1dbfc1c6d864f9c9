"""Metadata filters for a search, turned into SQL conditions on documents.

The search first asks SQL for the ids of the chunks that pass (a prefilter on indexed columns), then hands
those ids to the vector index (a FAISS IDSelector) and to the lexical index (a mask), so that filtering
happens inside the ranking and a filter can never empty an already truncated top-k list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from retriever.models import Document


@dataclass(frozen=True)
class SearchFilters:
    """All given conditions must hold; within a list, any value matches. Dates bound `updated_at` (when
    the document's current content was stored), inclusive."""

    document_ids: tuple[int, ...] | None = None
    file_types: tuple[str, ...] | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    @property
    def empty(self) -> bool:
        return all(
            value is None
            for value in (self.document_ids, self.file_types, self.updated_after, self.updated_before)
        )

    def conditions(self) -> list[Any]:
        conditions: list[Any] = []
        if self.document_ids is not None:
            conditions.append(Document.id.in_(self.document_ids))
        if self.file_types is not None:
            conditions.append(Document.file_type.in_([kind.lower().lstrip(".") for kind in self.file_types]))
        if self.updated_after is not None:
            conditions.append(Document.updated_at >= _utc(self.updated_after))
        if self.updated_before is not None:
            conditions.append(Document.updated_at <= _utc(self.updated_before))
        return conditions


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, the zone every stored timestamp is written in."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
