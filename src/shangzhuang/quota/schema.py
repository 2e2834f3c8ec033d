"""Which schema revision the quota database is at, and refusing one that needs an upgrade.

Upgrading is the operator's step (`shangzhuang upgrade-db`, which backs SQLite up first),
never a side effect of whichever process opens the ledger first: JupyterHub treats its own
database the same way. An empty database gets the schema at once (nothing to lose).
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from shangzhuang.quota.db import MIGRATIONS, migrate


class OutdatedSchema(Exception):
    """The quota database is not at the schema this version needs."""


def head_revision() -> str:
    """The newest Alembic revision this version of the workbench knows."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def needs_upgrade(engine: Engine) -> bool:
    current = schema_revision(engine)
    return current is not None and current != head_revision()


def ensure_schema(engine: Engine) -> None:
    """Create the schema in an empty database; refuse one at another revision."""
    current, head = schema_revision(engine), head_revision()
    if current is None:
        migrate(engine)
    elif current != head:
        raise OutdatedSchema(
            f"The quota database is at schema revision {current}; this version of the "
            f"workbench needs revision {head}."
        )
