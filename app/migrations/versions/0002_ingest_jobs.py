"""Revision 0002 of the service chain: ingest jobs and their files in SQL, so that any replica answers for a
job and a restart keeps its record."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("runner", sa.String(300), nullable=False),
        sa.Column("files_total", sa.Integer, nullable=False),
        sa.Column("files_done", sa.Integer, nullable=False),
        sa.Column("chunks_written", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_ingest_jobs_collection", "ingest_jobs", ["collection"])
    op.create_index("ix_ingest_jobs_created_at", "ingest_jobs", ["created_at"])
    op.create_table(
        "ingest_job_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("ingest_jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.UniqueConstraint("job_id", "position", name="uq_ingest_job_file_position"),
    )
    op.create_index("ix_ingest_job_files_job_id", "ingest_job_files", ["job_id"])


def downgrade() -> None:
    op.drop_table("ingest_job_files")
    op.drop_table("ingest_jobs")
