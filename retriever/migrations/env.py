"""Alembic's entry point for the retriever's migration chain (`retriever.schema`)."""

from alembic import context

from retriever.schema import run_migrations

run_migrations(context)
