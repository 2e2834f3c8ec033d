"""The figures of the usage page, read from the ledger: usage per day, members' burn and
when a pool runs dry, the estate. The page's charts draw exactly these (its JSON API).

Days are the site's calendar days (`site.timezone`); a charge that spans midnight counts
on each day for its share of hours.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import defaultdict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from shangzhuang.quota.db import Charge, JournalEntry, Member, Refusal, Stop, Total
from shangzhuang.quota.ledger import Ledger
from shangzhuang.quota.managers import managed_by  # the page lists what its reader manages
from shangzhuang.quota.periods import FOREVER, Period, iso
from shangzhuang.quota.refusals import REASONS
from shangzhuang.settings import RESOURCES

DAY = 86400.0
# The "current rate" of a pool: what its members burned over this long before now.
RATE_WINDOW = 7 * DAY
# A site without periods ("none") shows usage in windows of this many days.
WINDOW_DAYS = 30


def window(ledger: Ledger, back: int = 0, now: float | None = None) -> Period:
    """The quota period `back` periods before the current one (0: the current one); with
    period "none", a window of WINDOW_DAYS days ending now, `back` windows earlier."""
    now = time.time() if now is None else now
    p = ledger.period(now)
    if p.end == FOREVER:
        end = now - back * WINDOW_DAYS * DAY
        return Period(end - WINDOW_DAYS * DAY, end)
    for _ in range(back):
        p = ledger.period(p.start - 1)
    return p


def _charges(ledger: Ledger, since: float, until: float, user=None, account=None) -> list:
    """(user, account, resource, source, start, end, amount) of every charge, posted or in
    the journal, that overlaps [since, until)."""
    out = []
    with ledger._read() as conn:
        for t in (Charge, JournalEntry):
            q = select(t.user, t.account, t.resource, t.source, t.start, t.end, t.amount).where(
                t.end > since, t.start < until
            )
            if user is not None:
                q = q.where(t.user == user)
            if account is not None:
                q = q.where(t.account == account)
            out.extend(conn.execute(q).all())
    return out


def _period_sums(ledger: Ledger, since: float, until: float):
    """(kind, name, resource, hours) from the running totals when [since, until) is a whole
    period: a few rows read, however long the history."""
    p = ledger.period(since)
    if p.start != since or until < p.end:
        return None
    with ledger._read() as conn:
        return list(
            conn.execute(
                select(Total.kind, Total.name, Total.resource, Total.used).where(
                    Total.period_start == since
                )
            )
        )


def _sums(ledger: Ledger, since: float, until: float) -> list[tuple[str, str, str, float]]:
    """(account, user, resource, hours) in [since, until): the database sums the charges
    inside it; the few that cross its ends count for their share."""
    out = []
    with ledger._read() as conn:
        for t in (Charge, JournalEntry):
            inside = (
                select(t.account, t.user, t.resource, func.sum(t.amount))
                .where(t.start >= since, t.end <= until)
                .group_by(t.account, t.user, t.resource)
            )
            out.extend(tuple(r) for r in conn.execute(inside))
            edges = select(t.account, t.user, t.resource, t.start, t.end, t.amount).where(
                t.end > since, t.start < until, (t.start < since) | (t.end > until)
            )
            for a, u, res, start, end, amount in conn.execute(edges):
                if end > start:
                    out.append(
                        (a, u, res, amount * (min(end, until) - max(start, since)) / (end - start))
                    )
    return out


def _days(since: float, until: float, tz: str) -> list[float]:
    """Local midnights from the day holding `since` to the one holding `until` (exclusive)."""
    zone = ZoneInfo(tz)
    day = datetime.fromtimestamp(since, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while day.timestamp() < until:
        out.append(day.timestamp())
        # the next midnight in local time, whatever a DST change did to this day's length
        day = (day.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
    return out


def daily(
    ledger: Ledger,
    since: float,
    until: float,
    *,
    user: str | None = None,
    account: str | None = None,
) -> dict:
    """Hours used per local day in [since, until), per resource and per source.

    {"days": [ISO date...], "x": [epoch of each day's midnight...],
     "by_source": {resource: {source: [hours per day]}}, "total": {resource: hours}}"""
    days = _days(since, until, ledger.tz)
    bounds = days + [until]
    by_source: dict[str, dict[str, list[float]]] = {r: {} for r in RESOURCES}
    for r in _charges(ledger, since, until, user=user, account=account):
        start, end = max(r.start, since), min(r.end, until)
        if end <= start or r.end <= r.start:
            continue
        per_second = r.amount / (r.end - r.start)
        series = by_source.setdefault(r.resource, {}).setdefault(r.source, [0.0] * len(days))
        # only the days the charge overlaps (most charges are one meter tick: one day)
        for i in range(bisect_right(bounds, start) - 1, len(days)):
            if bounds[i] >= end:
                break
            lo, hi = max(start, bounds[i]), min(end, bounds[i + 1])
            if hi > lo:
                series[i] += per_second * (hi - lo)
    rounded = {
        res: {src: [round(v, 6) for v in vals] for src, vals in sorted(srcs.items())}
        for res, srcs in by_source.items()
    }
    return {
        "since": iso(since, ledger.tz),
        "until": iso(until, ledger.tz),
        "days": [datetime.fromtimestamp(d, ZoneInfo(ledger.tz)).date().isoformat() for d in days],
        "x": days,
        "by_source": rounded,
        "total": {
            res: round(sum(sum(v) for v in srcs.values()), 6) for res, srcs in by_source.items()
        },
    }


def members(ledger: Ledger, account: str) -> list[str]:
    """The users charged to `account`: configured there, or recorded there by the ledger."""
    with ledger._read() as conn:
        recorded = set(conn.scalars(select(Member.user).where(Member.account == account)))
    configured = {u for u, q in ledger.policy.users.items() if q.account == account}
    return sorted(recorded | configured)


def burn(ledger: Ledger, account: str, now: float | None = None) -> dict:
    """An account's pool this period, each member's use and personal cap, the pool's
    current rate (hours per hour over the last RATE_WINDOW) and when it runs dry at it.

    `runs_dry_at` is None when the pool is not limited, nothing burns, or it lasts to the
    reset; `lasts_to_reset` says which of the last two."""
    now = time.time() if now is None else now
    period = ledger.period(now)
    names = members(ledger, account)
    used = ledger.totals_used(period.start, users=names)
    balances = ledger.balances(names, now) if names else {}
    since = max(now - RATE_WINDOW, period.start) if period.resets else now - RATE_WINDOW
    hours = max((now - since) / 3600.0, 1.0)
    burned: dict[str, float] = defaultdict(float)
    for r in _charges(ledger, since, now, account=account):
        if r.end > r.start:
            overlap = min(r.end, now) - max(r.start, since)
            burned[r.resource] += r.amount * max(overlap, 0.0) / (r.end - r.start)
    pool = ledger.accounts_pool(now)[account]
    projection = {}
    for res in RESOURCES:
        rate = burned[res] / hours
        limit = pool.get(res)
        dry, lasts = None, False
        if limit is not None:
            if limit["remaining"] <= 0:
                dry = now
            elif rate > 0:
                at = now + limit["remaining"] / rate * 3600.0
                if at < period.end:
                    dry = at
                else:
                    lasts = True
            else:
                lasts = True
        projection[res] = {
            "rate_per_hour": round(rate, 6),
            "runs_dry_at": iso(dry, ledger.tz) if dry is not None else None,
            "lasts_to_reset": lasts,
        }
    return {
        "account": account,
        "period": {"start": iso(period.start, ledger.tz), "resets_at": iso(period.end, ledger.tz)},
        "pool": pool,
        "projection": projection,
        "members": [
            {
                "user": u,
                "used": {res: round(used.get(("user", u, res), 0.0), 6) for res in RESOURCES},
                "cap": {
                    res: (
                        balances[u].resources[res].personal.as_dict()
                        if balances[u].resources[res].personal
                        else None
                    )
                    for res in RESOURCES
                },
            }  # fmt: skip
            for u in names
        ],
    }


def estate(ledger: Ledger, since: float, until: float, top: int = 10) -> dict:
    """Every account's and the top users' hours in [since, until), the stops at zero, and
    the starts refused (`refusals`)."""
    accounts: dict[str, dict[str, float]] = {a: dict.fromkeys(RESOURCES, 0.0)
                                             for a in ledger.policy.accounts}  # fmt: skip
    users: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(RESOURCES, 0.0))
    totals = _period_sums(ledger, since, until)
    if totals is not None:
        for kind, name, resource, hours in totals:
            if kind == "account":
                accounts.setdefault(name, dict.fromkeys(RESOURCES, 0.0))[resource] += hours
            else:
                users[name][resource] += hours
    else:
        for account, user, resource, hours in _sums(ledger, since, until):
            accounts.setdefault(account, dict.fromkeys(RESOURCES, 0.0))[resource] += hours
            users[user][resource] += hours
    with ledger._read() as conn:
        stops = conn.scalar(
            select(func.count()).select_from(Stop).where(Stop.at >= since, Stop.at < until)
        )
    ranked = sorted(users.items(), key=lambda kv: (-kv[1]["gpu_hours"], -kv[1]["cpu_hours"], kv[0]))

    def rounded(d):
        return {k: round(v, 6) for k, v in d.items()}

    return {
        "since": iso(since, ledger.tz),
        "until": iso(until, ledger.tz),
        "total": rounded({res: sum(a[res] for a in accounts.values()) for res in RESOURCES}),
        "accounts": {a: rounded(v) for a, v in sorted(accounts.items())},
        "top_users": [{"user": u, **rounded(v)} for u, v in ranked[:top]],
        "stops_at_zero": stops or 0,
        "refusals": refusals(ledger, since, until, top),
    }


def refusals(ledger: Ledger, since: float, until: float, top: int = 10) -> dict:
    """Starts refused in [since, until) (quota/refusals.py): how many for each reason, each
    reason per local day, and the users refused most.

    {"total": n, "by_reason": {reason: n}, "days": [ISO date...], "x": [epoch of each
     day's midnight...], "per_day": {reason: [n per day]},
     "top_users": [{"user", "refusals", "by_reason"}]}"""
    days = _days(since, until, ledger.tz)
    per_day = {r: [0] * len(days) for r in REASONS}
    by_user: dict[str, dict[str, int]] = defaultdict(dict)
    window = (Refusal.at >= since, Refusal.at < until)
    with ledger._read() as conn:
        for at, reason in conn.execute(select(Refusal.at, Refusal.reason).where(*window)):
            series = per_day.setdefault(reason, [0] * len(days))
            series[bisect_right(days, at) - 1] += 1
        users = select(Refusal.user, Refusal.reason, func.count()).where(*window)
        for user, reason, n in conn.execute(users.group_by(Refusal.user, Refusal.reason)):
            by_user[user][reason] = n
    totals = {user: sum(n.values()) for user, n in by_user.items()}
    ranked = sorted(totals, key=lambda u: (-totals[u], u))[:top]
    return {
        "total": sum(totals.values()),
        "by_reason": {r: sum(v) for r, v in per_day.items()},
        "days": [datetime.fromtimestamp(d, ZoneInfo(ledger.tz)).date().isoformat() for d in days],
        "x": days,
        "per_day": per_day,
        "top_users": [
            {"user": u, "refusals": totals[u], "by_reason": dict(sorted(by_user[u].items()))}
            for u in ranked
        ],
    }


class UsedHoursCollector:
    """Prometheus: hours charged per account and resource since the ledger began (a counter
    read from the ledger's totals at each scrape, so it survives restarts and never drops
    at a period's reset), and this period's hours (a gauge)."""

    def __init__(self, ledger: Ledger, clock=time.time):
        self.ledger = ledger
        self.clock = clock

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        total = CounterMetricFamily(
            "shangzhuang_quota_used_hours",
            "Hours charged to each account since the ledger began",
            labels=["account", "resource"],
        )
        period = GaugeMetricFamily(
            "shangzhuang_quota_account_used_hours",
            "Hours charged to each account this period",
            labels=["account", "resource"],
        )
        start = self.ledger.period(self.clock()).start
        sums: dict[tuple[str, str], float] = defaultdict(float)
        this: dict[tuple[str, str], float] = defaultdict(float)
        with self.ledger._read() as conn:
            rows = conn.execute(
                select(Total.name, Total.resource, Total.period_start, Total.used).where(
                    Total.kind == "account"
                )
            ).all()
        for name, resource, p, used in rows:
            sums[(name, resource)] += used
            if p == start:
                this[(name, resource)] += used
        for account in self.ledger.policy.accounts:
            for resource in RESOURCES:
                sums.setdefault((account, resource), 0.0)
        for (account, resource), v in sorted(sums.items()):
            total.add_metric([account, resource], v)
            period.add_metric([account, resource], this.get((account, resource), 0.0))
        yield total
        yield period


class RefusalsCollector:
    """Prometheus: starts refused per reason since the ledger began (a counter read from the
    ledger at each scrape: it survives restarts, and counts what the hub and the meter
    recorded alike)."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "shangzhuang_quota_refusals", "Starts refused, per reason", labels=["reason"]
        )
        with self.ledger._read() as conn:
            counts = dict(
                conn.execute(select(Refusal.reason, func.count()).group_by(Refusal.reason)).all()
            )
        for reason in sorted(set(REASONS) | set(counts)):
            family.add_metric([reason], counts.get(reason, 0))
        yield family


__all__ = [
    "RefusalsCollector", "UsedHoursCollector", "burn", "daily", "estate", "managed_by",
    "members", "refusals", "window",
]  # fmt: skip
