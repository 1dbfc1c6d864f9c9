"""Configuration of chunking and ingestion; built from the environment by `app.settings` only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkerConfig:
    chunk_tokens: int = 200  # target size in embedder tokens; capped at the embedder's own limit
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ValueError("chunk_tokens must be at least 16")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ValueError("overlap_tokens must be >= 0 and less than half of chunk_tokens")
