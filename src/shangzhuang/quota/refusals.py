"""Starts refused, and why: recorded where each is decided, counted on the estate.

The hub decides most of them, before or while a session starts: no quota left for the
profile (hub/spawners.py `check_quota`), every GPU of the node taken (`LocalSpawner`),
Slurm refusing the session's job (`SlurmSpawner`), the site's limit of running sessions
(JupyterHub's own 429, seen by the hub's log function: hub/limits.py). The hub posts each
to the quota service (api/v1/refusals, the hub's token alone), which is the only process
that opens the ledger. The post is fire-and-forget with a short timeout
(api_client.QuotaAPI.refused): recording a refusal never slows or fails a spawn, and one
the quota service misses is lost, not retried (it is a count, not a charge). A start
refused because the quota service was not answering (fail closed) waits in the hub with
its time and is posted once the service answers again (at most
api_client.MAX_WAITING_REFUSALS of them: a user clicking "start" over and over can't
grow the hub's memory).

JupyterHub's own per-user named-server limit (a 400) is not counted: it is a user's own
bookkeeping, not the estate turning work away.

The meter records the Slurm jobs it holds at zero quota itself (sources.SlurmJobs
`hold_pending`), and keeps what waits in Slurm's queue as it last read it (`Waiting`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from shangzhuang.i18n import Message
from shangzhuang.quota.db import Refusal
from shangzhuang.quota.ledger import Ledger

# Every reason a start is refused for, as the estate names it.
REASONS = {
    "quota": Message("no quota left for the profile"),
    "quota-unavailable": Message("the quota service was not answering"),
    "gpus-busy": Message("every GPU taken"),
    "server-limit": Message("the site's limit of running sessions"),
    "slurm": Message("Slurm refused the job"),
    "held-at-zero": Message("Slurm job held at zero quota"),
}
# A record the hub delivers late (it waited for the quota service) keeps its time, if
# within this many seconds.
LATE_SECONDS = 24 * 3600
# What the hub posts; "held-at-zero" is the meter's own.
HUB_REASONS = ("quota", "quota-unavailable", "gpus-busy", "server-limit", "slurm")


def record(
    ledger: Ledger,
    user: str,
    reason: str,
    asked: str = "",
    resources: Iterable[str] = (),
    now: float | None = None,
    once: bool = False,
) -> None:
    """Record that `user`'s start of `asked` (a profile, or a held job's consumer id) was
    refused for `reason`, charged to the account the user is charged to now.

    `once`: a record the hub posted late with its own time (`now`) is kept once, as the hub
    posts it again when an earlier post timed out, which the service may still have taken."""
    if reason not in REASONS:
        raise ValueError(f"unknown refusal reason {reason!r}")
    now = time.time() if now is None else now
    with ledger._write() as conn:
        same = (Refusal.at == now, Refusal.user == user, Refusal.reason == reason)
        if once and conn.execute(select(Refusal.id).where(*same)).first():
            return
        account = ledger.account_of(user, conn)
        conn.execute(
            Refusal.__table__.insert().values(
                at=now, user=user, account=account, reason=reason, asked=asked[:200],
                resources=" ".join(sorted(resources))[:50],
            )
        )  # fmt: skip


@dataclass
class Waiting:
    """What waited in the backend's queue when the meter last looked (each tick): each
    pending job's user and why it waits (Slurm's reason, or "held-at-zero")."""

    at: float | None = None  # None: not read yet
    jobs: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self, iso) -> dict:
        by_reason: dict[str, int] = {}
        for _, reason in self.jobs:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        return {
            "at": iso(self.at) if self.at is not None else None,
            "jobs": len(self.jobs),
            "held_at_zero": by_reason.get("held-at-zero", 0),
            "by_reason": dict(sorted(by_reason.items())),
        }


def waiting_now(sources: Iterable, iso) -> dict | None:
    """The queue as the meter's sources last read it; None where the backend has none (the
    local backend: a session starts at once or is refused)."""
    queues = [w for s in sources if (w := getattr(s, "waiting", None)) is not None]
    if not queues:
        return None
    at = [w.at for w in queues if w.at is not None]
    merged = Waiting(max(at) if at else None, [j for w in queues for j in w.jobs])
    return merged.as_dict(iso)


__all__ = ["HUB_REASONS", "REASONS", "Waiting", "record", "waiting_now"]
