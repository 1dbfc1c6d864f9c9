"""Schema versions of the database, kept by Alembic.

Each component that owns tables has its own migration chain and its own version table: the retriever's
(collections, documents, chunks and their band keys) in `retriever/migrations`, the service's (keys,
conversations) in `app/migrations`, so neither needs to know the other's tables. At start-up a component
checks its chain (`check_schema`):

* a database without any of the chain's tables is new: it is brought to the newest revision at once;
* a database at the newest revision is used as it is;
* an older one (or one made before migrations existed) is refused with the command that upgrades it,
  `archivist db upgrade`: a deployment upgrades on purpose, once, and not from every replica at start-up;
* one at a revision this code does not know is refused: it was made by a newer version.

Upgrades on PostgreSQL hold an advisory lock for the chain, so replicas starting together on a new database
create its tables once. On SQLite an upgrade is one explicit transaction, DDL included, run with foreign keys
off as SQLite's recipe for rebuilding a table requires (dropping the old copy of a table that others
reference must not cascade into them), and checked for broken references before it commits. The first
revision of each chain also adopts a database made before migrations existed (`adopt_existing`): it creates
the missing tables and adds the columns, indexes and SQLite AUTOINCREMENT a later version introduced, then
records the revision.
"""

from __future__ import annotations

import fcntl
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, Table, inspect, text


class SchemaError(RuntimeError):
    """The database's schema is not the one this code works with; the message says what to do."""


@dataclass(frozen=True)
class MigrationChain:
    component: str
    script_location: Path  # the folder holding env.py and versions/
    version_table: str
    tables: tuple[str, ...]  # the tables the chain owns: none present means a new database

    def config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["version_table"] = self.version_table
        return config

    def head(self) -> str:
        head = ScriptDirectory.from_config(self.config()).get_current_head()
        assert head is not None, f"the {self.component} migration chain has no revision"
        return head


RETRIEVER_CHAIN = MigrationChain(
    "retriever",
    Path(__file__).parent / "migrations",
    "alembic_version_retriever",
    ("collections", "documents", "chunks", "chunk_bands", "document_bands"),
)

UPGRADE_HINT = "run `archivist db upgrade` (back the database up first)"


def current_revision(engine: Engine, chain: MigrationChain) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": chain.version_table})
        return context.get_current_revision()


def check_schema(engine: Engine, chain: MigrationChain) -> None:
    """Use the database as it is, create a new one's tables, or raise `SchemaError` saying what to do."""
    current, head = current_revision(engine, chain), chain.head()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        present = set(inspect(engine).get_table_names())
        if not present & set(chain.tables):
            upgrade_schema(engine, chain)
            return
        # Tables and their revision are committed together: tables seen now, whose revision was not seen a
        # moment ago, may be another process's that has just created them.
        current = current_revision(engine, chain)
        if current == head:
            return
    if current is None:
        raise SchemaError(
            f"the {chain.component} tables of {where} predate schema migrations: {UPGRADE_HINT}"
        )
    known = {script.revision for script in ScriptDirectory.from_config(chain.config()).walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"the {chain.component} tables of {where} are at revision {current}, which this version of "
            f"Archivist does not know (its newest is {head}): they were made by a newer version; upgrade "
            "Archivist"
        )
    raise SchemaError(
        f"the {chain.component} tables of {where} are at revision {current}, not {head}: {UPGRADE_HINT}"
    )


# Alembic keeps the running migration's context in module globals: one upgrade at a time per process.
_UPGRADING = threading.Lock()


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """For a SQLite file, an exclusive lock on a file beside it: processes that start together on a new
    database migrate one after the other, each reading the revision the one before left (SQLite has no
    advisory locks, and a deferred transaction reads before it waits)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrating", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade_schema(engine: Engine, chain: MigrationChain) -> tuple[str | None, str]:
    """Bring the chain's tables to the newest revision, in one transaction; (revision before, after)."""
    config = chain.config()
    with _UPGRADING, _file_lock(engine), engine.connect() as connection, _foreign_keys_off(connection):
        with connection.begin():
            _hold(connection, chain)
            before = MigrationContext.configure(
                connection, opts={"version_table": chain.version_table}
            ).get_current_revision()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            _check_references(connection, chain)
    return before, chain.head()


def _hold(connection: Connection, chain: MigrationChain) -> None:
    """Make the upgrade's transaction the only one: on PostgreSQL by the chain's advisory lock (one replica
    migrates, the others then find it done); on SQLite by an explicit BEGIN IMMEDIATE, which takes the write
    lock and puts the DDL in the transaction too (the driver would begin one only before a row is written)."""
    if connection.dialect.name == "postgresql":
        key = zlib.crc32(chain.version_table.encode())
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _check_references(connection: Connection, chain: MigrationChain) -> None:
    """On SQLite, whose upgrade ran with foreign keys off: refuse to commit one that broke a reference."""
    if connection.dialect.name == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
        raise SchemaError(f"upgrading the {chain.component} tables would break references between rows")


@contextmanager
def _foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Foreign keys off on a SQLite connection while it upgrades, and on again afterwards. SQLite ignores the
    pragma inside a transaction, so it is set (and checked) between transactions."""
    if connection.dialect.name != "sqlite":
        yield
        return
    _set_foreign_keys(connection, False)
    try:
        yield
    finally:
        _set_foreign_keys(connection, True)


def _set_foreign_keys(connection: Connection, on: bool) -> None:
    connection.exec_driver_sql(f"PRAGMA foreign_keys={int(on)}")
    state = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
    connection.commit()
    if state != int(on):
        raise SchemaError(f"SQLite would not turn foreign keys {'on' if on else 'off'} for an upgrade")


def run_migrations(context: Any) -> None:
    """The body of every chain's env.py: migrate over the connection `upgrade_schema` holds."""
    config = context.config
    context.configure(
        connection=config.attributes["connection"],
        version_table=config.attributes["version_table"],
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


# -- adopting a database made before migrations ------------------------------------------------------


def baseline_revision(tables: Callable[[], MetaData]) -> tuple[Callable[[], None], Callable[[], None]]:
    """`upgrade` and `downgrade` of a chain's first revision, whose frozen schema `tables` builds: create
    it, or adopt a database made before migrations (`adopt_existing`); drop it."""
    from alembic import op

    def upgrade() -> None:
        adopt_existing(op.get_bind(), tables())

    def downgrade() -> None:
        tables().drop_all(op.get_bind())

    return upgrade, downgrade


def adopt_existing(connection: Connection, metadata: MetaData) -> None:
    """Create the missing tables of `metadata` (a revision's frozen copy of the schema) and, in tables an
    earlier version made, add the columns and indexes a later one introduced (each column nullable or with a
    server default) and rebuild SQLite tables that lack their AUTOINCREMENT."""
    metadata.create_all(connection)
    inspector = inspect(connection)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(connection.dialect)
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
            if column.server_default is not None:
                ddl += f" DEFAULT '{column.server_default.arg}'"  # type: ignore[attr-defined]
            connection.execute(text(ddl))
        indexed = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                index.create(connection)
        if table.kwargs.get("sqlite_autoincrement") and lacks_autoincrement(connection, table):
            rebuild_with_autoincrement(connection, table)


def lacks_autoincrement(connection: Connection, table: Table) -> bool:
    """A SQLite table made before its ids were declared AUTOINCREMENT (never reused)."""
    if connection.dialect.name != "sqlite":
        return False
    created = connection.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": table.name}
    ).scalar()
    return created is not None and "AUTOINCREMENT" not in str(created).upper()


def rebuild_with_autoincrement(connection: Connection, table: Table) -> None:
    """SQLite cannot alter a table's id into AUTOINCREMENT: copy its rows into a new table that has it (the
    copy's largest id then seeds the counter), drop the old one and give the new one its name, so that the
    references of other tables, by name, now lead to it. Foreign keys must be off (`upgrade_schema`)."""
    built = table.to_metadata(table.metadata, name=f"{table.name}_with_autoincrement")
    for index in table.indexes:
        connection.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
    built.create(connection)
    columns = ", ".join(column.name for column in table.columns)
    connection.execute(text(f"INSERT INTO {built.name} ({columns}) SELECT {columns} FROM {table.name}"))
    connection.execute(text(f"DROP TABLE {table.name}"))
    connection.execute(text(f"ALTER TABLE {built.name} RENAME TO {table.name}"))
    table.metadata.remove(built)
