"""The meter: every tick, charge what runs, close what died, stop what can't pay.

Sources of usage plug in through `UsageSource` (quota/sources.py): Lab sessions and Voila
apps from the hub API, Slurm jobs from squeue (and, once they end, from Slurm's
accounting). A source lists what runs and can stop a consumer. Charges go to the
ledger's journal; after each tick a slice of it is posted (`Meter.between_ticks`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from shangzhuang.quota import utilisation
from shangzhuang.quota.ledger import Ledger

if TYPE_CHECKING:
    from shangzhuang.quota.reclaim import Reclaim, ReclaimReport

log = logging.getLogger(__name__)


def stops_in(balance, rates: dict[str, float], grace: float, now: float) -> float | None:
    """The zero rule, in one place: a consumer that burns a resource at zero is stopped
    `grace` seconds after its user's balance reached zero. Seconds until then (0: due
    now), or None when it is not to be stopped. BALANCE: a ledger Balance."""
    since = balance.exhausted_since
    if balance.state != "exhausted" or since is None:
        return None
    empty = [r for r, rb in balance.resources.items() if rb.remaining is not None
             and rb.remaining <= 0]  # fmt: skip
    if not any(rates.get(r, 0) > 0 for r in empty):
        return None
    return max(0.0, grace - (now - since))


@dataclass(frozen=True)
class Running:
    """A consumer seen running: charged from `started` at `rates` (resource -> per hour)."""

    consumer: str
    user: str
    source: str
    started: float
    rates: dict[str, float]
    profile: str = ""
    groups: tuple[str, ...] = ()
    # A Slurm job that runs a Lab session: its hub server name, from the spawner's state
    # (SlurmJobs); None for every other consumer.
    lab_server: str | None = None


class UsageSource(Protocol):
    """What runs (`running`), how to stop it; a source with an outside record of what
    finished (Slurm's accounting) also has `settle(now) -> int`, run after each tick's
    charges, which makes the ledger agree with that record, and one with a queue may have
    `hold_pending(now) -> (held, released)`: at zero, queued work does not start."""

    name: str  # the ledger's `source`: lab | job | app

    async def running(self) -> list[Running]: ...

    async def stop(self, consumer: str, user: str, reason: str) -> bool:
        """Stop the run `consumer` names; False when it had ended already (nothing to
        stop, and no stop to record: the user stopped it herself)."""
        ...


@dataclass
class TickReport:
    charged: int = 0
    opened: int = 0
    closed: int = 0
    stopped: list[str] = field(default_factory=list)
    settled: int = 0  # finished consumers charged from an outside record (Slurm's sacct)
    settle_seconds: float = 0.0
    held: int = 0  # queued work held at zero, and released once the balance pays again
    released: int = 0
    seconds: float = 0.0  # the whole tick
    # After the tick, in a thread (Meter.between_ticks): posting, downsampling, the WAL copy
    posted: int = 0  # journal rows posted to the history
    post_seconds: float = 0.0
    merged: int = 0  # raw GPU readings past 24 h merged into hourly rows
    tidy_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    sampled: int = 0  # GPU sessions whose utilisation this tick read (quota/utilisation.py)
    sample_seconds: float = 0.0  # reading it and recording it
    # GPU-hours of this tick's readings under utilisation.IDLE_PERCENT, per account
    idle_gpu_hours: dict[str, float] = field(default_factory=dict)
    reclaim: ReclaimReport | None = None  # idle GPU sessions warned, cleared, stopped


class Meter:
    def __init__(
        self,
        ledger: Ledger,
        sources: list[UsageSource],
        grace_seconds: float,
        post_slices: int = 16,
        sample_seconds: float = 15.0,
        reclaim: Reclaim | None = None,
    ):
        self.ledger = ledger
        self.reclaim = reclaim  # idle GPU reclaim (quota/reclaim.py), when the site has it
        self.sources = {s.name: s for s in sources}
        self.grace = grace_seconds
        # After each tick the journal rows of the next 1/post_slices of the users (in name
        # order, round and round) are posted: each user's rows wait about that many ticks and
        # then fill index pages together, and no round posts them all at once.
        self.post_slices = post_slices
        self._posted_to = ""  # the last user posted: the next slice starts after them
        self.sample_seconds = sample_seconds  # the interval: what one GPU reading stands for
        self._sampled_at: float | None = None
        self._ticked: tuple[float, int] | None = None  # the last tick's time, users running

    async def tick(self, now: float | None = None) -> TickReport:
        t0 = time.perf_counter()
        report = TickReport()
        # What is open before the sources are asked: a consumer the hub opens while they
        # answer is not in their lists, and must not be taken for one that vanished.
        open_ = {c.id: c for c in self.ledger.open_consumers() if c.source in self.sources}
        seen: dict[str, Running] = {}
        failed: set[str] = set()
        sources = list(self.sources.values())
        # Together: sources that read the same hub listing share one request (HubAPI).
        answers = await asyncio.gather(*(s.running() for s in sources), return_exceptions=True)
        for source, answer in zip(sources, answers, strict=True):
            if isinstance(answer, BaseException):
                # A source that can't answer must not close its consumers.
                log.warning("usage source %s unavailable: %s", source.name, answer)
                failed.add(source.name)
                continue
            for r in answer:
                seen[r.consumer] = r
        now = time.time() if now is None else now

        new = [r for r in seen.values() if r.consumer not in open_ and r.started <= now]
        # One transaction for all first sightings: a meter starting over 1,000 sessions.
        accounts = {r.user: self.ledger.account_for(r.user, r.groups) for r in new}
        self.ledger.set_accounts(accounts)
        report.opened = self.ledger.open_many(
            [
                {"consumer": r.consumer, "user": r.user, "account": accounts[r.user],
                 "source": r.source, "started": r.started, "rates": r.rates,
                 "profile": r.profile}
                for r in new
            ]
        )  # fmt: skip
        marks = {cid: now for cid in seen}
        # Gone without the hub telling us when: close at the last mark (at most one
        # interval uncharged, never one charged that did not run).
        gone = [c for cid, c in open_.items() if cid not in seen and c.source not in failed]
        marks.update({c.id: c.charged_until for c in gone})
        report.charged = self.ledger.charge(marks, close=[c.id for c in gone])
        report.closed = len(gone)
        t_sample = time.perf_counter()
        charged_to = {c.id: c.account for c in open_.values()}
        charged_to.update({r.consumer: accounts[r.user] for r in new})
        # What the ledger says of the consumers open before the tick: read once, above.
        known = {c.id: (c.account, c.gpu_rate) for c in open_.values()}
        report.sampled = await self._read_gpus(seen, now, charged_to, report.idle_gpu_hours, known)
        report.sample_seconds = time.perf_counter() - t_sample

        report.stopped = await self._enforce(seen, now)
        if self.reclaim is not None:  # what enforcement stopped is not reclaimed too
            running = {c: r for c, r in seen.items() if c not in report.stopped}
            report.reclaim = await self.reclaim.tick(running, self.sources, now)

        t_settle = time.perf_counter()
        for source in sources:
            settle = getattr(source, "settle", None)
            if settle is None:
                continue
            try:
                report.settled += await settle(now)
            except Exception as e:  # sacct down: the next tick reads the same window again
                log.warning("usage source %s could not settle finished work: %s", source.name, e)
        report.settle_seconds = time.perf_counter() - t_settle
        for source in sources:  # at zero, queued work waits (Slurm: pending jobs held)
            hold = getattr(source, "hold_pending", None)
            if hold is None:
                continue
            try:
                report.held, report.released = await hold(now)
            except Exception as e:
                log.warning("usage source %s could not hold or release work: %s", source.name, e)

        self._ticked = (now, len({r.user for r in seen.values()}))
        report.seconds = time.perf_counter() - t0
        return report

    def between_ticks(self, report: TickReport | None = None) -> None:
        """What the quota service runs after each tick, in a thread off its event loop
        (service.run_meter): post the next slice of the journal to the charges, merge a few
        sessions' hour of GPU readings past 24 h into hourly rows (utilisation.tidy), and
        copy the WAL back into the database file (Ledger.checkpoint). Bookkeeping that must
        go on, but at no given instant: out of the tick, which the loop waits on (issue 15).
        Each step is its own transaction: a crash between them leaves the journal rows
        where every read finds them and the readings to merge at the next round.
        REPORT (the tick's): gets what was posted and merged, and the time it took."""
        report = report if report is not None else TickReport()
        now, running = self._ticked if self._ticked is not None else (time.time(), 0)
        t0 = time.perf_counter()
        size = max(1, math.ceil(running / self.post_slices))
        users = self.ledger.journal_users(after=self._posted_to, limit=size)
        if len(users) < size:  # past the last name: round again from the first
            users += self.ledger.journal_users(limit=size - len(users))
        self._posted_to = users[-1] if users else ""
        report.posted = self.ledger.post(sorted(set(users)))
        t1 = time.perf_counter()
        report.post_seconds = t1 - t0
        with self.ledger._write() as conn:
            report.merged, _ = utilisation.tidy(conn, now)
        t2 = time.perf_counter()
        report.tidy_seconds = t2 - t1
        self.ledger.checkpoint()
        report.checkpoint_seconds = time.perf_counter() - t2

    async def _read_gpus(
        self, seen: dict[str, Running], now: float, charged_to: dict[str, str],
        idle: dict[str, float], known: dict[str, tuple[str, float]] | None = None,
    ) -> int:  # fmt: skip
        """Record the GPU sessions' utilisation, read by their sources (NVML on the node,
        Slurm's accounting: never the sessions themselves); its history is tidied between
        ticks (`between_ticks`). Adds the
        idle GPU-hours read to `idle` per account (`charged_to`: each consumer's). KNOWN:
        the ledger's (account, gpu_rate) of consumers read this tick."""
        last, self._sampled_at = self._sampled_at, now
        # What a reading stands for: the time since the last tick, but no more than two
        # intervals (a longer gap stays a gap: utilisation.idle_for does not bridge it).
        seconds = self.sample_seconds if last is None else now - last
        seconds = min(max(seconds, 0.001), 2 * self.sample_seconds)
        samples = []
        for source in self.sources.values():
            read = getattr(source, "utilisation", None)
            runs = [r for r in seen.values()
                    if r.source == source.name and r.rates.get("gpu_hours", 0) > 0]  # fmt: skip
            if read is None or not runs:
                continue
            try:
                readings = await read(runs)
            except Exception as e:  # no reading this tick; charging is not held up
                log.warning("usage source %s could not read GPU utilisation: %s", source.name, e)
                continue
            samples += [
                utilisation.Sample(c, seen[c].user, now, percent, seconds, memory)
                for c, (percent, memory) in readings.items()
            ]
        for s in samples:
            if s.percent < utilisation.IDLE_PERCENT and s.consumer in charged_to:
                gpus = seen[s.consumer].rates.get("gpu_hours", 0)
                account = charged_to[s.consumer]
                idle[account] = idle.get(account, 0.0) + gpus * s.seconds / 3600
        with self.ledger._write() as conn:
            utilisation.record_many(conn, samples, known)
        return len(samples)

    async def _enforce(self, seen: dict[str, Running], now: float) -> list[str]:
        """At zero, after the grace period, stop every consumer of the user."""
        stopped = []
        by_user: dict[str, list[Running]] = {}
        for r in seen.values():
            by_user.setdefault(r.user, []).append(r)
        balances = self.ledger.balances(list(by_user), now, running=False)
        since = self.ledger.mark_exhausted(
            {u: b.state == "exhausted" for u, b in balances.items()}, now
        )
        for user, balance in balances.items():
            if user not in since:
                continue
            balance.exhausted_since = since[user]
            empty = [r for r, rb in balance.resources.items() if rb.remaining == 0]
            for r in by_user[user]:
                if stops_in(balance, r.rates, self.grace, now) != 0:
                    continue
                reason = f"quota exhausted ({', '.join(empty)}) for {int(now - since[user])} s"
                try:
                    if not await self.sources[r.source].stop(r.consumer, user, reason):
                        continue  # it ended since the listing: not a stop at zero
                except Exception as e:
                    log.error("could not stop %s of %s: %s", r.consumer, user, e)
                    continue
                self.ledger.record_stop(user, r.consumer, reason, now)
                stopped.append(r.consumer)
                log.info("stopped %s of %s: %s", r.consumer, user, reason)
        return stopped
