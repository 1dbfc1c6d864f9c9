"""Fixtures for the ingest tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retriever.embedder import Embedder
from retriever.store import KnowledgeBase
from tests.conftest import make_settings


@pytest.fixture
def any_kb(tmp_path: Path, database_url: str, embedder: Embedder) -> Iterator[KnowledgeBase]:
    """A knowledge base on SQLite, then on PostgreSQL."""
    settings = make_settings(tmp_path / "data", database_url=database_url)
    knowledge_base = KnowledgeBase(settings.retriever_config(), embedder)
    yield knowledge_base
    knowledge_base.close()
