"""`Searcher`: the top chunks of a collection for a query, over the indexes a `KnowledgeBase` keeps.

Search runs the dense and/or lexical retriever (`mode`), fuses the two rankings for hybrid search, applies
metadata filters inside both indexes, and optionally reranks the fused candidates with a cross-encoder. It
only reads: SQL for the collection's version and the chunks' rows, the indexes synced to that version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from retriever.config import RetrieverConfig, SearchMode
from retriever.db import Database
from retriever.filters import SearchFilters
from retriever.fusion import fuse
from retriever.index_cache import IndexCache
from retriever.language import dense_weight
from retriever.models import Chunk, Document, DocumentState
from retriever.records import CollectionProfile, SearchHit

if TYPE_CHECKING:
    from retriever.rerank import Reranker


class Searcher:
    def __init__(
        self,
        config: RetrieverConfig,
        db: Database,
        indexes: IndexCache,
        locate: Callable[[str], tuple[int, int, CollectionProfile]],
    ) -> None:
        """`locate` gives a collection's (id, version, profile) by name, or raises `NotFoundError`."""
        self.config = config
        self.db = db
        self.indexes = indexes
        self.locate = locate
        # Hybrid search runs BM25 here while the calling thread embeds the query and searches FAISS.
        self._lexical_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bm25")
        self.reranker: Reranker | None = None
        if config.reranker_path is not None:
            from retriever.rerank import Reranker

            self.reranker = Reranker(config.reranker_path, config.embedder_device)

    def search(
        self,
        query: str,
        collection: str,
        top_k: int | None = None,
        mode: SearchMode | None = None,
        filters: SearchFilters | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """The `top_k` best chunks for `query` in `collection`.

        `mode` picks the retrievers (default from the config: hybrid); `filters` restrict the candidates
        inside both indexes; `query_vector` is the query's embedding by `embedder_for(collection)`
        when the caller already has it (the evaluation embeds each question once for all modes). A query
        longer than the embedder can read is cut to what it reads, for both retrievers alike.
        """
        k = top_k or self.config.top_k
        mode = mode or self.config.search_mode
        collection_id, version, profile = self.locate(collection)
        if filters is not None and filters.empty:
            filters = None
        # Milvus evaluates the filters itself; FAISS (an id selector) and BM25 (a mask) take the ids of the
        # chunks that pass them, from SQL.
        filters_inside = mode != "lexical" and self.indexes.vector_index(collection_id).evaluates_filters
        allowed = None
        if filters is not None and not (mode == "dense" and filters_inside):
            allowed = self._allowed_chunks(collection_id, filters)
            if len(allowed) == 0:
                return []
        embedder = profile.embedder
        query = embedder.truncate(query)
        depth = max(k, self.config.rerank_depth) if self.reranker is not None else k
        per_retriever = max(depth, self.config.fusion_depth) if mode == "hybrid" else depth

        def lexical_ranking() -> list[tuple[int, float]]:
            return self.indexes.synced_lexical(collection_id, version).search(query, per_retriever, allowed)

        vector = None
        if mode == "lexical":
            ranked = lexical_ranking()
        else:
            # Hybrid: BM25 (numpy, GIL mostly released) on the pool while this thread embeds the query.
            lexical = self._lexical_pool.submit(lexical_ranking) if mode == "hybrid" else None
            vector = query_vector if query_vector is not None else embedder.embed_query(query)
            restriction = filters if filters_inside else allowed
            index = self.indexes.synced_vector(collection_id, version)
            ranked = index.search(vector, per_retriever, restriction)
            if lexical is not None:
                dense = dense_weight(self.config, profile.language, embedder.multilingual, query)
                weights = (dense, 1.0 - dense)
                ranked = fuse([ranked, lexical.result()], self.config.fusion, self.config.rrf_k, weights)
        hits = self.hits(ranked[:depth], vector)
        if self.reranker is not None:
            hits = self.reranker.rerank(query, hits)
        return hits[:k]

    def _allowed_chunks(self, collection_id: int, filters: SearchFilters) -> np.ndarray:
        """Ids of the collection's chunks that pass the filters: the SQL prefilter handed to the indexes."""
        with self.db.session() as session:
            ids = session.scalars(
                select(Chunk.id)
                .join(Document)
                .where(
                    Document.collection_id == collection_id,
                    Document.state == DocumentState.ready,
                    *filters.conditions(),
                )
            ).all()
        return np.asarray(ids, dtype=np.int64)

    def hits(
        self, ranked: Sequence[tuple[int, float]], query_vector: np.ndarray | None = None
    ) -> list[SearchHit]:
        """Chunk rows for (chunk id, score) pairs, in the given order, skipping any no longer in SQL; with
        the query's embedding, each hit's cosine similarity too (from the embedding stored in SQL)."""
        if not ranked:
            return []
        ids = [chunk_id for chunk_id, _ in ranked]
        with self.db.session() as session:
            rows = session.execute(
                select(Chunk, Document.title, Document.source_path)
                .join(Document)
                .where(Chunk.id.in_(ids), Document.state == DocumentState.ready)
            ).all()
        by_id = {chunk.id: (chunk, title, source) for chunk, title, source in rows}
        hits = []
        for chunk_id, score in ranked:
            if chunk_id not in by_id:
                continue
            chunk, title, source = by_id[chunk_id]
            hits.append(
                SearchHit(
                    chunk_id=chunk.id,
                    document_id=chunk.document_id,
                    title=title,
                    source_path=source,
                    ordinal=chunk.ordinal,
                    char_start=chunk.char_start,
                    char_end=chunk.char_end,
                    text=chunk.text,
                    score=score,
                    similarity=None
                    if query_vector is None
                    else float(np.frombuffer(chunk.embedding, dtype=np.float32) @ query_vector),
                    page=chunk.page,
                    heading_path=chunk.heading_path,
                )
            )
        return hits

    def close(self) -> None:
        self._lexical_pool.shutdown(wait=True)
