"""Database engine and sessions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from retriever.models import Base


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while the ingest CLI writes; foreign keys make deletes cascade.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    ensure_schema(engine, Base.metadata)
    return engine


def ensure_schema(engine: Engine, metadata: MetaData) -> None:
    """Create the missing tables of `metadata`; and, since `create_all` never alters an existing table, add
    the columns and indexes a later version introduced (each column nullable or with a server default), so
    a data dir made by an earlier version keeps working without a migration tool. The service's own tables
    come through here too, with their own metadata."""
    metadata.create_all(engine)
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(engine.dialect)
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
                if column.server_default is not None:
                    ddl += f" DEFAULT '{column.server_default.arg}'"  # type: ignore[attr-defined]
                connection.execute(text(ddl))
            indexed = {index["name"] for index in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexed:
                    index.create(connection)
            if table.kwargs.get("sqlite_autoincrement") and _lacks_autoincrement(connection, table):
                _rebuild_with_autoincrement(connection, table)


def _lacks_autoincrement(connection: Connection, table: Table) -> bool:
    """A SQLite table made before its ids were declared AUTOINCREMENT (never reused)."""
    if connection.dialect.name != "sqlite":
        return False
    created = connection.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": table.name}
    ).scalar()
    return created is not None and "AUTOINCREMENT" not in str(created).upper()


def _rebuild_with_autoincrement(connection: Connection, table: Table) -> None:
    """SQLite cannot alter a table's id into AUTOINCREMENT: copy its rows into a new table that has it (the
    copy's largest id then seeds the counter). Only for tables no other table references."""
    previous = f"{table.name}_without_autoincrement"
    connection.execute(text(f"ALTER TABLE {table.name} RENAME TO {previous}"))
    for index in table.indexes:
        connection.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
    table.create(connection)
    columns = ", ".join(column.name for column in table.columns)
    connection.execute(text(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {previous}"))
    connection.execute(text(f"DROP TABLE {previous}"))


class Database:
    """Owns the engine and hands out sessions that commit on success and roll back on error."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
