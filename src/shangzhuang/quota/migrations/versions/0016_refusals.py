"""refusals: starts refused, where they were decided (the hub's spawns, the meter's holds of
Slurm jobs at zero), for the estate's refusal counts (quota/refusals.py)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refusals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("account", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("asked", sa.String(length=200), nullable=False),
        sa.Column("resources", sa.String(length=50), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_refusals_at", "refusals", ["at"])


def downgrade() -> None:
    op.drop_index("ix_refusals_at", table_name="refusals")
    op.drop_table("refusals")
