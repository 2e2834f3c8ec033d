"""caps: personal caps set by an account's managers on the usage page

A member's cap per resource within the account's pool, with who set it and when. It
replaces the cap of `[quota.users.NAME]` for that resource, if any.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "caps",
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("resource", sa.String(length=20), nullable=False),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("set_by", sa.String(length=100), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("user", "resource"),
    )


def downgrade() -> None:
    op.drop_table("caps")
