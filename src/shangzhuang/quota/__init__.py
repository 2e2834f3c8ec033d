"""Quota: the allocation ledger, the meter, the quota service, and `shangzhuang.quota()`.

In a notebook, `shangzhuang.quota()` returns what GET .../api/v1/me returns. This package
is itself that callable (see the end of this file), so the call reads as it should.
"""

from __future__ import annotations

import sys
import types
from functools import cache

from shangzhuang.quota.client import QuotaReport, my_quota


@cache
def _engine(url: str):
    from shangzhuang.quota.db import make_engine
    from shangzhuang.quota.schema import ensure_schema

    engine = make_engine(url)
    ensure_schema(engine)
    return engine


def database_url(settings) -> str:
    return settings.quota.url or f"sqlite:///{settings.hub.state_dir / 'quota.sqlite'}"


def open_ledger(settings):
    """The ledger of this site (one engine per process).

    An empty database gets the schema; one at an older revision is refused with the command
    that upgrades it (quota.schema.OutdatedSchema)."""
    from shangzhuang.quota.ledger import Ledger
    from shangzhuang.quota.schema import OutdatedSchema

    if not settings.quota.url:
        settings.hub.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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

__all__ = ["QuotaReport", "database_url", "my_quota", "open_ledger"]
