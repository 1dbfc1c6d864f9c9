"""`KnowledgeBase`: the one place that writes collections, documents and chunks, and keeps indexes in step.

Every write is one SQL transaction that also bumps the collection's `version`. Indexes are caches of SQL:
before a search the collection's index is synced against SQL whenever its version differs, so a document
deleted by any process (the API, the CLI) is never retrieved again, and a crash between the SQL commit and
the index save heals itself on the next read.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from retriever.config import RetrieverConfig
from retriever.db import Database
from retriever.embedder import Embedder
from retriever.models import Chunk, Collection, Document, DocumentState
from retriever.vector_index import VectorIndex

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class NotFoundError(LookupError):
    """A collection or document that does not exist."""


class InvalidNameError(ValueError):
    pass


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk as produced by ingestion, before it has an id."""

    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int


@dataclass(frozen=True)
class DocumentDraft:
    collection: str
    source_path: str
    title: str
    file_type: str
    size_bytes: int
    content_hash: str


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    collection: str
    title: str
    source_path: str
    content_hash: str
    file_type: str
    size_bytes: int
    chunk_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    document_count: int
    chunk_count: int
    version: int


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    document_id: int
    title: str
    source_path: str
    ordinal: int
    char_start: int
    char_end: int
    text: str
    score: float


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    return name


def _document_info(document: Document, collection_name: str) -> DocumentInfo:
    return DocumentInfo(
        id=document.id,
        collection=collection_name,
        title=document.title,
        source_path=document.source_path,
        content_hash=document.content_hash,
        file_type=document.file_type,
        size_bytes=document.size_bytes,
        chunk_count=document.chunk_count,
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


class KnowledgeBase:
    def __init__(self, config: RetrieverConfig, embedder: Embedder) -> None:
        self.config = config
        self.embedder = embedder
        self.db = Database(config.database_url)
        self._indexes: dict[int, VectorIndex] = {}
        self._index_lock = threading.Lock()

    # -- collections -------------------------------------------------------------------------------------

    def _collection(self, session: Session, name: str) -> Collection:
        collection = session.scalar(select(Collection).where(Collection.name == name))
        if collection is None:
            raise NotFoundError(f"collection {name!r} does not exist")
        return collection

    def _ensure_collection(self, session: Session, name: str) -> Collection:
        validate_collection_name(name)
        collection = session.scalar(select(Collection).where(Collection.name == name))
        if collection is None:
            collection = Collection(name=name, version=0)
            session.add(collection)
            session.flush()
        return collection

    def ensure_collection(self, name: str) -> None:
        with self.db.session() as session:
            self._ensure_collection(session, name)

    def collection_version(self, name: str) -> int:
        with self.db.session() as session:
            return self._collection(session, name).version

    def list_collections(self) -> list[CollectionInfo]:
        with self.db.session() as session:
            ready = Document.state == DocumentState.ready
            rows = session.execute(
                select(
                    Collection.name,
                    Collection.version,
                    func.count(Document.id),
                    func.coalesce(func.sum(Document.chunk_count), 0),
                )
                .outerjoin(Document, (Document.collection_id == Collection.id) & ready)
                .group_by(Collection.id)
                .order_by(Collection.name)
            ).all()
        return [
            CollectionInfo(name=name, version=version, document_count=docs, chunk_count=int(chunks))
            for name, version, docs, chunks in rows
        ]

    # -- documents ---------------------------------------------------------------------------------------

    def find_document(self, collection: str, source_path: str) -> DocumentInfo | None:
        with self.db.session() as session:
            document = session.scalar(
                select(Document)
                .join(Collection)
                .where(
                    Collection.name == collection,
                    Document.source_path == source_path,
                    Document.state == DocumentState.ready,
                )
            )
            return _document_info(document, collection) if document else None

    def get_document(self, document_id: int) -> DocumentInfo:
        with self.db.session() as session:
            document = session.get(Document, document_id)
            if document is None or document.state != DocumentState.ready:
                raise NotFoundError(f"document {document_id} does not exist")
            return _document_info(document, document.collection.name)

    def list_documents(self, collection: str | None = None) -> list[DocumentInfo]:
        with self.db.session() as session:
            query = (
                select(Document, Collection.name)
                .join(Collection)
                .where(Document.state == DocumentState.ready)
                .order_by(Document.id)
            )
            if collection is not None:
                self._collection(session, collection)
                query = query.where(Collection.name == collection)
            return [_document_info(document, name) for document, name in session.execute(query).all()]

    def replace_document(
        self, draft: DocumentDraft, chunks: Sequence[ChunkDraft], vectors: np.ndarray
    ) -> tuple[int, bool]:
        """Store a document with its chunks, replacing any earlier version from the same source.

        Returns (document id, whether an earlier version was replaced). SQL changes in one transaction;
        then the vector index is updated and saved.
        """
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.db.session() as session:
            collection = self._ensure_collection(session, draft.collection)
            document = session.scalar(
                select(Document).where(
                    Document.collection_id == collection.id, Document.source_path == draft.source_path
                )
            )
            replaced = document is not None
            old_ids: list[int] = []
            if document is None:
                document = Document(collection_id=collection.id, source_path=draft.source_path)
                session.add(document)
            else:
                old_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id == document.id)))
                session.execute(delete(Chunk).where(Chunk.document_id == document.id))
            document.title = draft.title
            document.file_type = draft.file_type
            document.size_bytes = draft.size_bytes
            document.content_hash = draft.content_hash
            document.chunk_count = len(chunks)
            document.state = DocumentState.ready
            session.flush()
            new_ids = self._insert_chunks(session, document.id, chunks, vectors)
            version = self._bump_version(session, collection.id)
            collection_id = collection.id
        self._apply_change(collection_id, version, old_ids, new_ids, vectors)
        return document.id, replaced

    @staticmethod
    def _insert_chunks(
        session: Session, document_id: int, chunks: Sequence[ChunkDraft], vectors: np.ndarray
    ) -> list[int]:
        if not chunks:
            return []
        rows = [
            {
                "document_id": document_id,
                "ordinal": chunk.ordinal,
                "text": chunk.text,
                "char_start": chunk.char_start,
                "char_end": chunk.char_end,
                "token_count": chunk.token_count,
                "embedding": vector.tobytes(),
            }
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        result = session.scalars(insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True), rows)
        return list(result)

    @staticmethod
    def _bump_version(session: Session, collection_id: int) -> int:
        session.execute(
            update(Collection).where(Collection.id == collection_id).values(version=Collection.version + 1)
        )
        version = session.scalar(select(Collection.version).where(Collection.id == collection_id))
        assert version is not None
        return version

    def delete_document(self, document_id: int) -> DocumentInfo:
        """Remove a document and all its chunks from SQL and from the index together."""
        with self.db.session() as session:
            document = session.get(Document, document_id)
            if document is None or document.state != DocumentState.ready:
                raise NotFoundError(f"document {document_id} does not exist")
            info = _document_info(document, document.collection.name)
            chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id == document_id)))
            session.execute(delete(Chunk).where(Chunk.document_id == document_id))
            session.execute(delete(Document).where(Document.id == document_id))
            version = self._bump_version(session, document.collection_id)
            collection_id = document.collection_id
        self._apply_change(collection_id, version, chunk_ids, [], np.zeros((0, self.embedder.dimension)))
        return info

    # -- search ------------------------------------------------------------------------------------------

    def search(self, query: str, collection: str, top_k: int | None = None) -> list[SearchHit]:
        k = top_k or self.config.top_k
        with self.db.session() as session:
            found = self._collection(session, collection)
            collection_id, version = found.id, found.version
        index = self.synced_index(collection_id, version)
        vector = self.embedder.embed([query])[0]
        ranked = index.search(vector, k)
        return self.hits(ranked)

    def hits(self, ranked: Sequence[tuple[int, float]]) -> list[SearchHit]:
        """Chunk rows for (chunk id, score) pairs, in the given order, skipping any no longer in SQL."""
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
                )
            )
        return hits

    # -- index consistency -------------------------------------------------------------------------------

    def _index(self, collection_id: int) -> VectorIndex:
        with self._index_lock:
            index = self._indexes.get(collection_id)
            if index is None:
                path = self.config.index_dir / f"collection-{collection_id}.faiss"
                index = VectorIndex(self.embedder.dimension, path)
                self._indexes[collection_id] = index
            return index

    def _apply_change(
        self, collection_id: int, version: int, removed: list[int], added: list[int], vectors: np.ndarray
    ) -> None:
        """Apply one committed change to the index: as a delta when the index holds exactly the previous
        version, otherwise (another writer got in between) by a full sync against SQL."""
        index = self._index(collection_id)
        with index.lock:
            if index.version == version - 1:
                index.remove(removed)
                index.add(np.asarray(added, dtype=np.int64), vectors)
                index.save(version)
            else:
                self._sync(index, collection_id, version)

    def synced_index(self, collection_id: int, version: int) -> VectorIndex:
        """The collection's index, brought in line with SQL if another writer changed the collection."""
        index = self._index(collection_id)
        if index.version == version:
            return index
        with index.lock:
            if index.version != version:
                self._sync(index, collection_id, version)
        return index

    def _sync(self, index: VectorIndex, collection_id: int, version: int) -> None:
        with self.db.session() as session:
            wanted = session.scalars(
                select(Chunk.id)
                .join(Document)
                .where(Document.collection_id == collection_id, Document.state == DocumentState.ready)
            ).all()
        index.sync(wanted, self._load_vectors)
        index.save(version)

    def _load_vectors(self, chunk_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        ids: list[int] = []
        blobs: list[bytes] = []
        with self.db.session() as session:
            for start in range(0, len(chunk_ids), 5000):
                batch = chunk_ids[start : start + 5000]
                for chunk_id, blob in session.execute(
                    select(Chunk.id, Chunk.embedding).where(Chunk.id.in_(batch))
                ):
                    ids.append(chunk_id)
                    blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), self.embedder.dimension)
        return np.asarray(ids, dtype=np.int64), vectors

    def load_indexes(self) -> None:
        """Open and sync every collection's index (at startup, so a bad index file fails early)."""
        with self.db.session() as session:
            rows = session.execute(select(Collection.id, Collection.version)).all()
        for collection_id, version in rows:
            self.synced_index(collection_id, version)

    def reindex(self) -> int:
        """Rebuild every index from the embeddings stored in SQL; returns the number of vectors indexed."""
        with self._index_lock:
            for path in self.config.index_dir.glob("collection-*.faiss*"):
                path.unlink()
            for path in self.config.index_dir.glob("collection-*.version"):
                path.unlink()
            self._indexes.clear()
        self.load_indexes()
        return sum(index.size for index in self._indexes.values())

    def close(self) -> None:
        self.db.dispose()
