"""charges: unique key (start, consumer, resource) instead of (consumer, resource, start)

The key only guards idempotency, never serves lookups. With `start` first, the rows of
one meter tick (which share their start) land together at the end of the index instead
of on one leaf page per consumer: a tick writes about a third of the pages it did.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("charges") as batch:
        batch.drop_constraint("uq_charge_interval", type_="unique")
        batch.create_unique_constraint(
            "uq_charge_start_interval", ["start", "consumer", "resource"]
        )


def downgrade() -> None:
    with op.batch_alter_table("charges") as batch:
        batch.drop_constraint("uq_charge_start_interval", type_="unique")
        batch.create_unique_constraint("uq_charge_interval", ["consumer", "resource", "start"])
