"""Schema migrations (`retriever.schema`, `archivist db`): a new database gets the newest tables, which match
the models; an older one, or one made before migrations, is refused with the command that upgrades it and
keeps its rows through the upgrade; one made by a newer version is refused. On SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text
from typer.testing import CliRunner

from app.cli import cli
from app.models import AppBase
from app.schema import SERVICE_CHAIN
from app.settings import get_settings
from retriever.db import Database, make_engine
from retriever.models import Base
from retriever.schema import (
    RETRIEVER_CHAIN,
    MigrationChain,
    SchemaError,
    check_schema,
    current_revision,
    upgrade_schema,
)
from tests.retriever.conftest import downgrade_schema

CHAINS: list[tuple[MigrationChain, MetaData]] = [
    (RETRIEVER_CHAIN, Base.metadata),
    (SERVICE_CHAIN, AppBase.metadata),
]


@pytest.fixture
def cli_database(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ARCHIVIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARCHIVIST_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def open_both(database_url: str) -> Database:
    db = Database(database_url)
    check_schema(db.engine, SERVICE_CHAIN)
    return db


def test_a_new_database_gets_the_newest_tables_and_they_match_the_models(database_url: str) -> None:
    db = open_both(database_url)
    try:
        with db.engine.connect() as connection:
            for chain, metadata in CHAINS:
                context = MigrationContext.configure(
                    connection,
                    opts={
                        "version_table": chain.version_table,
                        "include_name": lambda name, kind, _parent, tables=metadata.tables: (
                            kind != "table" or name in tables
                        ),
                    },
                )
                assert context.get_current_revision() == chain.head()
                assert compare_metadata(context, metadata) == []
    finally:
        db.dispose()


def _made_before_migrations(database_url: str) -> None:
    """The tables as an earlier version made them (no version tables, a column added later missing), with a
    collection and a document in them."""
    engine = make_engine(database_url)
    # The tables of revisions after the first.
    later = ("chunk_bands", "document_bands", "ingest_jobs", "ingest_job_files")
    for metadata in (Base.metadata, AppBase.metadata):
        metadata.create_all(engine, tables=[t for t in metadata.sorted_tables if t.name not in later])
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE documents DROP COLUMN clean_text"))
        connection.execute(text("ALTER TABLE collections DROP COLUMN band_rows"))  # of a later revision
        connection.execute(
            text("INSERT INTO collections (id, name, version, language, embedder, created_at) "
                 "VALUES (1, 'notes', 3, '', '', CURRENT_TIMESTAMP)")
        )  # fmt: skip
        connection.execute(
            text("INSERT INTO documents (id, collection_id, title, source_path, content_hash, file_type, "
                 "size_bytes, state, chunk_count, source_file, text_hash, created_at, updated_at) VALUES "
                 "(7, 1, 'Tides', 'tides.md', 'h', 'md', 10, 'ready', 0, 'tides.md', '', CURRENT_TIMESTAMP, "
                 "CURRENT_TIMESTAMP)")
        )  # fmt: skip
    engine.dispose()


def test_a_database_made_before_migrations_is_refused_until_upgraded(cli_database: str) -> None:
    _made_before_migrations(cli_database)
    with pytest.raises(SchemaError, match="predate schema migrations: run `archivist db upgrade`"):
        Database(cli_database)
    runner = CliRunner()
    status = runner.invoke(cli, ["db", "status"])
    assert status.exit_code == 1 and "retriever tables: revision none" in status.output
    upgrade = runner.invoke(cli, ["db", "upgrade"])
    assert upgrade.exit_code == 0, upgrade.output
    assert (
        "retriever tables: none -> 0004" in upgrade.output
        and "service tables: none -> 0002" in upgrade.output
    )
    again = runner.invoke(cli, ["db", "upgrade"]).output
    assert "already at revision 0004" in again and "already at revision 0002" in again
    assert runner.invoke(cli, ["db", "status"]).exit_code == 0
    db = open_both(cli_database)
    try:
        with db.engine.connect() as connection:
            row = connection.execute(text("SELECT title, clean_text FROM documents WHERE id = 7")).one()
        assert tuple(row) == ("Tides", "")  # the row survived, with the column a later version added
    finally:
        db.dispose()


def test_a_database_of_a_newer_version_is_refused(database_url: str) -> None:
    open_both(database_url).dispose()
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {RETRIEVER_CHAIN.version_table} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="revision 9999, which this version of Archivist does not know"):
        Database(database_url)


def test_replicas_starting_together_on_a_new_database_create_it_once(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share a PostgreSQL server; an embedded SQLite file has one process")
    start = (
        "import sys; from app.schema import SERVICE_CHAIN; from retriever.db import Database; "
        "from retriever.schema import check_schema; db = Database(sys.argv[1]); "
        "check_schema(db.engine, SERVICE_CHAIN); db.dispose()"
    )
    replicas = [
        subprocess.Popen([sys.executable, "-c", start, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [replica.communicate(timeout=120)[1] for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0, 0, 0], errors
    engine = make_engine(database_url)
    assert [current_revision(engine, chain) for chain, _ in CHAINS] == [chain.head() for chain, _ in CHAINS]
    engine.dispose()


def archivist(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={
            "ARCHIVIST_DATABASE_URL": database_url,
            "ARCHIVIST_DATA_DIR": str(data_dir),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_refuses_an_old_database_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _made_before_migrations(url)
    result = archivist(url, tmp_path, "documents", "list")
    assert result.returncode == 2
    assert "predate schema migrations: run `archivist db upgrade`" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "ARCHIVIST_DATABASE_URL is not a database URL"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/absent", "cannot open the database: connection"),
    ],
)
def test_db_commands_name_a_bad_or_unreachable_database_in_one_line(
    tmp_path: Path, url: str, message: str
) -> None:
    for command in (("db", "status"), ("db", "upgrade")):
        result = archivist(url, tmp_path, *command)
        assert result.returncode == 2
        assert message in result.stdout
        assert "Traceback" not in result.stdout + result.stderr


def test_service_tables_one_revision_behind_are_refused_then_upgraded_with_their_rows(
    database_url: str,
) -> None:
    """A database of the release before ingest jobs moved to SQL (service revision 0001) with a key in it."""
    open_both(database_url).dispose()
    engine = make_engine(database_url)
    downgrade_schema(engine, SERVICE_CHAIN, "0001")
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO api_keys (id, name, prefix, key_hash, created_at) "
                 "VALUES (5, 'reader', 'ak_abc', 'h5', CURRENT_TIMESTAMP)")
        )  # fmt: skip
    with pytest.raises(SchemaError, match="revision 0001, not 0002: run `archivist db upgrade`"):
        check_schema(engine, SERVICE_CHAIN)
    assert upgrade_schema(engine, SERVICE_CHAIN) == ("0001", "0002")
    check_schema(engine, SERVICE_CHAIN)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM api_keys WHERE id = 5")).scalar() == "reader"
        assert {"ingest_jobs", "ingest_job_files"} <= set(inspect(connection).get_table_names())
    engine.dispose()
