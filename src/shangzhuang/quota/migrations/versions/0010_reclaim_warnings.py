"""reclaim_warnings: GPU sessions warned that their idle GPUs will be reclaimed (reclaim.py)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reclaim_warnings",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("idle_since", sa.Float(), nullable=False),
        sa.Column("warned_at", sa.Float(), nullable=False),
        sa.Column("stops_at", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("consumer"),
    )
    op.create_index("ix_reclaim_warnings_user", "reclaim_warnings", ["user"])


def downgrade() -> None:
    op.drop_index("ix_reclaim_warnings_user", table_name="reclaim_warnings")
    op.drop_table("reclaim_warnings")
