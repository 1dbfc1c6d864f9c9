"""Optional cross-encoder reranker, loaded from a local folder (never from a hub).

A cross-encoder reads the query and a passage together, so it judges relevance better than either first-
stage retriever, at the cost of one model pass per candidate: it reorders the top `rerank_depth` fused
candidates only. It reads the same text the retrievers indexed (the title, then the chunk).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from retriever.embedder import EmbedderNotFoundError
from retriever.records import SearchHit, passage_text


class Reranker:
    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 32) -> None:
        if not Path(path).is_dir():
            raise EmbedderNotFoundError(
                f"reranker folder {path} does not exist: set ARCHIVIST_RERANKER_PATH to a local "
                "sentence-transformers cross-encoder folder, or unset it to search without reranking"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        self.path = Path(path)
        self.model = CrossEncoder(str(path), device=device, local_files_only=True)
        self.batch_size = batch_size

    def rerank(self, query: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        """`hits` reordered by the cross-encoder's score, which replaces the retrieval score."""
        if not hits:
            return []
        pairs = [(query, passage_text(hit.title, hit.text)) for hit in hits]
        scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        rescored = [replace(hit, score=float(score)) for hit, score in zip(hits, scores, strict=True)]
        return sorted(rescored, key=lambda hit: -hit.score)
