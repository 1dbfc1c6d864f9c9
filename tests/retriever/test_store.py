"""The knowledge base on SQLite and PostgreSQL: writes, deletes, search, and index/SQL consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder
from retriever.records import ChunkDraft, DocumentDraft, DocumentWrite, InvalidNameError, NotFoundError
from retriever.store import KnowledgeBase
from retriever.vector_index import IndexMismatchError, VectorIndex
from tests.retriever.conftest import downgrade_schema, refused_then_upgraded


def drafts(texts: list[str]) -> list[ChunkDraft]:
    return [ChunkDraft(i, t, 0, len(t), len(t.split())) for i, t in enumerate(texts)]


def add(kb: KnowledgeBase, source: str, texts: list[str], collection: str = "c") -> int:
    draft = DocumentDraft(collection, source, source.title(), "txt", 10, f"hash-{source}-{len(texts)}")
    document_id, _ = kb.replace_document(draft, drafts(texts), kb.embedder.embed(texts))
    return document_id


def test_add_search_and_list(store: KnowledgeBase) -> None:
    add(store, "cats", ["Cats purr when they are content.", "A cat sleeps sixteen hours a day."])
    add(store, "rockets", ["Rockets burn fuel and oxidizer to produce thrust."])
    hits = store.search("why do cats purr", "c", 2)
    assert hits[0].title == "Cats" and "purr" in hits[0].text
    assert hits[0].score >= hits[1].score
    assert [d.source_path for d in store.list_documents("c")] == ["cats", "rockets"]
    [collection] = store.list_collections()
    assert (collection.name, collection.document_count, collection.chunk_count) == ("c", 2, 3)


def test_replace_swaps_chunks_in_sql_and_index(store: KnowledgeBase) -> None:
    first = add(store, "doc", ["Old text about volcanoes.", "More old text about lava."])
    second = add(store, "doc", ["New text about glaciers."])
    assert first == second
    index = store.synced_index(1, store.collection_version("c"))
    assert index.size == 1
    assert all("glaciers" in hit.text for hit in store.search("volcano lava", "c", 5))


def test_delete_removes_everything_and_unknown_is_404(store: KnowledgeBase) -> None:
    keep = add(store, "keep", ["Penguins live in the southern hemisphere."])
    gone = add(store, "gone", ["Penguins cannot fly.", "Penguins swim fast."])
    before = store.synced_index(1, store.collection_version("c")).size
    info = store.delete_document(gone)
    assert info.chunk_count == 2
    after = store.synced_index(1, store.collection_version("c")).size
    assert before - after == 2
    assert {hit.document_id for hit in store.search("penguins", "c", 10)} == {keep}
    with pytest.raises(NotFoundError):
        store.delete_document(gone)
    with pytest.raises(NotFoundError):
        store.get_document(12345)


def test_a_second_process_sees_deletes_made_by_another(
    store: KnowledgeBase, database_url: str, tmp_path: Path, embedder: Embedder
) -> None:
    """Two knowledge bases on one database (e.g. the API server and the CLI): a delete made through one
    is honoured by the other's next search, although its in-memory index was loaded before."""
    doomed = add(store, "doomed", ["Volcanoes erupt molten rock."])
    other = KnowledgeBase(RetrieverConfig(database_url=database_url, index_dir=tmp_path / "other"), embedder)
    try:
        assert [h.document_id for h in other.search("volcano", "c", 3)] == [doomed]
        store.delete_document(doomed)
        assert other.search("volcano", "c", 3) == []
    finally:
        other.close()


def test_unknown_collection_and_bad_names(store: KnowledgeBase) -> None:
    with pytest.raises(NotFoundError):
        store.search("anything", "missing", 3)
    with pytest.raises(NotFoundError):
        store.list_documents("missing")
    for bad in ("", "../etc", "a b", "x" * 65):
        with pytest.raises(InvalidNameError):
            store.ensure_collection(bad)


def test_index_heals_after_a_crash_between_sql_commit_and_index_save(
    store: KnowledgeBase, tmp_path: Path
) -> None:
    add(store, "a", ["Alpha text about the sea."])
    saved = (tmp_path / "index" / "collection-1.faiss").read_bytes()
    version_file = tmp_path / "index" / "collection-1.version"
    saved_version = version_file.read_text()
    add(store, "b", ["Beta text about mountains."])
    # Simulate a crash after the second SQL commit but before its index save: put the old files back.
    (tmp_path / "index" / "collection-1.faiss").write_bytes(saved)
    version_file.write_text(saved_version)
    fresh = KnowledgeBase(store.config, store.embedder)
    try:
        assert {h.title for h in fresh.search("mountains", "c", 5)} == {"A", "B"}
    finally:
        fresh.close()


def test_corrupt_or_foreign_index_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "collection-1.faiss"
    path.write_bytes(b"not a faiss index")
    with pytest.raises(IndexMismatchError, match="archivist reindex"):
        VectorIndex(384, path)
    other = VectorIndex(8, tmp_path / "small.faiss")
    other.add(np.arange(2), np.ones((2, 8), dtype=np.float32))
    other.save(1)
    with pytest.raises(IndexMismatchError, match="dimension 8"):
        VectorIndex(384, tmp_path / "small.faiss")


def test_reindex_rebuilds_from_sql(store: KnowledgeBase, tmp_path: Path) -> None:
    add(store, "a", ["One.", "Two."])
    add(store, "b", ["Three."])
    (tmp_path / "index" / "collection-1.faiss").write_bytes(b"garbage")
    assert store.reindex() == 3
    assert len(store.search("two", "c", 5)) == 3


def chunk_ids(kb: KnowledgeBase, document_id: int) -> list[int]:
    return [chunk.id for chunk in kb.get_chunks(document_id)]


def write_unindexed(kb: KnowledgeBase, source: str, texts: list[str]) -> int:
    """Store a document the way a long ingest does: SQL now, the indexes synced afterwards."""
    draft = DocumentDraft("c", source, source.title(), "txt", 10, f"hash-{source}-{texts[0]}")
    write = DocumentWrite(draft, drafts(texts), kb.embedder.embed(texts))
    [(document_id, _)] = kb.write_batch("c", [write], update_indexes=False)
    kb.sync_indexes("c")
    return document_id


def test_an_edited_newest_document_is_found_by_its_new_text_only(store: KnowledgeBase) -> None:
    add(store, "older", ["Penguins live in the southern hemisphere."])
    newest = write_unindexed(store, "newest", ["Volcanoes erupt molten basalt.", "Lava cools into rock."])
    before = chunk_ids(store, newest)
    assert write_unindexed(store, "newest", ["Glaciers carve fjords.", "Icebergs calve."]) == newest
    after = chunk_ids(store, newest)
    assert min(after) > max(before)  # the ids of the deleted chunks are never handed out again
    lexical = store.search("fjords", "c", 3, mode="lexical")
    assert lexical and lexical[0].text == "Glaciers carve fjords."
    assert store.search("basalt", "c", 3, mode="lexical") == []
    dense = store.search("Glaciers carve fjords.", "c", 1, mode="dense")[0]
    assert dense.text == "Glaciers carve fjords." and dense.similarity is not None and dense.similarity > 0.99


def test_a_sqlite_database_made_before_autoincrement_is_rebuilt_with_it(
    tmp_path: Path, embedder: Embedder
) -> None:
    """By `archivist db upgrade`, which adopts a database made before migrations."""
    from sqlalchemy import text

    from retriever.db import make_engine
    from retriever.schema import RETRIEVER_CHAIN, SchemaError, upgrade_schema

    config = RetrieverConfig(database_url=f"sqlite:///{tmp_path / 'old.db'}", index_dir=tmp_path / "index")
    kb = KnowledgeBase(config, embedder)
    document_id = add(kb, "a", ["Alpha text about the sea.", "More about tides."])
    ids = chunk_ids(kb, document_id)
    downgrade_schema(kb.db.engine, RETRIEVER_CHAIN, "0001")  # no table yet refers to chunks
    with kb.db.engine.begin() as connection:  # the chunks table as an earlier version created it
        created = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'chunks'")).scalar()
        connection.execute(text("ALTER TABLE chunks RENAME TO chunks_old"))
        connection.execute(text("DROP INDEX ix_chunks_document_ordinal"))
        connection.execute(text(str(created).replace(" AUTOINCREMENT", "")))
        connection.execute(text("INSERT INTO chunks SELECT * FROM chunks_old"))
        connection.execute(text("DROP TABLE chunks_old"))
        connection.execute(text(f"DROP TABLE {RETRIEVER_CHAIN.version_table}"))
    kb.close()
    with pytest.raises(SchemaError, match="archivist db upgrade"):
        KnowledgeBase(config, embedder)
    engine = make_engine(config.database_url)
    assert upgrade_schema(engine, RETRIEVER_CHAIN) == (None, RETRIEVER_CHAIN.head())
    engine.dispose()

    reopened = KnowledgeBase(config, embedder)
    try:
        with reopened.db.engine.connect() as connection:
            rebuilt = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'chunks'")).scalar()
            indexes = connection.execute(text("PRAGMA index_list('chunks')")).all()
        assert "AUTOINCREMENT" in str(rebuilt) and "ix_chunks_document_ordinal" in {row[1] for row in indexes}
        assert chunk_ids(reopened, document_id) == ids and reopened.search("tides", "c", 1)[0].text == (
            "More about tides."
        )
        add(reopened, "a", ["Beta text about mountains."])
        assert min(chunk_ids(reopened, document_id)) > max(ids)
    finally:
        reopened.close()


def test_the_id_of_a_deleted_newest_document_is_never_given_again(store: KnowledgeBase) -> None:
    add(store, "older", ["Penguins live in the southern hemisphere."])
    newest = add(store, "newest", ["Volcanoes erupt molten basalt."])
    store.delete_document(newest)
    assert add(store, "next", ["Glaciers carve fjords."]) > newest


def test_a_sqlite_documents_table_without_autoincrement_is_rebuilt_with_every_row_kept(
    tmp_path: Path, embedder: Embedder
) -> None:
    """Revision 0001 made the documents table without AUTOINCREMENT, so a deleted newest document's id was
    given again; the upgrade rebuilds the table and keeps its rows and the chunks that refer to them."""
    from alembic import command
    from sqlalchemy import text

    from retriever.db import make_engine
    from retriever.schema import RETRIEVER_CHAIN

    config = RetrieverConfig(database_url=f"sqlite:///{tmp_path / 'old.db'}", index_dir=tmp_path / "index")
    engine = make_engine(config.database_url)
    set_revision = text(f"UPDATE {RETRIEVER_CHAIN.version_table} SET version_num = :revision")
    migrations = RETRIEVER_CHAIN.config()
    with engine.begin() as connection:
        migrations.attributes["connection"] = connection
        command.upgrade(migrations, "0002")
        # Opened by this code, which writes the same rows as the release at 0002 did.
        connection.execute(set_revision, {"revision": RETRIEVER_CHAIN.head()})
    kb = KnowledgeBase(config, embedder)
    kept = add(kb, "kept", ["Alpha text about the sea.", "More about tides."])
    newest = add(kb, "newest", ["Volcanoes erupt molten basalt."])
    kb.delete_document(newest)
    assert add(kb, "next", ["Glaciers carve fjords."]) == newest  # the id given again, as it was
    kb.close()
    with engine.begin() as connection:
        connection.execute(set_revision, {"revision": "0002"})
    refused_then_upgraded(engine, config, embedder, "0002")

    reopened = KnowledgeBase(config, embedder)
    try:
        with reopened.db.engine.connect() as connection:
            rebuilt = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'documents'")
            ).scalar()
            indexes = {row[1] for row in connection.execute(text("PRAGMA index_list('documents')"))}
            referenced = {row[2] for row in connection.execute(text("PRAGMA foreign_key_list('chunks')"))}
            assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
        assert "AUTOINCREMENT" in str(rebuilt) and referenced == {"documents"}
        assert {"ix_documents_collection_id", "ix_documents_source_file", "ix_documents_text_hash"} <= indexes
        assert [d.id for d in reopened.list_documents("c")] == [kept, newest]
        assert [c.text for c in reopened.get_chunks(kept)] == [
            "Alpha text about the sea.",
            "More about tides.",
        ]
        assert reopened.search("glaciers", "c", 1)[0].document_id == newest
        reopened.delete_document(newest)
        assert add(reopened, "last", ["Icebergs calve."]) > newest
    finally:
        reopened.close()
