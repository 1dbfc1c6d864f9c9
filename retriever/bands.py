"""LSH band keys of the chunks' MinHash signatures in SQL (`chunk_bands`): computing them, writing them with
their chunks, finding the stored chunks that share one, and re-keying a collection.

A signature (`ingest.dedup`: little-endian uint32 values) is cut into bands of `rows` consecutive values; two
chunks are near-duplicate candidates when any band of one equals the same band of the other. Each band is
stored as a 64-bit key, a hash of the band's width, position and values, so one index on (collection, key)
finds the candidates of a new document's chunks: ingest reads the signatures of those candidates only, never
the whole collection. Two bands that differ share a key with probability 2^-64, and candidates are verified
on their signatures anyway.

The width follows from the ingest's dedup threshold, so each collection records the width its keys were
made with (`Collection.band_rows`, 0 for none); a writer keys new chunks with it, and `rekey` rebuilds a
collection's keys for another width (after a threshold change, or for a collection upgraded from before the
keys existed). Keys are deleted with their chunk by the foreign key's cascade.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import Connection, delete, insert, select, update

from retriever.models import Chunk, ChunkBand, Collection, Document, DocumentState

VALUE_BYTES = 4  # one uint32 value of a signature
_QUERY_KEYS = 900  # bound parameters per candidate query (SQLite allows 999 in old builds)
_REKEY_PAGE = 2000  # chunks read at a time when re-keying a collection


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


def _rows(collection_id: int, rows: int, chunks: Iterable[tuple[int, bytes | None]]) -> list[dict[str, int]]:
    return [
        {"chunk_id": chunk_id, "band": band, "collection_id": collection_id, "key": key}
        for chunk_id, signature in chunks
        if signature is not None
        for band, key in enumerate(band_keys(signature, rows))
    ]


def write_keys(
    connection: Connection, collection_id: int, rows: int, chunks: Iterable[tuple[int, bytes | None]]
) -> None:
    """Store the band keys of new chunks, (id, signature or None), in the collection's width (`rows`, 0:
    none), which the caller read from the collection row it holds locked."""
    if rows:
        values = _rows(collection_id, rows, chunks)
        if values:
            connection.execute(insert(ChunkBand), values)


def rekey(connection: Connection, collection_id: int, rows: int) -> None:
    """Replace the band keys of every signed chunk of a collection by keys of `rows`-wide bands, reading the
    signatures a page at a time. The collection row is updated first: its lock keeps writers, which take it
    before they read the width, out until the new keys are committed."""
    connection.execute(update(Collection).where(Collection.id == collection_id).values(band_rows=rows))
    connection.execute(delete(ChunkBand).where(ChunkBand.collection_id == collection_id))
    query = (
        select(Chunk.id, Chunk.minhash)
        .join(Document)
        .where(Document.collection_id == collection_id, Chunk.minhash.is_not(None))
        .order_by(Chunk.id)
        .limit(_REKEY_PAGE)
    )
    last = 0
    while page := connection.execute(query.where(Chunk.id > last)).all():
        write_keys(connection, collection_id, rows, page)
        last = page[-1][0]


def candidates(
    connection: Connection, collection: str, keys: Sequence[int]
) -> Iterator[tuple[int, int, int, bytes]]:
    """(key, chunk id, document id, signature) of the named collection's ready chunks with any of `keys`; a
    chunk comes once per key it shares."""
    unique = sorted(set(keys))
    for start in range(0, len(unique), _QUERY_KEYS):
        rows = connection.execute(
            select(ChunkBand.key, Chunk.id, Chunk.document_id, Chunk.minhash)
            .join(Collection, Collection.id == ChunkBand.collection_id)
            .join(Chunk, Chunk.id == ChunkBand.chunk_id)
            .join(Document, Document.id == Chunk.document_id)
            .where(
                Collection.name == collection,
                ChunkBand.key.in_(unique[start : start + _QUERY_KEYS]),
                Document.state == DocumentState.ready,
            )
        )
        for key, chunk_id, document_id, signature in rows:
            assert signature is not None  # a chunk without a signature has no keys
            yield key, chunk_id, document_id, signature
