"""gpu_samples: GPU utilisation per session, recent raw and older hourly (utilisation.py)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_samples",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("peak", sa.Float(), nullable=False),
        sa.Column("idle_seconds", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("consumer", "at"),
    )
    op.create_index("ix_gpu_samples_user_at", "gpu_samples", ["user", "at"])
    op.create_index("ix_gpu_samples_at", "gpu_samples", ["at"])


def downgrade() -> None:
    op.drop_index("ix_gpu_samples_at", table_name="gpu_samples")
    op.drop_index("ix_gpu_samples_user_at", table_name="gpu_samples")
    op.drop_table("gpu_samples")
