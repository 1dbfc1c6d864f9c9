"""LSH band keys of MinHash signatures in SQL: the chunks' (`chunk_bands`) and the documents'
(`document_bands`): computing them, writing them with their rows, finding the stored rows that share one,
and re-keying a collection.

A signature (`ingest.dedup`: little-endian uint32 values) is cut into bands of `rows` consecutive values; two
chunks (or two documents) are near-duplicate candidates when any band of one equals the same band of the
other. Each band is stored as a 64-bit key, a hash of the band's width, position and values, so one index on
(collection, key) finds the candidates of a new document and of its chunks: ingest reads the signatures of
those candidates only, never the whole collection. Two bands that differ share a key with probability 2^-64,
and candidates are verified on their signatures anyway.

The width follows from the ingest's dedup threshold, so each collection records the width its keys were
made with (`Collection.band_rows`, 0 for none); a writer keys new rows with it, and `rekey` rebuilds a
collection's keys for another width (after a threshold change, or for a collection upgraded from before the
keys existed). Keys are deleted with their row by the foreign key's cascade.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, delete, insert, or_, select, update

from retriever.models import Chunk, ChunkBand, Collection, Document, DocumentBand, DocumentState

VALUE_BYTES = 4  # one uint32 value of a signature
_QUERY_KEYS = 900  # bound parameters per candidate query (SQLite allows 999 in old builds)
_REKEY_PAGE = 2000  # rows read at a time when re-keying a collection


def band_keys(signature: bytes, rows: int) -> list[int]:
    """The key of each whole band of `rows` values of a stored signature, as a signed 64-bit integer."""
    width = rows * VALUE_BYTES
    return [
        int.from_bytes(
            hashlib.blake2b(
                signature[start : start + width], digest_size=8, salt=struct.pack("<QQ", rows, band)
            ).digest(),
            "little",
            signed=True,
        )
        for band, start in enumerate(range(0, len(signature) - width + 1, width))
    ]


def _signed_chunks(collection_id: int) -> Select[int, bytes | None]:
    return (
        select(Chunk.id, Chunk.minhash)
        .join(Document)
        .where(Document.collection_id == collection_id, Chunk.minhash.is_not(None))
        .order_by(Chunk.id)
    )


def _signed_documents(collection_id: int) -> Select[int, bytes | None]:
    return (
        select(Document.id, Document.minhash)
        .where(Document.collection_id == collection_id, Document.minhash.is_not(None))
        .order_by(Document.id)
    )


@dataclass(frozen=True)
class Keyed:
    """Rows whose signatures are keyed (chunks or documents): their key table, its column naming the keyed
    row, and the query of a collection's signed rows, (id, signature) by id."""

    keys: type[ChunkBand] | type[DocumentBand]
    owner: str
    signed: Callable[[int], Select[int, bytes | None]]


CHUNKS = Keyed(ChunkBand, "chunk_id", _signed_chunks)
DOCUMENTS = Keyed(DocumentBand, "document_id", _signed_documents)


def _rows(
    keyed: Keyed, collection_id: int, rows: int, signed: Iterable[tuple[int, bytes | None]]
) -> list[dict[str, Any]]:
    return [
        {keyed.owner: owner_id, "band": band, "collection_id": collection_id, "key": key}
        for owner_id, signature in signed
        if signature is not None
        for band, key in enumerate(band_keys(signature, rows))
    ]


def write_keys(
    connection: Connection,
    keyed: Keyed,
    collection_id: int,
    rows: int,
    signed: Iterable[tuple[int, bytes | None]],
) -> None:
    """Store the band keys of new rows, (id, signature or None), in the collection's width (`rows`, 0:
    none), which the caller read from the collection row it holds locked."""
    if rows:
        values = _rows(keyed, collection_id, rows, signed)
        if values:
            connection.execute(insert(keyed.keys), values)


def rekey(
    connection: Connection, collection_id: int, rows: int, kinds: Sequence[Keyed] = (CHUNKS, DOCUMENTS)
) -> None:
    """Replace the band keys of every signed row of a collection (of each kind) by keys of `rows`-wide
    bands, reading the signatures a page at a time. The collection row is updated first: its lock keeps
    writers, which take it before they read the width, out until the new keys are committed."""
    connection.execute(update(Collection).where(Collection.id == collection_id).values(band_rows=rows))
    for keyed in kinds:
        connection.execute(delete(keyed.keys).where(keyed.keys.collection_id == collection_id))
        query = keyed.signed(collection_id).limit(_REKEY_PAGE)
        id_column = query.selected_columns[0]
        last = 0
        while page := connection.execute(query.where(id_column > last)).tuples().all():
            write_keys(connection, keyed, collection_id, rows, page)
            last = page[-1][0]


def chunk_candidates(
    connection: Connection, collection: str, keys: Sequence[int]
) -> Iterator[tuple[int, int, int, str, str, bytes]]:
    """(key, chunk id, document id, source path, title, signature) of the named collection's ready chunks
    with any of `keys`; a chunk comes once per key it shares."""
    unique = sorted(set(keys))
    for start in range(0, len(unique), _QUERY_KEYS):
        rows = connection.execute(
            select(
                ChunkBand.key,
                Chunk.id,
                Chunk.document_id,
                Document.source_path,
                Document.title,
                Chunk.minhash,
            )
            .join(Collection, Collection.id == ChunkBand.collection_id)
            .join(Chunk, Chunk.id == ChunkBand.chunk_id)
            .join(Document, Document.id == Chunk.document_id)
            .where(
                Collection.name == collection,
                ChunkBand.key.in_(unique[start : start + _QUERY_KEYS]),
                Document.state == DocumentState.ready,
            )
        )
        for key, chunk_id, document_id, source_path, title, signature in rows:
            assert signature is not None  # a chunk without a signature has no keys
            yield key, chunk_id, document_id, source_path, title, signature


def document_candidates(
    connection: Connection, collection: str, text_hash: str, keys: Sequence[int]
) -> list[tuple[int, str, str, str, bytes | None]]:
    """(id, source path, title, text hash, signature) of the named collection's ready documents whose text
    has `text_hash` or whose signature shares any of `keys`, once each, by id."""
    found: dict[int, tuple[int, str, str, str, bytes | None]] = {}
    unique = sorted(set(keys))
    for start in range(0, max(len(unique), 1), _QUERY_KEYS):
        banded = (
            select(DocumentBand.document_id)
            .join(Collection, Collection.id == DocumentBand.collection_id)
            .where(Collection.name == collection, DocumentBand.key.in_(unique[start : start + _QUERY_KEYS]))
        )
        rows = connection.execute(
            select(Document.id, Document.source_path, Document.title, Document.text_hash, Document.minhash)
            .join(Collection)
            .where(
                Collection.name == collection,
                Document.state == DocumentState.ready,
                or_(Document.text_hash == text_hash, Document.id.in_(banded)),
            )
        ).tuples()
        found.update((row[0], row) for row in rows)
    return [found[document_id] for document_id in sorted(found)]
