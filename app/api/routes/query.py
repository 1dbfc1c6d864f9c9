"""`POST /v1/query`: a cited answer from the documents of one collection."""

from __future__ import annotations

from fastapi import Response

from app.api.deps import PrincipalDep, ServicesDep
from app.api.routing import api_router
from app.api.schemas import QueryCreate, QueryPublic
from app.api.sse import EventStreamResponse, query_events
from app.api.views import answer_public

router = api_router(prefix="/v1", tags=["query"])


@router.post(
    "/query",
    response_model=QueryPublic,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or with `stream: true` events"}
    },
)
def query(body: QueryCreate, services: ServicesDep, principal: PrincipalDep) -> QueryPublic | Response:
    """Retrieve, generate and cite; with `stream: true`, Server-Sent Events `sources`, `delta`…, `done`.
    Filters and mode shape retrieval; `conversation_id` makes it a turn of a stored conversation."""
    prepared = services.answering.prepare(body, principal)
    if body.stream:
        return EventStreamResponse(query_events(services.answering, prepared), on_close=prepared.cancel)
    return answer_public(services.answering.complete(prepared), prepared.collection, prepared.conversation_id)
