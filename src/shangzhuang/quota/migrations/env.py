"""Alembic environment for the quota database; `db.migrate(engine)` runs it."""

from alembic import context

from shangzhuang.quota.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite can't ALTER most things in place
)
with context.begin_transaction():
    context.run_migrations()
