"""Quota: the allocation ledger, the meter, the quota service, and `shangzhuang.quota()`.

In a notebook, `shangzhuang.quota()` returns what GET .../api/v1/me returns. This package
is itself that callable (see the end of this file), so the call reads as it should.
"""

from __future__ import annotations

import os
import sys
import types
from functools import cache
from pathlib import Path

from shangzhuang.quota.client import QuotaReport, my_quota


@cache
def _engine(url: str):
    from shangzhuang.quota.db import make_engine
    from shangzhuang.quota.schema import ensure_schema

    engine = make_engine(url)
    ensure_schema(engine)
    return engine


def ledger_file(settings) -> Path:
    """The SQLite ledger: in its own folder beside the state folder (like the apps folder),
    so that the quota service can own it as the platform's account while the state folder
    stays root's (0700)."""
    return settings.hub.state_dir.parent / "ledger" / "quota.sqlite"


def database_url(settings) -> str:
    return settings.quota.url or f"sqlite:///{ledger_file(settings)}"


def move_ledger_out_of_state_folder(settings) -> None:
    """Move a ledger kept in the state folder (before issue 17) to ledger_file, with its
    -wal and -shm, once; only while no hub runs, so no quota service has it open (the hub's
    configure comes before its pid file)."""
    from shangzhuang.operate import hub_running

    old, new = settings.hub.state_dir / "quota.sqlite", ledger_file(settings)
    try:
        if settings.quota.url or not old.exists() or new.exists() or hub_running(settings):
            return
    except PermissionError:  # the quota service, as the account: not its state folder
        return
    new.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", ""):  # the database last: new.exists() means done
        if Path(f"{old}{suffix}").exists():
            os.replace(f"{old}{suffix}", f"{new}{suffix}")


def open_ledger(settings):
    """The ledger of this site (one engine per process).

    An empty database gets the schema; one at an older revision is refused with the command
    that upgrades it (quota.schema.OutdatedSchema)."""
    from shangzhuang.quota.ledger import Ledger
    from shangzhuang.quota.schema import OutdatedSchema

    if not settings.quota.url:
        move_ledger_out_of_state_folder(settings)
        ledger_file(settings).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        engine = _engine(database_url(settings))
    except OutdatedSchema as e:
        raise OutdatedSchema(
            f"{e} Run `shangzhuang upgrade-db --config {settings.source}` (it backs SQLite "
            "databases up first)."
        ) from None
    return Ledger(engine, settings.quota, settings.site.timezone)


class _CallableModule(types.ModuleType):
    def __call__(self, **kwargs) -> QuotaReport:
        return my_quota(**kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "QuotaReport",
    "database_url",
    "ledger_file",
    "move_ledger_out_of_state_folder",
    "my_quota",
    "open_ledger",
]
