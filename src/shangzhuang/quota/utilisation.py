"""GPU utilisation of GPU sessions, as the platform reads it, kept at bounded size.

Each meter tick records, per GPU session (a ledger `Consumer` id), the mean utilisation of
the session's GPUs over the tick, read by the quota service from a source the session's
user can't write: NVML on the node for the local backend, Slurm's GPU accounting for jobs
(quota/gpu_readings.py). No API writes samples.

Bounded size (the table `gpu_samples`, one row per consumer per sample):
- for RAW_SECONDS (24 h) a row per tick (`quota.sample_seconds`, 15 s: 5,760 rows a
  GPU session a day);
- older ones are merged into one row per consumer per clock hour (the row at the hour's
  start, holding its time-weighted mean, its peak and its seconds under IDLE_PERCENT), a
  few sessions per tick;
- rows older than KEEP_SECONDS (400 days) are deleted.
So the table holds at most 24 h x 3,600 / sample_seconds rows per session running in the
last day, plus one per session-hour of the last 400 days. `tidy` does both, a few hours
of history at a time, after each meter tick. Beside it, `gpu_account_hours` keeps each
account's GPU-seconds read and idle per hour (the estate's figure), also for 400 days.

`record`, `recent` and `idle_for` take a connection of the ledger's engine inside a
transaction (`Ledger._write()` / `_read()`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import case, delete, func, select
from sqlalchemy.engine import Connection

from shangzhuang.quota.db import Consumer, GpuAccountHour, GpuSample, Watermark

IDLE_PERCENT = 10.0  # a GPU-hour under this utilisation counts as idle (the efficiency)
RAW_SECONDS = 24 * 3600.0  # samples younger than this stay one row per tick
BUCKET_SECONDS = 3600.0  # older ones: one row per hour
KEEP_SECONDS = 400 * 24 * 3600.0  # and none older than this
HOURS_PER_TIDY = 6  # hours a tidy moves past at most: a tick after a long stop stays short
SESSIONS_PER_TIDY = 8  # sessions whose hour one tidy merges (x 8 while more hours wait)
DOWNSAMPLED = "gpu_samples_downsampled"  # watermark: hours before this are merged


@dataclass(frozen=True)
class Sample:
    """One reading of one GPU session: mean utilisation (%) of its GPUs over `seconds`
    up to `at`, and the GPU memory its GPUs use (MiB) where the source knows it."""

    consumer: str
    user: str
    at: float
    percent: float
    seconds: float
    memory_mib: float | None = None

    def row(self) -> dict:
        percent = min(100.0, max(0.0, float(self.percent)))
        return {
            "consumer": self.consumer, "user": self.user, "at": self.at,
            "seconds": self.seconds, "percent": percent, "peak": percent,
            "idle_seconds": self.seconds if percent < IDLE_PERCENT else 0.0,
            "memory_mib": self.memory_mib,
        }  # fmt: skip


def _insert(conn: Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(GpuSample.__table__)


def record_many(
    conn: Connection, samples: list[Sample], consumers: dict[str, tuple[str, float]] | None = None
) -> None:
    """Keep these readings (a consumer's reading at a time it has one already: ignored),
    and add them to their accounts' hours (gpu_account_hours). `consumers`: the ledger's
    (account, gpu_rate) of consumers the caller has read already (the meter, this tick);
    the others' are read here."""
    if not samples:
        return
    g = GpuSample
    # By time: a tick's readings share one, and the index on `at` finds the few rows
    # there (none but a tick's repeat), where a list of 1,000 sessions cost more to send.
    kept = conn.execute(
        select(g.consumer, g.at).where(g.at.in_(sorted({s.at for s in samples})))
    )  # (not INSERT ... RETURNING: SQLite has it only since 3.35)
    have = {(r.consumer, r.at) for r in kept}
    rows = []
    for s in samples:
        if (s.consumer, s.at) not in have:
            have.add((s.consumer, s.at))
            rows.append(s.row())
    if rows:
        conn.execute(_insert(conn).on_conflict_do_nothing(index_elements=["consumer", "at"]), rows)
        _add_to_account_hours(conn, rows, consumers or {})


def _add_to_account_hours(
    conn: Connection, rows: list[dict], consumers: dict[str, tuple[str, float]]
) -> None:
    """Each new reading's GPU-seconds (its seconds x its session's GPUs) to its session's
    account, in the clock hour of its time. CONSUMERS: (account, gpu_rate) already known."""
    if not rows:
        return
    c = Consumer
    known = dict(consumers)
    ids = sorted({r["consumer"] for r in rows} - set(known))
    if ids:
        for m in conn.execute(select(c.id, c.account, c.gpu_rate).where(c.id.in_(ids))):
            known[m.id] = (m.account, m.gpu_rate)
    sums: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        account, gpus = known.get(r["consumer"], ("", 0.0))
        if gpus <= 0:
            continue
        key = (account, math.floor(r["at"] / BUCKET_SECONDS) * BUCKET_SECONDS)
        total = sums.setdefault(key, [0.0, 0.0, 0.0])
        total[0] += r["seconds"] * gpus
        total[1] += r["idle_seconds"] * gpus
        total[2] += r["percent"] * r["seconds"] * gpus
    if not sums:
        return
    a = GpuAccountHour.__table__
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(a)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["account", "hour"],
            set_={
                col: a.c[col] + stmt.excluded[col]
                for col in ("gpu_seconds", "idle_gpu_seconds", "percent_gpu_seconds")
            },
        ),
        [
            {"account": account, "hour": hour, "gpu_seconds": g, "idle_gpu_seconds": i,
             "percent_gpu_seconds": p}
            for (account, hour), (g, i, p) in sorted(sums.items())
        ],
    )  # fmt: skip


def record(
    conn: Connection,
    consumer: str,
    user: str,
    t: float,
    percent: float,
    *,
    seconds: float = 15.0,
    memory_mib: float | None = None,
) -> None:
    """Keep one reading: `percent` mean utilisation of `consumer`'s GPUs over the
    `seconds` up to `t` (the meter's interval)."""
    record_many(conn, [Sample(consumer, user, t, percent, seconds, memory_mib)])


def recent(conn: Connection, consumer: str, since: float) -> list[tuple[float, float]]:
    """(time, percent) of the consumer's rows from `since` on, oldest first (an hourly row
    of the older history stands at its hour's start)."""
    rows = conn.execute(
        select(GpuSample.at, GpuSample.percent)
        .where(GpuSample.consumer == consumer, GpuSample.at >= since)
        .order_by(GpuSample.at)
    )
    return [(r.at, r.percent) for r in rows]


def idle_for(conn: Connection, consumer: str, threshold: float, now: float) -> float:
    """Seconds the consumer's GPUs have been continuously under `threshold` % up to `now`:
    from the oldest reading of the newest run of readings under it, to `now` but no further
    than one interval past the newest reading. 0.0 when the newest reading is at or over
    `threshold`, or there is none. Counted over the raw readings (the last RAW_SECONDS) only;
    a gap in them longer than half an interval (the quota service was down) ends the run:
    nobody saw the GPUs then."""
    rows = conn.execute(
        select(GpuSample.at, GpuSample.seconds, GpuSample.peak)
        .where(
            GpuSample.consumer == consumer,
            GpuSample.at <= now,
            GpuSample.at >= now - RAW_SECONDS,
        )
        .order_by(GpuSample.at.desc())
    )
    newest = start = None
    for r in rows:
        if r.peak >= threshold:
            break
        if start is not None and start.at - start.seconds > r.at + 0.5 * start.seconds:
            break
        newest = newest or r
        start = r
    if newest is None:
        return 0.0
    return max(0.0, min(now, newest.at + newest.seconds) - start.at)


def tidy(conn: Connection, now: float) -> tuple[int, int]:
    """Downsample the raw readings older than RAW_SECONDS to hourly rows, a few sessions'
    hour at a time (SESSIONS_PER_TIDY; more while it is behind), and delete rows older than
    KEEP_SECONDS. Merging an hour of 1,000 sessions at once held the database for seconds
    (bench/gpu_utilisation.py); a slice after each meter tick (Meter.between_ticks) keeps
    each short, and keeps up with SESSIONS_PER_TIDY x 3,600 / quota.sample_seconds GPU
    sessions (1,920 at 15 s).
    Returns (raw rows merged, rows deleted)."""
    cutoff = math.floor((now - RAW_SECONDS) / BUCKET_SECONDS) * BUCKET_SECONDS
    mark = conn.execute(select(Watermark.value).where(Watermark.name == DOWNSAMPLED)).scalar()
    if mark is None:  # first tidy: start at the oldest reading
        oldest = conn.execute(select(func.min(GpuSample.at))).scalar()
        if oldest is None:
            return 0, 0
        mark = math.floor(oldest / BUCKET_SECONDS) * BUCKET_SECONDS
    mark = max(mark, math.floor((now - KEEP_SECONDS) / BUCKET_SECONDS) * BUCKET_SECONDS)
    behind = mark < cutoff - BUCKET_SECONDS  # more than the last hour to merge
    budget = SESSIONS_PER_TIDY * (8 if behind else 1)
    merged = hours = 0
    while mark < cutoff and budget > 0 and hours < HOURS_PER_TIDY:
        # Sessions with raw readings in the hour: after a merge a session has only its
        # hourly row, at the hour's start; the index on `at` finds the others first.
        names = list(conn.scalars(
            select(GpuSample.consumer).distinct()
            .where(GpuSample.at > mark, GpuSample.at < mark + BUCKET_SECONDS)
            .limit(budget)
        ))  # fmt: skip
        if not names:
            mark += BUCKET_SECONDS
            hours += 1
            continue
        merged += _merge_hour(conn, mark, names)
        budget -= len(names)
    conn.execute(_upsert_watermark(conn, mark))
    pruned = conn.execute(delete(GpuSample).where(GpuSample.at < now - KEEP_SECONDS)).rowcount
    conn.execute(delete(GpuAccountHour).where(GpuAccountHour.hour < now - KEEP_SECONDS))
    return merged, pruned


def _upsert_watermark(conn: Connection, value: float):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(Watermark.__table__).values(name=DOWNSAMPLED, value=value)
    return stmt.on_conflict_do_update(index_elements=["name"], set_={"value": value})


def _merge_hour(conn: Connection, hour: float, consumers: list[str]) -> int:
    """Replace these consumers' rows of [hour, hour + 1 h) by one row each at `hour` (again
    on a merged row alone: the same row)."""
    g = GpuSample
    within = (g.consumer.in_(consumers), g.at >= hour, g.at < hour + BUCKET_SECONDS)
    seconds = func.sum(g.seconds)
    memory_seconds = func.sum(case((g.memory_mib.is_not(None), g.seconds), else_=0.0))
    rows = conn.execute(
        select(
            g.consumer, func.max(g.user).label("user"), func.count().label("n"),
            seconds.label("seconds"), func.sum(g.percent * g.seconds).label("weighted"),
            func.avg(g.percent).label("mean"), func.max(g.peak).label("peak"),
            func.sum(g.idle_seconds).label("idle"),
            func.sum(g.memory_mib * g.seconds).label("memory"),
            memory_seconds.label("memory_seconds"),
        ).where(*within).group_by(g.consumer)
    ).all()  # fmt: skip
    if not rows:
        return 0
    conn.execute(delete(g).where(*within))
    conn.execute(
        _insert(conn),
        [
            {
                "consumer": r.consumer, "user": r.user, "at": hour, "seconds": r.seconds,
                "percent": r.weighted / r.seconds if r.seconds else r.mean,
                "peak": r.peak, "idle_seconds": r.idle,
                "memory_mib": r.memory / r.memory_seconds if r.memory_seconds else None,
            }
            for r in rows
        ],
    )  # fmt: skip
    return sum(r.n for r in rows)


@dataclass
class Efficiency:
    """GPU-hours read by the sampler over a time, and how many of them were idle (under
    IDLE_PERCENT): the efficiency figure is `idle_share`."""

    gpu_hours: float = 0.0
    idle_gpu_hours: float = 0.0
    percent: float | None = None  # mean utilisation, weighted by GPU-seconds

    @property
    def idle_share(self) -> float | None:
        return self.idle_gpu_hours / self.gpu_hours if self.gpu_hours > 0 else None

    def as_dict(self) -> dict:
        share = self.idle_share
        return {
            "gpu_hours": round(self.gpu_hours, 6),
            "idle_gpu_hours": round(self.idle_gpu_hours, 6),
            "idle_share": None if share is None else round(share, 4),
            "percent": None if self.percent is None else round(self.percent, 2),
        }


def efficiency_by(
    conn: Connection, key: str, start: float, end: float, names: list[str] | None = None
) -> dict[str, Efficiency]:
    """Sampled and idle GPU-hours in [start, end) per `key` ("user", "account" or
    "consumer"): a row's seconds times its session's GPUs (the ledger's gpu_rate). Per
    account, from gpu_account_hours: to the hour (the hours that start in the window)."""
    if key == "account":
        return _efficiency_by_account(conn, start, end, names)
    g, c = GpuSample, Consumer
    column = {"user": c.user, "consumer": g.consumer}[key]
    gpu_seconds = g.seconds * c.gpu_rate
    q = (
        select(
            column.label("name"), func.sum(gpu_seconds).label("total"),
            func.sum(g.idle_seconds * c.gpu_rate).label("idle"),
            func.sum(g.percent * gpu_seconds).label("weighted"),
        )
        .join(c, c.id == g.consumer)
        .where(g.at >= start, g.at < end)
        .group_by(column)
    )  # fmt: skip
    if names is not None:  # by the readings' key (consumer, at): a user's are their consumers'
        ids = select(c.id).where(c.user.in_(names)) if key == "user" else names
        q = q.where(g.consumer.in_(ids))
    out = {}
    for r in conn.execute(q):
        total = r.total or 0.0
        out[r.name] = Efficiency(
            gpu_hours=total / 3600, idle_gpu_hours=(r.idle or 0.0) / 3600,
            percent=r.weighted / total if total else None,
        )  # fmt: skip
    return out


def _efficiency_by_account(
    conn: Connection, start: float, end: float, names: list[str] | None
) -> dict[str, Efficiency]:
    a = GpuAccountHour
    q = (
        select(
            a.account, func.sum(a.gpu_seconds).label("total"),
            func.sum(a.idle_gpu_seconds).label("idle"),
            func.sum(a.percent_gpu_seconds).label("weighted"),
        )
        .where(a.hour >= start, a.hour < end)
        .group_by(a.account)
    )  # fmt: skip
    if names is not None:
        q = q.where(a.account.in_(names))
    return {
        r.account: Efficiency(
            gpu_hours=r.total / 3600,
            idle_gpu_hours=r.idle / 3600,
            percent=r.weighted / r.total if r.total else None,
        )  # fmt: skip
        for r in conn.execute(q)
    }


def sessions_of(conn: Connection, user: str, start: float, end: float) -> list[dict]:
    """The user's GPU sessions read in [start, end): each one's readings as (time, percent)
    and its efficiency; newest first."""
    g, c = GpuSample, Consumer
    rows = conn.execute(
        select(g.consumer, g.at, g.percent)
        .where(g.consumer.in_(select(c.id).where(c.user == user)), g.at >= start, g.at < end)
        .order_by(g.consumer, g.at)
    ).all()
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault(r.consumer, []).append((r.at, round(r.percent, 2)))
    effs = efficiency_by(conn, "consumer", start, end, names=list(series))
    meta = {
        m.id: m
        for m in conn.execute(
            select(c.id, c.source, c.profile, c.gpu_rate, c.started, c.closed).where(
                c.id.in_(list(series))
            )
        )
    }
    out = []
    for consumer, points in series.items():
        m = meta.get(consumer)
        eff = effs.get(consumer, Efficiency())
        out.append({
            "consumer": consumer, "source": m.source if m else "",
            "profile": m.profile if m else "", "gpus": m.gpu_rate if m else 0,
            "started": m.started if m else points[0][0],
            "running": bool(m and not m.closed), "utilisation": points,
            "efficiency": eff.as_dict(),
        })  # fmt: skip
    out.sort(key=lambda s: s["started"], reverse=True)
    return out
