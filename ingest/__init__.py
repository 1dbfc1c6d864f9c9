"""Turning files into chunks: loaders, cleaning, chunking and the ingest pipeline."""
