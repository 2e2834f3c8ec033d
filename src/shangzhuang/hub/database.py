"""The hub's own database (JupyterHub's), when it is SQLite: written ahead, synced at
checkpoints, as the ledger is (quota/db.py).

JupyterHub commits on its event loop after most requests (a user's last activity, a new
token, a spawn's progress), and SQLite's default rollback journal makes every commit wait
for the disk (several fsyncs). While 30 users arrived on 2 cores, those commits took 35% of
the hub's busy main thread (bench/load.py, py-spy), and every page waited behind them.
In WAL mode with synchronous=NORMAL a commit appends to the -wal file without waiting for
the disk. The database stays consistent; a power cut (not a crash or kill of the hub) may
lose the last commits before a checkpoint (every 1,000 pages): a token or an activity
time, sessions that the power cut ended anyway.
"""

from __future__ import annotations

import sqlite3


class HubDatabase(sqlite3.Connection):
    """A connection to the hub's SQLite file in WAL mode with synchronous=NORMAL."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")  # kept in the file; a no-op once set
        self.execute("PRAGMA synchronous=NORMAL")  # per connection


def engine_options(db_url: str) -> dict:
    """JupyterHub.db_kwargs (SQLAlchemy's create_engine) for the hub's database."""
    if not db_url.startswith("sqlite"):
        return {}
    # check_same_thread: JupyterHub's own default for SQLite, which this dict replaces.
    return {"connect_args": {"check_same_thread": False, "factory": HubDatabase}}
