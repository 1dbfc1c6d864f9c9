"""Vectors in Milvus (`ARCHIVIST_VECTOR_STORE=milvus`) instead of a FAISS index in every process.

This module owns everything Milvus: the connection (a Milvus Lite file, embedded in this process, or a Milvus
standalone or cluster at an http URI, through the same `MilvusClient`), the collections' schema, and the
translation of `SearchFilters` into Milvus filter expressions. Each collection of the knowledge base (and
embedding dimension) is one Milvus collection, named after the configured prefix, holding per chunk: its
SQL id as primary key, its L2-normalised embedding (inner-product metric), and the document fields the
filters test (`document_id`, `file_type`, `updated_at` in epoch seconds), so that filters and deletes run
inside Milvus.

Like the FAISS index it is a cache of SQL with the same interface (`retriever.store`): `sync` upserts what
SQL has and Milvus lacks and deletes what SQL no longer has, so any number of replicas sharing one Milvus
may sync it at once. Milvus persists itself: `save` only records the collection version this process saw
synced. Milvus unreachable is a `VectorStoreUnavailableError`: one line and exit 2 at start, 503 with
Retry-After for a search later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from retriever.config import RetrieverConfig
from retriever.filters import SearchFilters, _utc
from retriever.records import VectorStoreUnavailableError

TIMEOUT_S = 10.0  # a Milvus that does not answer a call within this is treated as down
WRITE_BATCH = 1000  # rows per upsert or delete
SYNC_BATCH = 10_000  # chunks read from SQL and written to Milvus at a time by `sync`
PRIMARY_KEY = "chunk_id"
FILE_TYPE_BYTES = 256  # Milvus counts VARCHAR lengths in bytes: room for 32 characters of any script

# Milvus Lite logs a traceback when it cannot open its file: the `VectorStoreUnavailableError` raised then
# says so in one line.
logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)

# (chunk id, document id, file type, updated_at) of chunks, read from SQL
DocumentFields = Callable[[Sequence[int]], Iterable[tuple[int, int, str, datetime]]]


def epoch_seconds(moment: datetime) -> float:
    """The moment as Unix time; naive datetimes are UTC, like every stored timestamp."""
    return _utc(moment).timestamp()


def without_credentials(uri: str) -> str:
    """`uri` without a user and password, fit for messages (a file path is returned as it is)."""
    parts = urlsplit(uri)
    if not parts.scheme or parts.password is None and parts.username is None:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def quoted(text: str) -> str:
    """`text` as a string literal of Milvus's expression grammar."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def milvus_filter(filters: SearchFilters) -> str:
    """The filters as a Milvus boolean expression over the collection's fields, with the same meaning as
    `SearchFilters.conditions` in SQL."""
    terms: list[str] = []
    if filters.document_ids is not None:
        terms.append(f"document_id in [{', '.join(str(int(i)) for i in filters.document_ids)}]")
    if filters.file_types is not None:
        kinds = (kind.lower().lstrip(".") for kind in filters.file_types)
        terms.append(f"file_type in [{', '.join(quoted(kind) for kind in kinds)}]")
    if filters.updated_after is not None:
        terms.append(f"updated_at >= {epoch_seconds(filters.updated_after)!r}")
    if filters.updated_before is not None:
        terms.append(f"updated_at <= {epoch_seconds(filters.updated_before)!r}")
    return " and ".join(terms)


class MilvusStore:
    """The Milvus that a knowledge base keeps its vectors in: one client for all its collections."""

    def __init__(self, config: RetrieverConfig) -> None:
        uri = config.milvus_uri or str(config.index_dir / "milvus.db")
        self.prefix = config.milvus_prefix
        self.where = f"{without_credentials(uri)} (ARCHIVIST_MILVUS_URI)"
        if urlsplit(uri).scheme:
            failure = f"cannot reach Milvus at {self.where}"
        else:  # a Milvus Lite file, whose folder must exist
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            failure = f"cannot open the Milvus Lite file {self.where} (one process at a time can)"
            # Milvus Lite has no snapshot timestamps for iterators: pymilvus warns at each listing of ids.
            logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
        with self.answering(failure):
            self.client = MilvusClient(uri=uri, token=config.milvus_token or "", timeout=TIMEOUT_S)

    @contextmanager
    def answering(self, failure: str = "") -> Iterator[None]:
        """A Milvus error inside the block as a `VectorStoreUnavailableError` saying where Milvus is."""
        try:
            yield
        except MilvusException as error:
            problem = failure or f"Milvus at {self.where} failed"
            raise VectorStoreUnavailableError(f"{problem}: {error.message}") from error

    def index(self, collection_id: int, dimension: int, document_fields: DocumentFields) -> MilvusIndex:
        """The Milvus collection of a knowledge-base collection, created when it does not exist yet."""
        name = f"{self.prefix}_collection_{collection_id}_dim{dimension}"
        return MilvusIndex(self, name, dimension, document_fields)

    def drop_collections(self) -> None:
        """Drop every Milvus collection of this prefix (`archivist reindex` builds them again from SQL)."""
        with self.answering():
            for name in self.client.list_collections(timeout=TIMEOUT_S):
                if name.startswith(f"{self.prefix}_collection_"):
                    self.client.drop_collection(name, timeout=TIMEOUT_S)

    def close(self) -> None:
        self.client.close()


class MilvusIndex:
    """One collection's chunks in Milvus, with the interface of `retriever.vector_index.VectorIndex` that
    the store uses; `search` takes the filters themselves rather than the ids that pass them."""

    evaluates_filters = True
    kind = "milvus"

    def __init__(
        self, store: MilvusStore, name: str, dimension: int, document_fields: DocumentFields
    ) -> None:
        self.store = store
        self.client = store.client
        self.name = name
        self.dimension = dimension
        self.document_fields = document_fields
        self.lock = threading.RLock()
        self.version = -1  # the collection version this process saw synced; -1 = unknown
        with store.answering():
            self._create_or_load()

    def _create_or_load(self) -> None:
        """Create the collection and its index unless they exist (another replica may be creating them at
        the same moment: what it made first is kept), then load it for searching."""
        if not self.client.has_collection(self.name, timeout=TIMEOUT_S):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(PRIMARY_KEY, DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
            schema.add_field("document_id", DataType.INT64)
            schema.add_field("file_type", DataType.VARCHAR, max_length=FILE_TYPE_BYTES)
            schema.add_field("updated_at", DataType.DOUBLE)
            # Strong consistency: a search sees every write acknowledged before it, deletes included.
            with self._unless_made(lambda: self.client.has_collection(self.name, timeout=TIMEOUT_S)):
                self.client.create_collection(
                    self.name, schema=schema, consistency_level="Strong", timeout=TIMEOUT_S
                )
        if not self.client.list_indexes(self.name, timeout=TIMEOUT_S):
            index_params = MilvusClient.prepare_index_params()
            index_params.add_index("vector", index_type="AUTOINDEX", metric_type="IP")
            # Milvus builds the index of each sealed segment as it comes: nothing to wait for here.
            with self._unless_made(lambda: self.client.list_indexes(self.name, timeout=TIMEOUT_S)):
                self.client.create_index(self.name, index_params, timeout=TIMEOUT_S, sync=False)
        self.client.load_collection(self.name, timeout=TIMEOUT_S)

    @staticmethod
    @contextmanager
    def _unless_made(made: Callable[[], object]) -> Iterator[None]:
        """Let a creation fail when `made()` says another replica made the same thing."""
        try:
            yield
        except MilvusException:
            if not made():
                raise

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        with self.store.answering():
            [row] = self.client.query(self.name, output_fields=["count(*)"], timeout=TIMEOUT_S)
        return int(row["count(*)"])

    def ids(self) -> np.ndarray:
        found: list[int] = []
        with self.store.answering():
            pages = self.client.query_iterator(
                self.name, batch_size=SYNC_BATCH, output_fields=[PRIMARY_KEY], timeout=TIMEOUT_S
            )
            try:
                while page := pages.next():
                    found += (row[PRIMARY_KEY] for row in page)
            finally:
                pages.close()
        return np.asarray(found, dtype=np.int64)

    def search(
        self, query: np.ndarray, k: int, filters: SearchFilters | None = None
    ) -> list[tuple[int, float]]:
        """The `k` nearest (chunk id, inner product) pairs among the chunks that pass `filters`, which
        Milvus evaluates while it searches, so a filter never empties an already truncated list."""
        vector = np.ascontiguousarray(query.reshape(-1), dtype=np.float32)
        with self.store.answering():
            [hits] = self.client.search(
                self.name,
                data=[vector],
                limit=k,
                filter=milvus_filter(filters) if filters is not None else "",
                output_fields=[PRIMARY_KEY],
                search_params={"metric_type": "IP"},
                timeout=TIMEOUT_S,
            )
        return [(int(hit["entity"][PRIMARY_KEY]), float(hit["distance"])) for hit in hits]

    # -- writing -----------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert chunks with their document fields read from SQL (a chunk SQL no longer has is left out):
        writing the same chunk twice, as replicas syncing together do, leaves one copy."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index expects {self.dimension}")
        row_of = {int(chunk_id): row for row, chunk_id in enumerate(ids)}
        rows = [
            {
                PRIMARY_KEY: chunk_id,
                "vector": vectors[row_of[chunk_id]],
                "document_id": document_id,
                "file_type": file_type,
                "updated_at": epoch_seconds(updated_at),
            }
            for chunk_id, document_id, file_type, updated_at in self.document_fields(list(row_of))
        ]
        with self.store.answering():
            for start in range(0, len(rows), WRITE_BATCH):
                self.client.upsert(self.name, rows[start : start + WRITE_BATCH], timeout=TIMEOUT_S)

    def remove(self, ids: Iterable[int]) -> int:
        """Delete chunks; returns how many ids were given (Milvus does not say how many it held)."""
        doomed = [int(chunk_id) for chunk_id in ids]
        with self.store.answering():
            for start in range(0, len(doomed), WRITE_BATCH):
                self.client.delete(self.name, ids=doomed[start : start + WRITE_BATCH], timeout=TIMEOUT_S)
        return len(doomed)

    def sync(
        self, wanted_ids: Iterable[int], load_vectors: Callable[[list[int]], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[int, int]:
        """Make the collection hold exactly `wanted_ids`; returns (added, removed). The missing chunks are
        read from SQL and written a batch at a time, so a rebuild never holds all vectors in memory."""
        wanted = set(wanted_ids)
        with self.lock:
            present = set(self.ids().tolist())
            removed = self.remove(sorted(present - wanted))
            missing = sorted(wanted - present)
            for start in range(0, len(missing), SYNC_BATCH):
                self.add(*load_vectors(missing[start : start + SYNC_BATCH]))
        return len(missing), removed

    def save(self, version: int) -> None:
        """Milvus persists each write itself: only note the version this process has synced."""
        self.version = version
