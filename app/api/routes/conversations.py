"""`/v1/conversations`: create, list, show and delete conversations. Ask within one with
`POST /v1/query` and its `conversation_id`."""

from __future__ import annotations

from app.api.deps import PrincipalDep, ServicesDep
from app.api.routing import api_router
from app.api.schemas import ConversationCreate, ConversationList, ConversationPublic
from app.api.views import conversation_public

router = api_router(prefix="/v1/conversations", tags=["conversations"])


@router.post("", response_model=ConversationPublic, status_code=201)
def create_conversation(
    body: ConversationCreate, services: ServicesDep, principal: PrincipalDep
) -> ConversationPublic:
    collection = body.collection or services.settings.default_collection
    principal.require_read(collection)
    services.kb().collection_version(collection)  # 404 for a collection that does not exist
    return conversation_public(services.conversations.create(collection, body.title, principal.key_id))


@router.get("", response_model=ConversationList)
def list_conversations(
    services: ServicesDep, principal: PrincipalDep, collection: str | None = None
) -> ConversationList:
    """Newest first, only those the caller started (all, for the admin), of the collections it may read
    (or of `collection`)."""
    if collection is not None:
        principal.require_read(collection)
    found = services.conversations.list_conversations([collection] if collection else None, principal)
    return ConversationList(conversations=[conversation_public(c) for c in found])


@router.get("/{conversation_id}", response_model=ConversationPublic)
def get_conversation(
    conversation_id: str, services: ServicesDep, principal: PrincipalDep
) -> ConversationPublic:
    return conversation_public(services.conversations.visible(conversation_id, principal))


@router.delete("/{conversation_id}", response_model=ConversationPublic)
def delete_conversation(
    conversation_id: str, services: ServicesDep, principal: PrincipalDep
) -> ConversationPublic:
    services.conversations.visible(conversation_id, principal)
    return conversation_public(services.conversations.delete(conversation_id))
