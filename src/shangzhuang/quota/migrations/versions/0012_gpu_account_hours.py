"""gpu_account_hours: GPU-hours read and idle per account per hour (utilisation.py), so the
estate's idle GPU-hours read one row per account-hour, not every reading

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_account_hours",
        sa.Column("account", sa.String(length=100), nullable=False),
        sa.Column("hour", sa.Float(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("idle_gpu_seconds", sa.Float(), nullable=False),
        sa.Column("percent_gpu_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account", "hour"),
    )
    op.create_index("ix_gpu_account_hours_hour", "gpu_account_hours", ["hour"])


def downgrade() -> None:
    op.drop_index("ix_gpu_account_hours_hour", table_name="gpu_account_hours")
    op.drop_table("gpu_account_hours")
