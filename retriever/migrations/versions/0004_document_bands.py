"""Revision 0004 of the retriever chain: the LSH band keys of document signatures in SQL (`document_bands`,
see `retriever.bands`), so that ingest looks up the near-duplicate candidates of a new document by its keys
instead of loading the signature of every document of the collection.

The keys of the documents already stored are computed here from their stored signatures, in the width of
their collection's chunk keys (none for a collection without them: its next ingest keys both).
"""

import sqlalchemy as sa
from alembic import op

from retriever.bands import DOCUMENTS, rekey

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_bands",
        sa.Column(
            "document_id",
            sa.Integer,
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("band", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(
            "collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_document_bands_collection_key", "document_bands", ["collection_id", "key"])
    connection = op.get_bind()
    widths = connection.execute(sa.text("SELECT id, band_rows FROM collections WHERE band_rows > 0"))
    for collection_id, rows in widths.tuples().all():
        rekey(connection, collection_id, rows, kinds=(DOCUMENTS,))


def downgrade() -> None:
    op.drop_table("document_bands")
