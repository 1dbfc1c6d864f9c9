"""`/v1/keys`: the admin key creates, lists and revokes API keys."""

from __future__ import annotations

from fastapi import Depends

from app.api.deps import RowId, ServicesDep, require_admin
from app.api.routing import api_router
from app.api.schemas import KeyCreate, KeyCreated, KeyList, KeyPublic
from app.api.views import key_public

router = api_router(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_admin)])


@router.post("", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, services: ServicesDep) -> KeyCreated:
    """The secret is in the response and nowhere else: it is stored only as a hash."""
    info, secret = services.keys.create(body.name, body.read, body.write, body.expires_at)
    return KeyCreated(**key_public(info).model_dump(), key=secret)


@router.get("", response_model=KeyList)
def list_keys(services: ServicesDep) -> KeyList:
    return KeyList(keys=[key_public(k) for k in services.keys.list_keys()])


@router.delete("/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: RowId, services: ServicesDep) -> KeyPublic:
    return key_public(services.keys.revoke(key_id))
