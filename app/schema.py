"""The service's migration chain: its own tables (API keys and their grants, conversations and their
messages, ingest jobs and their files), versioned apart from the retriever's (`retriever.schema`)."""

from __future__ import annotations

from pathlib import Path

from retriever.schema import MigrationChain

SERVICE_CHAIN = MigrationChain(
    "service",
    Path(__file__).parent / "migrations",
    "alembic_version_service",
    ("api_keys", "api_key_grants", "conversations", "messages", "ingest_jobs", "ingest_job_files"),
)
