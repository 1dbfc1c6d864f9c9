"""The Archivist service: settings, the RAG pipeline, the REST API and the `archivist` CLI."""
