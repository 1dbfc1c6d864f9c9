"""Revision 0002 of the retriever chain: the LSH band keys of chunk signatures in SQL (`chunk_bands`, see
`retriever.bands`), so that ingest looks up the near-duplicate candidates of a new document's chunks instead
of loading every signature of the collection; and each collection's band width (`collections.band_rows`).

The keys of the chunks already stored are computed here from their stored signatures, in the width of the
ingest's default dedup threshold when this revision was written; a deployment with another threshold has a
collection's keys rebuilt in its width by the collection's next ingest (`KnowledgeBase.use_band_rows`).
"""

import sqlalchemy as sa
from alembic import op

from retriever.bands import CHUNKS, rekey

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# ingest.dedup.lsh_shape(0.8): 9 bands of 13 values. Frozen with the revision, like a schema.
DEFAULT_BAND_ROWS = 13


def upgrade() -> None:
    op.add_column("collections", sa.Column("band_rows", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "chunk_bands",
        sa.Column(
            "chunk_id",
            sa.Integer,
            sa.ForeignKey("chunks.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("band", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(
            "collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_chunk_bands_collection_key", "chunk_bands", ["collection_id", "key"])
    connection = op.get_bind()
    for collection_id in connection.execute(sa.text("SELECT id FROM collections")).scalars().all():
        rekey(connection, collection_id, DEFAULT_BAND_ROWS, kinds=(CHUNKS,))


def downgrade() -> None:
    op.drop_table("chunk_bands")
    op.drop_column("collections", "band_rows")
