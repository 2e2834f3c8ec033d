"""quota_requests: users ask for more hours; managers and admins approve or decline

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("account", sa.String(length=100), nullable=False),
        sa.Column("resource", sa.String(length=20), nullable=False),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("answer", sa.String(length=500), nullable=True),
        sa.Column("grant_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quota_requests_user", "quota_requests", ["user"])
    op.create_index("ix_quota_requests_account", "quota_requests", ["account"])


def downgrade() -> None:
    op.drop_index("ix_quota_requests_account", table_name="quota_requests")
    op.drop_index("ix_quota_requests_user", table_name="quota_requests")
    op.drop_table("quota_requests")
