"""The knowledge base: SQL tables, the embedder, the vector index and search, kept consistent."""
