"""Revision 0003 of the retriever chain: on SQLite, document ids are never reused (AUTOINCREMENT), as chunk
ids already were; without it the next document took the id of the newest one just deleted, and a reference
to the deleted one (a cached citation, a conversation) then pointed at another document. PostgreSQL's
sequences never reuse ids: nothing to do there.

The table is rebuilt with its rows; its largest id seeds the counter (ids freed before the upgrade above it
are not known any more).
"""

import sqlalchemy as sa
from alembic import op

from retriever.schema import lacks_autoincrement, rebuild_with_autoincrement

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    documents = sa.Table("documents", sa.MetaData(), autoload_with=connection, sqlite_autoincrement=True)
    if lacks_autoincrement(connection, documents):
        rebuild_with_autoincrement(connection, documents)


def downgrade() -> None:
    """Nothing: ids that are never reused are no harm to the revision before."""
