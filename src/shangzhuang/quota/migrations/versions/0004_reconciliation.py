"""reconciliation: Slurm jobs charged from Slurm's accounting once they end

`consumers.reconciled`: the job's charges were set to what `sacct` recorded (its start, end
and AllocTRES); nothing charges it again. `watermarks`: how far the reconciliation has read
`sacct`, so that each pass reads only the jobs that ended since (flat in the history).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consumers") as batch:
        batch.add_column(
            sa.Column("reconciled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "watermarks",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("watermarks")
    with op.batch_alter_table("consumers") as batch:
        batch.drop_column("reconciled")
