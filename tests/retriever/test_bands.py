"""Near-duplicate band keys in SQL (`retriever.bands`), on SQLite and PostgreSQL: written with their chunks
and documents in the collection's band width, removed with them by every kind of delete, found by key (and a
document by its text hash), and rebuilt when the width changes."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from retriever.bands import band_keys
from retriever.models import Chunk, ChunkBand, Collection, Document, DocumentBand
from retriever.records import ChunkDraft, DocumentDraft, DocumentWrite
from retriever.store import KnowledgeBase

ROWS = 13


def signature(seed: int, changed: int = 0) -> bytes:
    """A stored MinHash signature (128 little-endian uint32 values); `changed` of its values altered."""
    values = np.random.default_rng(seed).integers(0, 2**32, 128, dtype=np.uint64).astype("<u4")
    values[:changed] += 1
    return values.tobytes()


def add(
    kb: KnowledgeBase,
    source: str,
    signatures: list[bytes | None],
    collection: str = "c",
    document: bytes | None = None,
    text_hash: str = "",
) -> int:
    """Store a document of chunks with `signatures`, itself signed `document` and of text hash `text_hash`;
    returns its id."""
    texts = [f"{source}: chunk {i}" for i in range(len(signatures))]
    chunks = [ChunkDraft(i, text, 0, len(text), 3, minhash=signatures[i]) for i, text in enumerate(texts)]
    draft = DocumentDraft(
        collection, source, source.title(), "txt", 10, f"hash-{source}-{len(signatures)}",
        text_hash=text_hash, minhash=document,
    )  # fmt: skip
    [(document_id, _)] = kb.write_batch(collection, [DocumentWrite(draft, chunks, kb.embedder.embed(texts))])
    return document_id


def stored_keys(kb: KnowledgeBase) -> set[tuple[int, int, int]]:
    with kb.db.session() as session:
        return set(session.execute(select(ChunkBand.chunk_id, ChunkBand.band, ChunkBand.key)).tuples())


def stored_document_keys(kb: KnowledgeBase) -> set[tuple[int, int, int]]:
    with kb.db.session() as session:
        query = select(DocumentBand.document_id, DocumentBand.band, DocumentBand.key)
        return set(session.execute(query).tuples())


def expected_document_keys(kb: KnowledgeBase, rows: int = ROWS) -> set[tuple[int, int, int]]:
    with kb.db.session() as session:
        query = select(Document.id, Document.minhash).where(Document.minhash.is_not(None))
        return {
            (document_id, band, key)
            for document_id, sig in session.execute(query).tuples()
            for band, key in enumerate(band_keys(sig, rows))
        }


def expected_keys(kb: KnowledgeBase, rows: int = ROWS) -> set[tuple[int, int, int]]:
    """The keys every signed chunk stored should have, computed from its signature."""
    with kb.db.session() as session:
        signed = session.execute(select(Chunk.id, Chunk.minhash).where(Chunk.minhash.is_not(None))).tuples()
        return {
            (chunk_id, band, key) for chunk_id, sig in signed for band, key in enumerate(band_keys(sig, rows))
        }


def band_rows(kb: KnowledgeBase, collection: str = "c") -> int | None:
    with kb.db.session() as session:
        return session.scalar(select(Collection.band_rows).where(Collection.name == collection))


def test_band_keys_are_a_hash_of_each_whole_band() -> None:
    sig = signature(1)
    keys = band_keys(sig, ROWS)
    assert len(keys) == 128 // ROWS == 9 and all(-(2**63) <= key < 2**63 for key in keys)
    assert band_keys(signature(1, changed=1), ROWS)[1:] == keys[1:]  # a value of band 0 changed
    assert band_keys(signature(1, changed=1), ROWS)[0] != keys[0]
    assert not set(band_keys(sig, 7)) & set(keys)  # another width never shares a key
    # The same values in another band give another key.
    assert band_keys(sig[: 4 * ROWS] * 2, ROWS)[1] != band_keys(sig[: 4 * ROWS] * 2, ROWS)[0]


def test_keys_are_written_with_their_chunks_and_removed_with_them(store: KnowledgeBase) -> None:
    store.ensure_collection("c")
    store.use_band_rows("c", ROWS)
    first = add(store, "a", [signature(1), signature(2), None])  # an unsigned chunk has no keys
    assert len(stored_keys(store)) == 2 * 9 and stored_keys(store) == expected_keys(store)
    add(store, "a", [signature(3)])  # a new version replaces the chunks and their keys
    other = add(store, "b", [signature(4), signature(5)])
    assert len(stored_keys(store)) == 3 * 9 and stored_keys(store) == expected_keys(store)
    assert store.reindex() == 3 and stored_keys(store) == expected_keys(store)
    store.delete_document(first)
    assert len(stored_keys(store)) == 2 * 9 and stored_keys(store) == expected_keys(store)
    store.write_batch("c", [], deletes=[other])  # the ingest's deletes (pruned files, records gone)
    assert stored_keys(store) == set()


def test_candidates_are_the_chunks_of_the_collection_sharing_a_key(store: KnowledgeBase) -> None:
    for collection in ("c", "d"):
        store.ensure_collection(collection)
        store.use_band_rows(collection, ROWS)
    document_id = add(store, "a", [signature(1), signature(2)])
    add(store, "x", [signature(1)], collection="d")
    copy_id = store.get_chunks(document_id)[0].id
    near = band_keys(signature(1, changed=2), ROWS)  # band 0 differs, the other 8 equal
    found = store.chunk_candidates("c", near)
    assert sorted(key for key, *_ in found) == sorted(near[1:])
    assert {(chunk_id, owner, path, title, sig) for _, chunk_id, owner, path, title, sig in found} == {
        (copy_id, document_id, "a", "A", signature(1))
    }
    assert store.chunk_candidates("c", band_keys(signature(99), ROWS)) == []


def test_another_band_width_rekeys_the_collection(store: KnowledgeBase) -> None:
    add(store, "a", [signature(1), None])
    assert band_rows(store) == 0 and stored_keys(store) == set()  # no width chosen yet: no keys
    store.use_band_rows("c", ROWS)
    assert band_rows(store) == ROWS and stored_keys(store) == expected_keys(store) != set()
    store.use_band_rows("c", 7)  # the dedup threshold changed
    add(store, "b", [signature(2)])
    assert band_rows(store) == 7 and stored_keys(store) == expected_keys(store, 7)
    assert len(stored_keys(store)) == 2 * (128 // 7)


def test_document_keys_are_written_replaced_and_removed_with_their_document(store: KnowledgeBase) -> None:
    store.ensure_collection("c")
    store.use_band_rows("c", ROWS)
    first = add(store, "a", [signature(1)], document=signature(10))
    add(store, "unsigned", [signature(2)])  # a document too short to sign has no keys
    assert len(stored_document_keys(store)) == 9 and stored_document_keys(store) == expected_document_keys(
        store
    )
    assert add(store, "a", [signature(1)], document=signature(11)) == first  # a new version, new keys
    other = add(store, "b", [], document=signature(12))
    assert len(stored_document_keys(store)) == 2 * 9
    assert stored_document_keys(store) == expected_document_keys(store)
    store.delete_document(first)
    store.write_batch("c", [], deletes=[other])
    assert stored_document_keys(store) == set()


def test_document_candidates_share_a_key_or_the_text_hash(store: KnowledgeBase) -> None:
    for collection in ("c", "d"):
        store.ensure_collection(collection)
        store.use_band_rows(collection, ROWS)
    near = add(store, "near", [], document=signature(1), text_hash="h-near")
    same = add(store, "same", [], document=signature(2), text_hash="h-same")
    add(store, "far", [], document=signature(3), text_hash="h-far")
    add(store, "elsewhere", [], "d", document=signature(1), text_hash="h-same")
    keys = band_keys(signature(1, changed=2), ROWS)
    found = store.document_candidates("c", "h-same", keys)
    assert found == [
        (near, "near", "Near", "h-near", signature(1)),
        (same, "same", "Same", "h-same", signature(2)),
    ]
    assert store.document_candidates("c", "h-none", band_keys(signature(99), ROWS)) == []
    assert [row[0] for row in store.document_candidates("c", "h-same", [])] == [same]  # unsigned: by hash


def test_a_new_width_rekeys_documents_too(store: KnowledgeBase) -> None:
    add(store, "a", [signature(1)], document=signature(5))
    assert stored_document_keys(store) == set()  # no width chosen yet
    store.use_band_rows("c", ROWS)
    assert stored_document_keys(store) == expected_document_keys(store) != set()
    store.use_band_rows("c", 7)
    assert stored_document_keys(store) == expected_document_keys(store, 7)
    assert len(stored_document_keys(store)) == 128 // 7
