"""`/v1/conversations`: create, list, show and delete conversations. Ask within one with
`POST /v1/query` and its `conversation_id`."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import Principal
from app.conversations import ConversationInfo
from app.deps import PrincipalDep, ServicesDep
from app.schemas import ConversationCreate, ConversationList, ConversationPublic
from app.services import Services
from app.views import conversation_public
from retriever.store import NotFoundError

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


def visible(services: Services, principal: Principal, conversation_id: str) -> ConversationInfo:
    """A conversation of a collection the caller may read; any other is reported as missing."""
    conversation = services.conversations.get(conversation_id)
    if not principal.can_read(conversation.collection):
        raise NotFoundError(f"conversation {conversation_id} does not exist")
    return conversation


@router.post("", response_model=ConversationPublic, status_code=201)
def create_conversation(
    body: ConversationCreate, services: ServicesDep, principal: PrincipalDep
) -> ConversationPublic:
    collection = body.collection or services.settings.default_collection
    principal.require_read(collection)
    services.kb().collection_version(collection)  # 404 for a collection that does not exist
    return conversation_public(services.conversations.create(collection, body.title))


@router.get("", response_model=ConversationList)
def list_conversations(
    services: ServicesDep, principal: PrincipalDep, collection: str | None = None
) -> ConversationList:
    """Newest first, only of the collections the caller may read (or of `collection`)."""
    if collection is not None:
        principal.require_read(collection)
    found = services.conversations.list_conversations([collection] if collection else None)
    return ConversationList(
        conversations=[conversation_public(c) for c in found if principal.can_read(c.collection)]
    )


@router.get("/{conversation_id}", response_model=ConversationPublic)
def get_conversation(
    conversation_id: str, services: ServicesDep, principal: PrincipalDep
) -> ConversationPublic:
    return conversation_public(visible(services, principal, conversation_id))


@router.delete("/{conversation_id}", response_model=ConversationPublic)
def delete_conversation(
    conversation_id: str, services: ServicesDep, principal: PrincipalDep
) -> ConversationPublic:
    visible(services, principal, conversation_id)
    return conversation_public(services.conversations.delete(conversation_id))
