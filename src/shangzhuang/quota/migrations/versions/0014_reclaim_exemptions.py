"""reclaim_exemptions: users an admin exempted from idle GPU reclaim on the usage page
(beside the config's `[quota.reclaim] exempt`)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reclaim_exemptions",
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("set_by", sa.String(length=100), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("user"),
    )


def downgrade() -> None:
    op.drop_table("reclaim_exemptions")
