"""Fixtures for the service: an API client over real models and a fresh data dir."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.services import Services
from app.settings import Settings
from retriever.store import KnowledgeBase


@pytest.fixture
def services(settings: Settings, kb: KnowledgeBase, generator) -> Services:  # type: ignore[no-untyped-def]
    return Services(settings, kb=kb, generator=generator)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as test_client:
        yield test_client
