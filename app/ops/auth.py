"""API keys and what a request may touch.

A key is `ak_` + 43 random URL-safe characters, shown once at creation and stored only as its SHA-256.
Each key holds grants: a collection name (or `*` for all) with read or read+write rights. The admin key
from the settings has every right and may manage keys. When auth is off (the default on a loopback
address), every request acts as the local admin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select

from app.models import ApiKey, ApiKeyGrant
from retriever.db import Database
from retriever.records import NotFoundError, validate_collection_name

KEY_PREFIX = "ak_"
WILDCARD = "*"


class AuthError(PermissionError):
    """No key, or a wrong, expired or revoked one (401)."""

    headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(PermissionError):
    """A valid key without the right for this collection or action (403)."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: the admin, or a key with its grants (collection -> may write)."""

    name: str
    admin: bool = False
    key_id: int | None = None
    grants: Mapping[str, bool] = field(default_factory=dict)

    def can_read(self, collection: str) -> bool:
        return self.admin or collection in self.grants or WILDCARD in self.grants

    def can_write(self, collection: str) -> bool:
        return self.admin or self.grants.get(collection, False) or self.grants.get(WILDCARD, False)

    def owns(self, owner_key_id: int | None) -> bool:
        """Whether something started by key `owner_key_id` (None: by the admin) is this caller's to use."""
        return self.admin or (self.key_id is not None and owner_key_id == self.key_id)

    def readable(self, collections: Iterable[str]) -> list[str]:
        return [name for name in collections if self.can_read(name)]

    def require_read(self, collection: str) -> None:
        if not self.can_read(collection):
            raise ForbiddenError(f"this API key may not read collection {collection!r}")

    def require_write(self, collection: str) -> None:
        if not self.can_write(collection):
            raise ForbiddenError(f"this API key may not change collection {collection!r}")

    def require_admin(self) -> None:
        if not self.admin:
            raise ForbiddenError("only the admin key may manage API keys or read metrics")


LOCAL_ADMIN = Principal(name="local", admin=True)


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    grants: dict[str, bool]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        grants={grant.collection: grant.can_write for grant in key.grants},
        created_at=_aware(key.created_at) or key.created_at,
        expires_at=_aware(key.expires_at),
        revoked_at=_aware(key.revoked_at),
    )


def _grant_name(collection: str) -> str:
    return collection if collection == WILDCARD else validate_collection_name(collection)


class KeyStore:
    def __init__(self, db: Database, admin_key: str | None = None) -> None:
        self.db = db
        self._admin_key = admin_key

    def create(
        self,
        name: str,
        read: Sequence[str] = (),
        write: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> tuple[KeyInfo, str]:
        """A new key with read rights on `read` and read+write rights on `write`; returns the secret,
        which is never stored and cannot be shown again."""
        grants = {_grant_name(c): False for c in read} | {_grant_name(c): True for c in write}
        if not grants:
            raise ValueError("a key needs at least one collection to read or write ('*' for all)")
        if not name.strip():
            raise ValueError("a key needs a name")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.session() as session:
            key = ApiKey(
                name=name.strip(),
                prefix=secret[:10],
                key_hash=hash_key(secret),
                expires_at=expires_at,
                grants=[ApiKeyGrant(collection=c, can_write=w) for c, w in sorted(grants.items())],
            )
            session.add(key)
            session.flush()
            return _info(key), secret

    def list_keys(self) -> list[KeyInfo]:
        with self.db.session() as session:
            return [_info(key) for key in session.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke(self, key_id: int) -> KeyInfo:
        with self.db.session() as session:
            key = session.get(ApiKey, key_id)
            if key is None:
                raise NotFoundError(f"API key {key_id} does not exist")
            if key.revoked_at is None:
                key.revoked_at = datetime.now(timezone.utc)
            session.flush()
            return _info(key)

    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise AuthError("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        if self._admin_key and hmac.compare_digest(secret.encode(), self._admin_key.encode()):
            return Principal(name="admin", admin=True)
        with self.db.session() as session:
            key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
            info = _info(key) if key is not None else None
        now = datetime.now(timezone.utc)
        if info is None:
            raise AuthError("the API key is not valid")
        if info.revoked_at is not None:
            raise AuthError(f"the API key {info.prefix}… was revoked")
        if info.expires_at is not None and info.expires_at <= now:
            raise AuthError(f"the API key {info.prefix}… expired at {info.expires_at.isoformat()}")
        return Principal(name=info.name, key_id=info.id, grants=info.grants)
