"""Each collection's indexes as caches of SQL: its vector index (FAISS in this process, or a Milvus collection
the processes share) and its BM25 index, opened once per process, changed by the deltas of committed writes,
and synced against SQL whenever their version differs from the collection's (another process wrote), so a
deleted chunk is never retrieved again and a crash between a commit and an index save heals on the next read.
`KnowledgeBase` owns one `IndexCache` and keeps SQL; this module only reads it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import faiss
import numpy as np
from sqlalchemy import Row, Select, select

from retriever.config import RetrieverConfig
from retriever.db import Database
from retriever.lexical import LexicalIndex, Tokenizer
from retriever.models import Chunk, Document, DocumentState
from retriever.vector_index import VectorIndex

if TYPE_CHECKING:
    from retriever.milvus_index import MilvusStore


class _SyncedIndex(Protocol):
    """What the vector and the lexical index share: a SQL-versioned cache of one collection's chunks."""

    version: int
    lock: Any

    def add(self, ids: Any, payload: Any) -> None: ...
    def remove(self, ids: Sequence[int]) -> int: ...
    def sync(
        self, wanted_ids: Sequence[int], load: Callable[[list[int]], tuple[Any, Any]]
    ) -> tuple[int, int]: ...
    def save(self, version: int) -> None: ...


class DenseIndex(_SyncedIndex, Protocol):
    """A collection's vector index: FAISS in this process (`retriever.vector_index.VectorIndex`), or a
    Milvus collection that the processes share (`retriever.milvus_index.MilvusIndex`)."""

    dimension: int
    # False: `search` takes the ids of the chunks that pass the filters (SQL's prefilter). True: the index
    # keeps copies of the document fields the filters test, and `search` takes the `SearchFilters`.
    evaluates_filters: bool

    @property
    def size(self) -> int: ...
    @property
    def kind(self) -> str: ...
    def ids(self) -> np.ndarray: ...
    def search(self, query: np.ndarray, k: int, restriction: Any = None, /) -> list[tuple[int, float]]: ...


class IndexCache:
    """The vector and BM25 indexes of every collection this process has opened.

    `dimension_of(collection_id)` is the dimension of a collection's vectors (its embedder's);
    `index_text(title, headings, text)` is what BM25 indexes for a chunk."""

    def __init__(
        self,
        config: RetrieverConfig,
        db: Database,
        dimension_of: Callable[[int], int],
        index_text: Callable[[str, str, str], str],
    ) -> None:
        self.config = config
        self.db = db
        self._dimension_of = dimension_of
        self._index_text = index_text
        self._vectors: dict[int, DenseIndex] = {}
        self._lexical: dict[int, LexicalIndex] = {}
        self._lock = threading.Lock()
        self._tokenizer = Tokenizer()
        if config.faiss_threads > 0:
            faiss.omp_set_num_threads(config.faiss_threads)
        self._milvus: MilvusStore | None = None
        if config.vector_store == "milvus":
            from retriever.milvus_index import MilvusStore  # pymilvus only where Milvus is used

            self._milvus = MilvusStore(config)

    @property
    def copies_document_fields(self) -> bool:
        """Whether the vector indexes keep copies of document fields (Milvus), which a touch must refresh."""
        return self._milvus is not None

    def vector_index(self, collection_id: int) -> DenseIndex:
        with self._lock:
            index = self._vectors.get(collection_id)
        if index is not None:
            return index
        dimension = self._dimension_of(collection_id)
        with self._lock:
            index = self._vectors.get(collection_id)
            if index is None:
                index = self._open_vector_index(collection_id, dimension)
                self._vectors[collection_id] = index
            return index

    def _open_vector_index(self, collection_id: int, dimension: int) -> DenseIndex:
        """The collection's vector index in the configured store: its Milvus collection, or its FAISS file."""
        if self._milvus is not None:
            return self._milvus.index(collection_id, dimension, self._document_fields)
        return VectorIndex(
            dimension,
            self.config.index_dir / f"collection-{collection_id}.faiss",
            flat_max_vectors=self.config.flat_max_vectors,
            nprobe=self.config.ivf_nprobe,
            use_gpu=self.config.use_gpu,
        )

    def lexical_index(self, collection_id: int) -> LexicalIndex:
        with self._lock:
            index = self._lexical.get(collection_id)
            if index is None:
                path = self.config.index_dir / f"collection-{collection_id}.bm25.npz"
                index = LexicalIndex(path, self._tokenizer, self.config.bm25_k1, self.config.bm25_b)
                self._lexical[collection_id] = index
            return index

    def apply_change(
        self, collection_id: int, version: int, removed: list[int], added: list[int], vectors: np.ndarray
    ) -> None:
        """Apply one committed change to both indexes: as a delta when an index holds exactly the previous
        version, otherwise (another writer got in between) by a full sync against SQL."""

        def given_vectors(_: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return np.asarray(added, dtype=np.int64), vectors

        vector_index = self.vector_index(collection_id)
        stored_vectors = self._vector_loader(vector_index)
        for index, delta, full in (
            (vector_index, given_vectors, stored_vectors),
            (self.lexical_index(collection_id), self._load_texts, self._load_texts),
        ):
            with index.lock:
                if index.version == version - 1:
                    index.remove(removed)
                    if added:
                        index.add(*delta(added))
                    index.save(version)
                else:
                    self._sync(index, collection_id, version, full)

    def refresh_document_fields(self, collection_id: int, document_ids: list[int]) -> None:
        """Write the chunks of touched documents to Milvus again: a touch changes a document's `updated_at`,
        which Milvus keeps a copy of for the filters, without a new version that would make it sync."""
        index = self.vector_index(collection_id)
        with self.db.session() as session:
            chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(document_ids))))
        with index.lock:
            index.add(*self._load_vectors(index.dimension, chunk_ids))

    def synced_vector(self, collection_id: int, version: int) -> DenseIndex:
        """The collection's vector index, brought in line with SQL if another writer changed it."""
        index = self.vector_index(collection_id)
        self._ensure_synced(index, collection_id, version, self._vector_loader(index))
        return index

    def synced_lexical(self, collection_id: int, version: int) -> LexicalIndex:
        """The collection's BM25 index, brought in line with SQL like the vector index."""
        index = self.lexical_index(collection_id)
        self._ensure_synced(index, collection_id, version, self._load_texts)
        return index

    def _ensure_synced(
        self, index: _SyncedIndex, collection_id: int, version: int, load: Callable[[list[int]], Any]
    ) -> None:
        if index.version == version:
            return
        with index.lock:
            if index.version != version:
                self._sync(index, collection_id, version, load)

    def _sync(
        self, index: _SyncedIndex, collection_id: int, version: int, load: Callable[[list[int]], Any]
    ) -> None:
        with self.db.session() as session:
            wanted = session.scalars(
                select(Chunk.id)
                .join(Document)
                .where(Document.collection_id == collection_id, Document.state == DocumentState.ready)
            ).all()
        index.sync(wanted, load)
        index.save(version)

    def _vector_loader(self, index: DenseIndex) -> Callable[[list[int]], tuple[np.ndarray, np.ndarray]]:
        return functools.partial(self._load_vectors, index.dimension)

    def _chunk_rows(self, chunk_ids: Sequence[int], query: Select) -> Iterator[Row]:
        """The rows of `query` (a select from chunks) for the given chunk ids, read 5000 ids at a time."""
        with self.db.session() as session:
            for start in range(0, len(chunk_ids), 5000):
                yield from session.execute(query.where(Chunk.id.in_(chunk_ids[start : start + 5000])))

    def _load_vectors(self, dimension: int, chunk_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        ids: list[int] = []
        blobs: list[bytes] = []
        for chunk_id, blob in self._chunk_rows(chunk_ids, select(Chunk.id, Chunk.embedding)):
            ids.append(chunk_id)
            blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dimension)
        return np.asarray(ids, dtype=np.int64), vectors

    def _load_texts(self, chunk_ids: list[int]) -> tuple[np.ndarray, list[str]]:
        ids: list[int] = []
        texts: list[str] = []
        query = select(Chunk.id, Document.title, Chunk.heading_path, Chunk.text).join(Document)
        for chunk_id, title, headings, text in self._chunk_rows(chunk_ids, query):
            ids.append(chunk_id)
            texts.append(self._index_text(title, headings, text))
        return np.asarray(ids, dtype=np.int64), texts

    def _document_fields(self, chunk_ids: Sequence[int]) -> list[tuple[int, int, str, datetime]]:
        """(chunk id, document id, file type, updated_at) of chunks still in SQL: the fields the filters
        test, which an index that evaluates them itself keeps beside each vector."""
        query = select(Chunk.id, Document.id, Document.file_type, Document.updated_at).join(Document)
        return [tuple(row) for row in self._chunk_rows(chunk_ids, query)]

    def sync_all(self, versions: Iterable[tuple[int, int]]) -> None:
        """Open and sync the indexes of each (collection id, version)."""
        for collection_id, version in versions:
            self.synced_vector(collection_id, version)
            self.synced_lexical(collection_id, version)

    def drop_all(self) -> None:
        """Forget every index and delete its files (and the Milvus collections): `reindex` rebuilds them."""
        with self._lock:
            for pattern in ("collection-*.faiss*", "collection-*.version", "collection-*.bm25.npz*"):
                for path in self.config.index_dir.glob(pattern):
                    path.unlink()
            if self._milvus is not None:
                self._milvus.drop_collections()
            self._vectors.clear()
            self._lexical.clear()

    def vector_count(self) -> int:
        """Vectors in the open vector indexes."""
        with self._lock:
            return sum(index.size for index in self._vectors.values())

    def close(self) -> None:
        if self._milvus is not None:
            self._milvus.close()
