"""An account's managers: those of the config (`[quota.accounts.X] managers`) and those an
admin sets on the usage page (the ledger's `managers` table). Managers see their members'
use, set their caps and decide their requests for more (quota/pages.py, requests.py) and
get the account's alerts (quota/alerts.py).

A manager from the config stays one until the config changes: the page adds and removes
only its own.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select

from shangzhuang.i18n import Message
from shangzhuang.quota.db import Manager
from shangzhuang.quota.ledger import Ledger, QuotaError


def set_by_admins(ledger: Ledger) -> dict[str, set[str]]:
    """account -> the managers admins set on the page."""
    with ledger._read() as conn:
        rows = conn.execute(select(Manager.account, Manager.user)).all()
    out: dict[str, set[str]] = {}
    for account, user in rows:
        out.setdefault(account, set()).add(user)
    return out


def managers_of(ledger: Ledger, account: str) -> list[str]:
    """Every manager of `account`: the config's and the page's."""
    acct = ledger.policy.accounts.get(account)
    configured = set(acct.managers) if acct else set()
    return sorted(configured | set_by_admins(ledger).get(account, set()))


def managed_by(ledger: Ledger, user: str) -> list[str]:
    """The accounts `user` manages."""
    page = set_by_admins(ledger)
    return sorted(
        a
        for a, acct in ledger.policy.accounts.items()
        if user in acct.managers or user in page.get(a, ())
    )


def manages(ledger: Ledger, user: str, account: str) -> bool:
    return account in managed_by(ledger, user)


def set_manager(
    ledger: Ledger, account: str, user: str, manager: bool, by: str, now: float | None = None
) -> None:
    """Make `user` a manager of `account` (or no longer one); an admin's act."""
    if account not in ledger.policy.accounts:
        raise QuotaError(f"unknown account {account!r}")
    if not manager and user in ledger.policy.accounts[account].managers:
        raise QuotaError(
            Message(
                "{user} is a manager of {account} in the site's config "
                "([quota.accounts.{account}] managers): remove them there.",
                user=user, account=account,
            )
        )  # fmt: skip
    with ledger._write() as conn:
        conn.execute(delete(Manager).where(Manager.account == account, Manager.user == user))
        if manager:
            now = time.time() if now is None else now
            conn.execute(insert(Manager).values(account=account, user=user, set_by=by, at=now))
