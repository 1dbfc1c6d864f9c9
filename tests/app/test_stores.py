"""The service's own tables (API keys, conversations) on SQLite and on the local PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.auth import AuthError, KeyStore, hash_key
from app.conversations import ConversationStore
from app.models import ApiKey, AppBase, Message
from retriever.db import Database
from retriever.store import InvalidNameError, NotFoundError


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    AppBase.metadata.drop_all(database.engine)  # a PostgreSQL database outlives the test
    AppBase.metadata.create_all(database.engine)
    yield database
    AppBase.metadata.drop_all(database.engine)
    database.dispose()


def test_keys_authenticate_by_hash_until_revoked_or_expired(db: Database) -> None:
    keys = KeyStore(db, admin_key="the-admin-key")
    info, secret = keys.create("reader", read=["alpha", "*"], write=["beta"])
    assert info.grants == {"*": False, "alpha": False, "beta": True} and info.prefix == secret[:10]
    principal = keys.authenticate(secret)
    assert principal.key_id == info.id and principal.can_read("anything") and not principal.can_write("alpha")
    assert principal.can_write("beta") and not principal.admin
    assert keys.authenticate("the-admin-key").admin
    assert [k.id for k in keys.list_keys()] == [info.id]
    with db.session() as session:
        assert session.scalar(select(func.count(ApiKey.id)).where(ApiKey.key_hash == hash_key(secret))) == 1

    _, brief = keys.create(
        "brief", read=["alpha"], expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)
    )
    with pytest.raises(AuthError, match="expired"):
        keys.authenticate(brief)
    assert keys.revoke(info.id).revoked_at is not None
    with pytest.raises(AuthError, match="revoked"):
        keys.authenticate(secret)
    for bad in (None, "", "ak_unknown"):
        with pytest.raises(AuthError):
            keys.authenticate(bad)
    with pytest.raises(NotFoundError):
        keys.revoke(999)
    with pytest.raises(ValueError):
        keys.create("none")
    with pytest.raises(InvalidNameError):
        keys.create("bad", read=["no/slashes"])


def test_conversations_keep_their_messages_in_order_and_delete_them(db: Database) -> None:
    store = ConversationStore(db)
    first = store.create("alpha")
    second = store.create("beta", title="Beta talk")
    store.append_exchange(first.id, "What is Etna?", "What is Etna?", "A volcano.", {"cited": [1]})
    store.append_exchange(first.id, "Where is it?", "Where is Etna?", "In Sicily.", {"cited": []})
    loaded = store.get(first.id)
    assert loaded.title == "What is Etna?" and loaded.collection == "alpha"
    assert [m.content for m in loaded.messages] == [
        "What is Etna?",
        "A volcano.",
        "Where is it?",
        "In Sicily.",
    ]
    assert loaded.previous_questions == ["What is Etna?", "Where is Etna?"]
    assert loaded.messages[1].details == {"cited": [1]} and loaded.messages[1].created_at.tzinfo is not None
    assert [c.id for c in store.list_conversations()] == [first.id, second.id]  # the newest activity first
    assert [c.id for c in store.list_conversations(["beta"])] == [second.id]
    store.delete(first.id)
    with pytest.raises(NotFoundError):
        store.get(first.id)
    with db.session() as session:
        assert session.scalar(select(func.count(Message.id))) == 0
    store.append_exchange(first.id, "late", "late", "answer", {})  # deleted meanwhile: nothing is stored
    with pytest.raises(InvalidNameError):
        store.create("../etc")
