"""The retriever's tables as they were when migrations began: collections, documents, chunks.

A frozen copy (later revisions change the tables with `op`, never by editing this). On a database made before
migrations existed it also adds what earlier versions lacked (`retriever.schema.adopt_existing`).
"""

import sqlalchemy as sa

from retriever.schema import baseline_revision

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def tables() -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table(
        "collections",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("language", sa.String(16), nullable=False, server_default=""),
        sa.Column("embedder", sa.String(32), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "documents",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("source_path", sa.String(2048), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("file_type", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column(
            "state",
            sa.Enum("pending", "ready", name="documentstate", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("source_file", sa.String(2048), nullable=False, server_default=""),
        sa.Column("text_hash", sa.String(64), nullable=False, server_default=""),
        sa.Column("minhash", sa.LargeBinary, nullable=True),
        sa.Column("clean_text", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("collection_id", "source_path", name="uq_document_source"),
        sa.Index("ix_documents_collection_id", "collection_id"),
        sa.Index("ix_documents_source_file", "source_file"),
        sa.Index("ix_documents_text_hash", "text_hash"),
    )
    sa.Table(
        "chunks",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "document_id", sa.Integer, sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("char_start", sa.Integer, nullable=False),
        sa.Column("char_end", sa.Integer, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("page", sa.Integer, nullable=True),
        sa.Column("heading_path", sa.Text, nullable=False, server_default=""),
        sa.Column("minhash", sa.LargeBinary, nullable=True),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Index("ix_chunks_document_ordinal", "document_id", "ordinal"),
        sqlite_autoincrement=True,
    )
    return metadata


upgrade, downgrade = baseline_revision(tables)
