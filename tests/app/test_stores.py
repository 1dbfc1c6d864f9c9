"""The service's own tables (API keys, conversations) on SQLite and on the local PostgreSQL server,
including one made by an earlier version, which start-up brings up to date."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from app.models import ApiKey, AppBase, Message
from app.ops.auth import LOCAL_ADMIN, AuthError, KeyStore, Principal, hash_key
from app.rag.conversations import ConversationStore
from app.schema import SERVICE_CHAIN
from app.services import Services
from retriever.db import Database
from retriever.records import InvalidNameError, NotFoundError
from retriever.schema import SchemaError, upgrade_schema
from tests.conftest import make_settings


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


def test_conversations_belong_to_the_key_that_started_them(db: Database) -> None:
    store = ConversationStore(db)
    reader = Principal(name="reader", key_id=7, grants={"alpha": False})
    other = Principal(name="other", key_id=8, grants={"*": False})
    mine = store.create("alpha", owner_key_id=reader.key_id)
    admins = store.create("alpha")
    assert store.visible(mine.id, reader).owner_key_id == 7
    for principal, conversation in ((other, mine), (reader, admins)):
        with pytest.raises(NotFoundError):
            store.visible(conversation.id, principal)
    assert [c.id for c in store.list_conversations(principal=reader)] == [mine.id]
    assert store.list_conversations(principal=other) == []
    assert {c.id for c in store.list_conversations(principal=LOCAL_ADMIN)} == {mine.id, admins.id}


def test_upgrade_adds_the_owner_column_to_an_earlier_conversations_table(
    database_url: str, tmp_path: Path
) -> None:
    """A conversations table from before conversations had owners (and migrations): the service refuses to
    start until `archivist db upgrade` adds the column, and the conversations already there stay the
    admin's."""
    earlier = Database(database_url)
    AppBase.metadata.drop_all(earlier.engine)
    with earlier.engine.begin() as connection:
        connection.execute(text(
            "CREATE TABLE conversations (id VARCHAR(32) PRIMARY KEY, collection VARCHAR(128), "
            "title VARCHAR(200), created_at TIMESTAMP, updated_at TIMESTAMP)"
        ))  # fmt: skip
        connection.execute(text(
            "INSERT INTO conversations VALUES ('old', 'alpha', 'Before owners', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"
        ))  # fmt: skip
    settings = make_settings(tmp_path / "data", database_url=database_url)
    with pytest.raises(SchemaError, match="archivist db upgrade"):
        Services(settings)
    upgrade_schema(earlier.engine, SERVICE_CHAIN)
    earlier.dispose()

    services = Services(settings)
    try:
        columns = {c["name"] for c in inspect(services.db.engine).get_columns("conversations")}
        indexes = {i["name"] for i in inspect(services.db.engine).get_indexes("conversations")}
        assert "owner_key_id" in columns and "ix_conversations_owner_key_id" in indexes
        key = Principal(name="reader", key_id=1, grants={"alpha": False})
        assert services.conversations.visible("old", LOCAL_ADMIN).title == "Before owners"
        with pytest.raises(NotFoundError):
            services.conversations.visible("old", key)
        new = services.conversations.create("alpha", owner_key_id=key.key_id)
        assert [c.id for c in services.conversations.list_conversations(principal=key)] == [new.id]
    finally:
        AppBase.metadata.drop_all(services.db.engine)
        services.close()
