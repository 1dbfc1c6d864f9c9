"""`GET /v1/collections`: the collections and how much each holds."""

from __future__ import annotations

from app.api.deps import PrincipalDep, ServicesDep
from app.api.routing import api_router
from app.api.schemas import CollectionList, CollectionPublic

router = api_router(prefix="/v1/collections", tags=["collections"])


@router.get("", response_model=CollectionList)
def list_collections(services: ServicesDep, principal: PrincipalDep) -> CollectionList:
    """The collections the caller may read."""
    found = services.kb().list_collections()
    return CollectionList(
        collections=[CollectionPublic(**c.__dict__) for c in found if principal.can_read(c.name)]
    )
