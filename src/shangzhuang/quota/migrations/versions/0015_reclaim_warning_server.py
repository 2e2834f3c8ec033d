"""reclaim_warnings.server: the warned session's hub server, which a Slurm Lab session's
consumer id (job:ID) does not say (idle GPU reclaim on the Slurm backend)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the warnings already there are of Lab sessions whose consumer says it.
    with op.batch_alter_table("reclaim_warnings") as batch:
        batch.add_column(sa.Column("server", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reclaim_warnings") as batch:
        batch.drop_column("server")
