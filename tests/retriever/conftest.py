"""Fixtures for the knowledge-base tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder
from retriever.store import KnowledgeBase


@pytest.fixture
def store(database_url: str, tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBase]:
    """A knowledge base on each database (SQLite, then PostgreSQL when reachable), indexes under tmp_path."""
    kb = KnowledgeBase(RetrieverConfig(database_url=database_url, index_dir=tmp_path / "index"), embedder)
    yield kb
    kb.close()
