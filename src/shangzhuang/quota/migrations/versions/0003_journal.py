"""journal: where the meter writes charges before they are posted to `charges`

Every tick added one row per running consumer to the (user, start) index of `charges`,
a leaf page per running user once the history is long: a tick's cost grew with the
history. The journal keeps that index small; `Ledger.post` moves rows over in bulk.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("account", sa.String(length=100), nullable=False),
        sa.Column("resource", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("start", "consumer", "resource", name="uq_journal_interval"),
    )
    op.create_index("ix_journal_user_start", "journal", ["user", "start"])


def downgrade() -> None:
    # Post what is still in the journal, so that no charge is lost.
    cols = '"consumer", "user", account, resource, source, start, "end", amount, period_start'
    op.execute(f"INSERT INTO charges ({cols}) SELECT {cols} FROM journal ORDER BY id")
    op.drop_index("ix_journal_user_start", table_name="journal")
    op.drop_table("journal")
