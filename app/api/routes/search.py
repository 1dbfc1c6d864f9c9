"""`POST /v1/search`: the ranked passages of one collection for a question, without generating an answer."""

from __future__ import annotations

from app.api.deps import PrincipalDep, ServicesDep
from app.api.routing import api_router
from app.api.schemas import SearchCreate, SearchPublic
from app.api.views import search_public
from app.rag.searching import search as search_passages

router = api_router(prefix="/v1", tags=["search"])


@router.post("/search", response_model=SearchPublic)
def search(body: SearchCreate, services: ServicesDep, principal: PrincipalDep) -> SearchPublic:
    """Retrieval only: the passages `POST /v1/query` would draw on, ranked with their scores, document,
    page, headings and offsets. Same fields, rights, filters, modes and limits; no language model needed."""
    return search_public(search_passages(services, body, principal), principal)
