"""Quota periods: fixed calendar months or weeks in the site's time zone, or one endless period."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

FOREVER = float("inf")


@dataclass(frozen=True)
class Period:
    start: float  # epoch seconds, inclusive
    end: float  # epoch seconds, exclusive; FOREVER for period "none"

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end

    @property
    def resets(self) -> bool:
        return self.end != FOREVER


def period_at(t: float, kind: str, tz: str) -> Period:
    """The period that holds instant `t` (epoch seconds)."""
    if kind == "none":
        return Period(0.0, FOREVER)
    zone = ZoneInfo(tz)
    # Boundaries are whole seconds; flooring keeps fromtimestamp's rounding to microseconds
    # from moving an instant just before a reset into the next period.
    local = datetime.fromtimestamp(math.floor(t), zone)
    if kind == "monthly":
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    elif kind == "weekly":  # ISO weeks: Monday 00:00
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=day.weekday())
        nxt = start + timedelta(days=7)
    else:
        raise ValueError(f"unknown quota period {kind!r}")
    # Re-attach the zone: midnight across a DST change has its own offset. fold=0: a
    # midnight that happens twice (clocks back to 00:00) starts the period the first time,
    # whichever occurrence `t` fell in (`local` keeps the fold of `t`).
    start = start.replace(tzinfo=None, fold=0).replace(tzinfo=zone)
    nxt = nxt.replace(tzinfo=None, fold=0).replace(tzinfo=zone)
    return Period(start.timestamp(), nxt.timestamp())


def split(start: float, end: float, kind: str, tz: str) -> list[tuple[float, float, Period]]:
    """Cut [start, end) at period boundaries: each piece is charged to its own period."""
    pieces = []
    t = start
    while t < end:
        p = period_at(t, kind, tz)
        stop = min(end, p.end)
        pieces.append((t, stop, p))
        t = stop
    return pieces


def iso(t: float, tz: str) -> str | None:
    """An instant as ISO 8601 in the site's zone (None for FOREVER)."""
    if t == FOREVER:
        return None
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(timespec="seconds")
