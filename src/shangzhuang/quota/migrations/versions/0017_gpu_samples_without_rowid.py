"""gpu_samples WITHOUT ROWID on SQLite: its rows kept in (consumer, at) order, so that
merging a session's hour into one row deletes neighbouring rows, not rows scattered over
the hour's ticks (utilisation.tidy: 3x less CPU per tick, the whole hour of 1,000 sessions
4-7x faster, bench/gpu_utilisation.py). PostgreSQL: no change.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _rebuild(with_rowid: bool) -> None:
    """SQLite can't change a table's storage in place: copy it into a new table."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_table(
        "gpu_samples_new",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("peak", sa.Float(), nullable=False),
        sa.Column("idle_seconds", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("consumer", "at"),
        sqlite_with_rowid=with_rowid,
    )
    cols = "consumer, at, user, seconds, percent, peak, idle_seconds, memory_mib"
    order = "ORDER BY consumer, at"  # the new table's order: its pages filled one by one
    op.execute(f"INSERT INTO gpu_samples_new ({cols}) SELECT {cols} FROM gpu_samples {order}")
    op.drop_index("ix_gpu_samples_at", table_name="gpu_samples")
    op.drop_table("gpu_samples")
    op.rename_table("gpu_samples_new", "gpu_samples")
    op.create_index("ix_gpu_samples_at", "gpu_samples", ["at"])


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
