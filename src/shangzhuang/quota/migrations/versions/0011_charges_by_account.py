"""charges by account and end: an account's days and burn on the usage page read only the
charges that end inside the window, not the whole history (bench/usage_page.py)

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_charges_account_end", "charges", ["account", "end"])


def downgrade() -> None:
    op.drop_index("ix_charges_account_end", table_name="charges")
