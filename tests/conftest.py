"""Shared fixtures: the real models (loaded once per session), fresh knowledge bases, and the databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app.settings import Settings
from llm.config import EngineConfig
from retriever.embedder import Embedder
from retriever.store import KnowledgeBase

# Without a GPU the Triton kernels run under the interpreter. Triton reads the variable when it is first
# imported, and tests of other packages import it indirectly (sentence-transformers), so set it here, before
# any test runs (nothing imported above imports Triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Engines in tests decode eagerly, servers started as subprocesses included: compiling the CPU decode step
# costs minutes on a cold 2-core machine, and tests/llm/test_compiled_decode.py checks that path on its own.
os.environ.setdefault("ARCHIVIST_LLM_ENFORCE_EAGER", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (a fresh clone has no ../shared); skipping")
    return path


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


def service_engine(served: EngineConfig | None = None):  # type: ignore[no-untyped-def]
    """The backend of the service tests: our engine as `served` configures it (default: the default model
    without adapters), decoding eagerly, with a context of 4096 tokens for 16 sequences."""
    from llm.engine import load_engine

    config = served or EngineConfig()
    return load_engine(replace(config, max_model_len=4096, max_num_seqs=16, enforce_eager=True))


@pytest.fixture(scope="session")
def generator():  # type: ignore[no-untyped-def]
    """`service_engine`, shared by the session's service tests."""
    engine = service_engine()
    yield engine
    engine.shutdown()


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return None
    except OperationalError as error:
        return f"PostgreSQL at 127.0.0.1:5432 (database test) is not reachable: {str(error).splitlines()[0]}"


def _reset_postgres() -> None:
    """Every table of the test database, the service's and the migrations' version tables included."""
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on the local PostgreSQL server (skipped when it is absent)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'archivist.db'}"
        return
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    _reset_postgres()
    yield POSTGRES_URL
    _reset_postgres()


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, _env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", max_new_tokens=8)


@pytest.fixture
def kb(settings: Settings, embedder: Embedder) -> Iterator[KnowledgeBase]:
    knowledge_base = KnowledgeBase(settings.retriever_config(), embedder)
    yield knowledge_base
    knowledge_base.close()
