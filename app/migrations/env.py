"""Alembic's entry point for the service's migration chain (`app.schema`)."""

from alembic import context

from retriever.schema import run_migrations

run_migrations(context)
