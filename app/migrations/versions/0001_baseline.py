"""Revision 0001 of the service chain: api_keys, api_key_grants, conversations and messages as they stood.

Frozen here: later revisions alter these tables with `op`. Adopts a database from before migrations too.
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
        "api_keys",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    sa.Table(
        "api_key_grants",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("can_write", sa.Boolean, nullable=False),
        sa.UniqueConstraint("key_id", "collection", name="uq_grant_collection"),
        sa.Index("ix_api_key_grants_key_id", "key_id"),
    )
    sa.Table(
        "conversations",
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("owner_key_id", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_conversations_collection", "collection"),
        sa.Index("ix_conversations_owner_key_id", "owner_key_id"),
    )
    sa.Table(
        "messages",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("standalone", sa.Text, nullable=True),
        sa.Column("details", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_messages_conversation_id", "conversation_id"),
    )
    return metadata


upgrade, downgrade = baseline_revision(tables)
