"""alert channels: when the webhook and the mail each took an alert

Until now one `sent` stood for both channels, so an alert whose mail could not go out was
posted to the webhook again at every retry, and a service stopped between the two sent
both again after its restart. Each channel is marked now as it takes the alert; `sent`
still says every channel took it. Rows already sent count as taken by both.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("posted", sa.Float(), nullable=True))
        batch.add_column(sa.Column("mailed", sa.Float(), nullable=True))
    op.execute("UPDATE alerts SET posted = sent, mailed = sent WHERE sent IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("mailed")
        batch.drop_column("posted")
