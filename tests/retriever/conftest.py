"""Fixtures for the knowledge-base tests, and taking a database back to an earlier schema revision."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder
from retriever.schema import RETRIEVER_CHAIN, MigrationChain, SchemaError, upgrade_schema
from retriever.store import KnowledgeBase


def downgrade_schema(engine: Engine, chain: MigrationChain, revision: str) -> None:
    """The chain's tables as the release at `revision` left them (what an upgrade then starts from)."""
    config = chain.config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def refused_then_upgraded(engine: Engine, config: RetrieverConfig, embedder: Embedder, revision: str) -> None:
    """A knowledge base on a database whose retriever tables are at `revision` is refused with the upgrade
    hint; `upgrade_schema` then brings them to the newest revision (and the engine is disposed of)."""
    head = RETRIEVER_CHAIN.head()
    with pytest.raises(SchemaError, match=f"at revision {revision}, not {head}: run `archivist db upgrade`"):
        KnowledgeBase(config, embedder)
    assert upgrade_schema(engine, RETRIEVER_CHAIN) == (revision, head)
    engine.dispose()


@pytest.fixture
def store(database_url: str, tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBase]:
    """A knowledge base on each database (SQLite, then PostgreSQL when reachable), indexes under tmp_path."""
    kb = KnowledgeBase(RetrieverConfig(database_url=database_url, index_dir=tmp_path / "index"), embedder)
    yield kb
    kb.close()
