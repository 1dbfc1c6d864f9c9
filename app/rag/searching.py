"""Retrieval-only search for the API (`POST /v1/search`): the ranked passages of one collection for a
question, under the same read right, filters, modes and `top_k` as answering, and without the language
model, so it answers while the model is still loading or after it failed to load."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.api.schemas import SearchCreate
from app.ops.auth import Principal
from retriever.config import SearchMode
from retriever.records import SearchHit

if TYPE_CHECKING:
    from app.services import Services


@dataclass(frozen=True)
class SearchResult:
    collection: str
    mode: SearchMode
    hits: list[SearchHit]
    took_ms: float


def search(services: Services, body: SearchCreate, principal: Principal) -> SearchResult:
    """The collection's best chunks for the question, as ranked (no merging of neighbours, no fitting to a
    context window: that is how answering shapes them for the model)."""
    collection = body.collection or services.settings.default_collection
    principal.require_read(collection)
    kb = services.kb()
    mode = body.mode or kb.config.search_mode
    filters = body.filters.search_filters() if body.filters else None
    started = time.perf_counter()
    hits = kb.search(body.question, collection, body.top_k or services.settings.top_k, mode, filters)
    took = time.perf_counter() - started
    services.metrics.retrieve.observe(took)
    return SearchResult(collection, mode, hits, took * 1000)
