"""gpu_samples without its (user, at) index: each tick's readings dirtied a page of it per
session, and the tick's commit halved without it (bench/gpu_utilisation.py); a user's
readings are found through their consumers

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_gpu_samples_user_at", table_name="gpu_samples")


def downgrade() -> None:
    op.create_index("ix_gpu_samples_user_at", "gpu_samples", ["user", "at"])
