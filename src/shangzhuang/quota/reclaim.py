"""Idle GPU reclaim: a GPU session whose GPUs sit idle is warned, then stopped.

The rule, in one place (`Reclaim.tick`, run by the meter's tick after the utilisation
readings, quota/utilisation.py):
- a Lab session on a profile with GPUs whose GPUs have all been under
  `quota.reclaim.idle_threshold_percent` for its idle period (`quota.reclaim.idle_seconds`,
  or the profile's `reclaim_idle_seconds`) is *warned*: the warning is kept in the ledger
  (`reclaim_warnings`), so a restarted quota service keeps the clock, and the Lab and the
  home page show it with "continue on CPU" (service.ContinueOnCpuHandler);
- a warned session is *stopped* `quota.reclaim.grace_seconds` after the warning, if its
  GPUs are still idle then;
- a reading at or over the threshold since the warning (its GPUs got busy again) *clears*
  the warning, and the idle period counts again from there.
Lab sessions on either backend are watched alike: on `local` the hub's Lab servers (source
"lab"), on `slurm` the jobs the hub's spawners started for Lab sessions (source "job" with
`Running.lab_server`, quota/sources.py SlurmJobs), stopped through the hub in both cases
(the spawner ends the session or cancels its job, and closes its charge).
Exempt users (`exempted`: the config's `quota.reclaim.exempt` and those an admin exempts on
the usage page, `set_exempt`) and profiles with `reclaim_idle_seconds = 0` are never
touched, nor is anything but a Lab session: an app has its own idle stop, and a Slurm job
that is not a Lab session (a Dask worker, a user's own sbatch job) runs unattended to its
own end (its cluster scales it down, its wall time ends it), with nobody at a Lab to warn or
to offer "continue on CPU"; it is charged for what it holds all the same.
Readings come from where the user can't forge them (NVML read by the quota service on the
node, Slurm's own GPU accounting read with sstat, quota/gpu_readings.py); without readings
nothing is reclaimed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select, update

from shangzhuang.i18n import Message
from shangzhuang.quota import utilisation
from shangzhuang.quota.consumers import Consumer
from shangzhuang.quota.db import GpuSample, ReclaimExemption, ReclaimWarning
from shangzhuang.quota.ledger import Ledger, QuotaError
from shangzhuang.quota.meter import Running, UsageSource
from shangzhuang.settings import QuotaReclaim, Settings

log = logging.getLogger(__name__)

STOPPED_SHOWN = 86400.0  # seconds the home page says a session was stopped, and why


def lab_server(r: Running) -> str | None:
    """The server name of a Lab session (local: its consumer says it; Slurm: its job's
    `lab_server`); None for anything else, which is never reclaimed."""
    if r.lab_server is not None:
        return r.lab_server
    return Consumer.parse(r.consumer).server if r.source == "lab" else None


def stop_reason(threshold: float, idle_seconds: float) -> str:
    """What the stops record says (English, for operators; the pages say it translated
    from the warning's figures)."""
    return (
        f"GPUs idle: under {threshold:g}% for {idle_seconds / 60:.0f} minutes, and still idle "
        "at the end of the grace period"
    )


def exempted_by_admins(ledger: Ledger) -> set[str]:
    """The users admins exempted on the usage page."""
    with ledger._read() as conn:
        return set(conn.execute(select(ReclaimExemption.user)).scalars())


def exempted(ledger: Ledger, policy: QuotaReclaim) -> set[str]:
    """Every user exempt from idle GPU reclaim: the config's (`policy.exempt`) and the
    page's."""
    return set(policy.exempt) | exempted_by_admins(ledger)


def set_exempt(
    ledger: Ledger,
    policy: QuotaReclaim,
    user: str,
    exempt: bool,
    by: str,
    now: float | None = None,
) -> None:
    """Exempt `user` from idle GPU reclaim (or no longer); an admin's act. Their session
    warned already loses its warning at the next tick."""
    if not exempt and user in policy.exempt:
        raise QuotaError(
            Message(
                "{user} is exempt in the site's config ([quota.reclaim] exempt): "
                "remove them there.",
                user=user,
            )
        )  # fmt: skip
    with ledger._write() as conn:
        conn.execute(delete(ReclaimExemption).where(ReclaimExemption.user == user))
        if exempt:
            now = time.time() if now is None else now
            conn.execute(insert(ReclaimExemption).values(user=user, set_by=by, at=now))


@dataclass(frozen=True)
class IdleWarning:
    """A GPU session (the hub's `server` of `user`) warned that it will be stopped: idle
    since `idle_since`, warned at `warned_at`, stopped at `stops_at` unless its GPUs get
    busy."""

    consumer: str
    user: str
    idle_since: float
    warned_at: float
    stops_at: float
    stopped_at: float | None = None
    server: str = ""

    def as_dict(self, reclaim, now: float, iso: Callable[[float], str]) -> dict:
        """For the API (balance's running entries): when and why, and where to go on."""
        return {
            "idle_since": iso(self.idle_since), "warned_at": iso(self.warned_at),
            "stops_at": iso(self.stops_at),
            "stops_in_seconds": round(max(0.0, self.stops_at - now), 1),
            "threshold_percent": reclaim.idle_threshold_percent,
            "idle_seconds": round(self.warned_at - self.idle_since),
        }  # fmt: skip


@dataclass
class ReclaimReport:
    warned: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)


class Reclaim:
    """Idle GPU reclaim under the site's `[quota.reclaim]` (see the module's docstring)."""

    def __init__(self, ledger: Ledger, settings: Settings):
        self.ledger = ledger
        self.settings = settings
        self.policy = settings.quota.reclaim
        self.readings = IdleReadings(self.policy.idle_threshold_percent)

    def idle_period(self, r: Running, exempt: set[str]) -> float:
        """Seconds of idle GPUs after which this session is warned; 0: never reclaimed.
        `exempt`: the exempt users (`exempted`, read once a tick)."""
        lab = r.source == "lab" or r.lab_server is not None  # as lab_server(), unparsed
        if not lab or r.rates.get("gpu_hours", 0) <= 0:
            return 0.0
        if r.user in exempt:
            return 0.0
        try:
            own = self.settings.profile(r.profile).reclaim_idle_seconds
        except KeyError:  # a profile gone from the config since it started: the site's
            own = None
        return self.policy.idle_seconds if own is None else own

    def warnings(self, user: str | None = None) -> dict[str, IdleWarning]:
        """The warnings (a user's, or everyone's), by consumer: those in force, and for a
        day those of sessions it stopped (`stopped_at`)."""
        with self.ledger._read() as conn:
            q = select(ReclaimWarning)
            if user is not None:
                q = q.where(ReclaimWarning.user == user)
            return {w.consumer: _warning(w) for w in conn.execute(q)}

    async def tick(
        self, seen: dict[str, Running], sources: dict[str, UsageSource], now: float
    ) -> ReclaimReport:
        """Warn, clear and stop, for the consumers running now (`seen`)."""
        report = ReclaimReport()
        threshold = self.policy.idle_threshold_percent
        exempt = exempted(self.ledger, self.policy)
        periods = {c: self.idle_period(r, exempt) for c, r in seen.items()}
        watched = {c: r for c, r in seen.items() if periods[c] > 0}
        fresh_since = now - 2 * self.settings.quota.sample_seconds
        with self.ledger._write() as conn:
            known = {w.consumer: _warning(w) for w in conn.execute(select(ReclaimWarning))}
            self.readings.update(conn, watched, known, now)
            # Gone, exempted or no longer reclaimed: its warning goes.
            # A session it stopped keeps its record a day: the home page says why it stopped.
            dropped = [c for c, w in known.items() if c not in watched and (
                w.stopped_at is None or w.stopped_at < now - STOPPED_SHOWN)]  # fmt: skip
            due: list[IdleWarning] = []
            new: list[dict] = []
            for consumer, r in watched.items():
                run = self.readings.runs.get(consumer)
                idle = run.seconds_to(now) if run else 0.0
                warning = known.get(consumer)
                if warning is None:
                    if idle >= periods[consumer]:
                        warning = IdleWarning(consumer, r.user, now - idle, now,
                                              now + self.policy.grace_seconds,
                                              server=lab_server(r))  # fmt: skip
                        new.append(vars(warning))
                        report.warned.append(consumer)
                elif self.readings.busy_at.get(consumer, 0.0) > warning.warned_at:
                    dropped.append(consumer)
                    report.cleared.append(consumer)
                elif (
                    now >= warning.stops_at
                    and warning.stopped_at is None
                    and run
                    and (
                        run.newest >= fresh_since  # read lately, and idle: never on old readings
                    )
                ):
                    due.append(warning)
            if new:  # one statement for all: a thousand sessions idle since the same hour
                conn.execute(ReclaimWarning.__table__.insert(), new)
            if dropped:
                conn.execute(delete(ReclaimWarning).where(ReclaimWarning.consumer.in_(dropped)))
        for warning in due:
            r = watched[warning.consumer]
            reason = stop_reason(threshold, warning.warned_at - warning.idle_since)
            try:
                if not await sources[r.source].stop(r.consumer, r.user, reason):
                    continue  # it ended since the listing: the user stopped it, not reclaim
            except Exception as e:  # the next tick tries again
                log.error("could not stop idle GPU session %s of %s: %s", r.consumer, r.user, e)
                continue
            self.ledger.record_stop(r.user, r.consumer, reason, now)
            with self.ledger._write() as conn:  # stopped once: the hub may list it a while yet
                conn.execute(update(ReclaimWarning).where(
                    ReclaimWarning.consumer == r.consumer).values(stopped_at=now))  # fmt: skip
            report.stopped.append(r.consumer)
            log.info("stopped %s of %s: %s", r.consumer, r.user, reason)
        for consumer in report.warned:
            log.info("warned %s: its GPUs are idle (reclaim)", consumer)
        return report


@dataclass
class IdleRun:
    """A session's current run of readings under the threshold: from `start` to the newest
    reading (at `newest`, standing for `seconds` before it)."""

    start: float
    newest: float
    seconds: float

    def seconds_to(self, now: float) -> float:
        return max(0.0, min(now, self.newest + self.seconds) - self.start)


class IdleReadings:
    """Each watched session's idle run and newest busy reading, kept up to date from the
    readings written since the last tick (one indexed query for all sessions, not one per
    session: 1,000 GPU sessions stay a few milliseconds). A session seen for the first time
    (or after a restart of the service) is read from the ledger once, by utilisation.idle_for's
    rule: a reading at or over the threshold, or a gap of more than half an interval in the
    readings, ends a run."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.runs: dict[str, IdleRun] = {}  # absent: not idle (busy, or no reading)
        self.busy_at: dict[str, float] = {}  # the newest reading at or over the threshold
        self.known: set[str] = set()
        self.read_to: float | None = None

    def update(self, conn, watched: dict, warned: dict[str, IdleWarning], now: float) -> None:
        for gone in self.known - set(watched):
            self.known.discard(gone)
            self.runs.pop(gone, None)
            self.busy_at.pop(gone, None)
        if self.read_to is not None:
            rows = conn.execute(
                select(GpuSample.consumer, GpuSample.at, GpuSample.seconds, GpuSample.peak)
                .where(GpuSample.at > self.read_to, GpuSample.at <= now)
                .order_by(GpuSample.at)
            )
            for r in rows:
                if r.consumer in self.known:
                    self.add(r.consumer, r.at, r.seconds, r.peak)
        for consumer in set(watched) - self.known:  # first seen: what the ledger has
            self.seed(conn, consumer, warned.get(consumer), now)
        self.read_to = now

    def add(self, consumer: str, at: float, seconds: float, peak: float) -> None:
        run = self.runs.get(consumer)
        if peak >= self.threshold:
            self.busy_at[consumer] = at
            self.runs.pop(consumer, None)
        elif run is None or at - seconds > run.newest + 0.5 * seconds:  # a new run (or a gap)
            self.runs[consumer] = IdleRun(at, at, seconds)
        else:
            run.newest, run.seconds = at, seconds

    def seed(self, conn, consumer: str, warning: IdleWarning | None, now: float) -> None:
        self.known.add(consumer)
        idle = utilisation.idle_for(conn, consumer, self.threshold, now)
        newest = conn.execute(
            select(GpuSample.at, GpuSample.seconds, GpuSample.peak)
            .where(GpuSample.consumer == consumer, GpuSample.at <= now)
            .order_by(GpuSample.at.desc())
            .limit(1)
        ).first()
        if newest is not None and newest.peak < self.threshold:  # idle now, for `idle` s
            end = min(now, newest.at + newest.seconds)
            self.runs[consumer] = IdleRun(end - idle, newest.at, newest.seconds)
        busy = conn.execute(
            select(func.max(GpuSample.at)).where(
                GpuSample.consumer == consumer, GpuSample.peak >= self.threshold,
                GpuSample.at <= now,
            )
        ).scalar()  # fmt: skip
        if busy is not None:
            self.busy_at[consumer] = busy


def _warning(row: ReclaimWarning) -> IdleWarning:
    # No server: a warning from before schema 0015, of a Lab session whose consumer says it.
    server = row.server if row.server is not None else Consumer.parse(row.consumer).server
    return IdleWarning(row.consumer, row.user, row.idle_since, row.warned_at, row.stops_at,
                       row.stopped_at, server)  # fmt: skip
