"""The allocation ledger: charges, grants and balances, shared by the hub and the quota service.

Charging is idempotent and crash-safe: a consumer's `charged_until` mark moves in the same
transaction as the charges it covers, and an interval is charged only from the mark on.
Charges go to the journal first and are posted to `charges` a slice of users at a time (see
`post`), so a meter tick costs the same however long the history. Balances read one `totals` row per
limit, however long the history.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import (
    Float,
    String,
    and_,
    bindparam,
    case,
    event,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection, Engine

from shangzhuang.i18n import Message
from shangzhuang.quota.consumers import shown_as
from shangzhuang.quota.db import (
    Cap,
    Charge,
    Consumer,
    Exhaustion,
    Grant,
    JournalEntry,
    Member,
    Stop,
    Total,
    Watermark,
)
from shangzhuang.quota.periods import FOREVER, Period, iso, period_at, split
from shangzhuang.settings import RESOURCES, Profile, Quota

RATE_COLUMN = {"cpu_hours": "cpu_rate", "gpu_hours": "gpu_rate"}


def rates_of(profile: Profile) -> dict[str, float]:
    """What a session of this profile burns per hour: its cores and its GPUs."""
    return {"gpu_hours": float(profile.gpus), "cpu_hours": float(profile.cores)}


class QuotaError(ValueError):
    """Bad input to the ledger (an unknown account, a grant nobody can receive...)."""


@dataclass
class Limit:
    """One limit on one resource this period: an account's pool or a personal cap."""

    allocated: float
    granted: float
    used: float

    @property
    def total(self) -> float:
        return self.allocated + self.granted

    @property
    def remaining(self) -> float:
        return self.total - self.used

    def as_dict(self) -> dict:
        return {
            "allocated": round(self.allocated, 6),
            "granted": round(self.granted, 6),
            "used": round(self.used, 6),
            "remaining": round(self.remaining, 6),
        }


@dataclass
class ResourceBalance:
    resource: str
    account: Limit | None
    personal: Limit | None

    @property
    def binding(self) -> Limit | None:
        """The limit that runs out first."""
        limits = [x for x in (self.personal, self.account) if x is not None]
        return min(limits, key=lambda x: x.remaining) if limits else None

    @property
    def remaining(self) -> float | None:
        b = self.binding
        return None if b is None else max(b.remaining, 0.0)


@dataclass
class Balance:
    """What a user has left this period, per resource; None means not limited."""

    user: str
    account: str
    period: Period
    resources: dict[str, ResourceBalance]
    warn_fraction: float
    tz: str
    exhausted_since: float | None = None
    running: list[dict] = field(default_factory=list)

    def remaining(self, resource: str) -> float | None:
        return self.resources[resource].remaining

    @property
    def state(self) -> str:
        """'exhausted' (a limit at zero), 'low' (under warn_fraction of a limit) or 'ok'."""
        state = "ok"
        for rb in self.resources.values():
            b = rb.binding
            if b is None:
                continue
            if b.remaining <= 1e-9:
                return "exhausted"
            if b.total > 0 and b.remaining < self.warn_fraction * b.total:
                state = "low"
        return state

    def can_afford(self, rates: dict[str, float], hours: float) -> list[str]:
        """The resources that can't pay `hours` at `rates`; empty when all can."""
        short = []
        for r, rate in rates.items():
            left = self.remaining(r)
            if rate > 0 and left is not None and left < rate * hours - 1e-9:
                short.append(r)
        return short

    def as_dict(self) -> dict:
        return {
            "user": self.user,
            "account": self.account,
            "state": self.state,
            "period": {
                "start": iso(self.period.start, self.tz),
                "resets_at": iso(self.period.end, self.tz),
            },
            "resources": {
                r: {
                    "remaining": None if rb.remaining is None else round(rb.remaining, 6),
                    "account": rb.account.as_dict() if rb.account else None,
                    "personal": rb.personal.as_dict() if rb.personal else None,
                }
                for r, rb in self.resources.items()
            },
            "exhausted_since": iso(self.exhausted_since, self.tz) if self.exhausted_since else None,
            "running": self.running,
        }


class Ledger:
    """Reads and writes the quota database under one site policy (`[quota]` of the config)."""

    def __init__(self, engine: Engine, policy: Quota, tz: str = "UTC"):
        self.engine = engine
        self.policy = policy
        self.tz = tz
        if engine.dialect.name == "sqlite":
            _sqlite_explicit_transactions(engine)

    # --- transactions --------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction that holds the write lock from its start (no lost updates)."""
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def checkpoint(self) -> None:
        """SQLite: copy the WAL's pages into the database file, waiting for nobody (PASSIVE).
        The quota service does it between meter ticks, off its event loop, so that no tick's
        commit does (db.WAL_PAGES). Nothing to do on PostgreSQL."""
        if self.engine.dialect.name != "sqlite":
            return
        conn = self.engine.raw_connection()  # outside any transaction: SQLite wants none
        try:
            conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def period(self, now: float | None = None) -> Period:
        return period_at(time.time() if now is None else now, self.policy.period, self.tz)

    # --- accounts ------------------------------------------------------------------------
    def account_for(self, user: str, groups: Iterable[str] = ()) -> str:
        """A user's account: set in the config, else a hub group named like an account,
        else the default account."""
        configured = self.policy.users.get(user)
        if configured and configured.account:
            return configured.account
        for g in sorted(groups):
            if g in self.policy.accounts:
                return g
        return self.policy.default_account

    def set_account(self, user: str, account: str) -> None:
        """Charge `user` to `account` from now on (called at spawn and by the meter)."""
        if account not in self.policy.accounts:
            raise QuotaError(f"unknown account {account!r}")
        with self._write() as conn:
            row = conn.execute(select(Member.account).where(Member.user == user)).first()
            if row is None:  # the hub and the meter may both insert a new user at once
                stmt = _insert(conn, Member.__table__).values(user=user, account=account)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["user"], set_={"account": stmt.excluded.account}
                    )
                )
            elif row.account != account:
                conn.execute(update(Member).where(Member.user == user).values(account=account))

    def set_accounts(self, accounts: dict[str, str]) -> None:
        """`set_account` for many users in one transaction (the meter's first sight of them)."""
        unknown = sorted(set(accounts.values()) - set(self.policy.accounts))
        if unknown:
            raise QuotaError(f"unknown account {unknown[0]!r}")
        if not accounts:
            return
        with self._write() as conn:
            known = dict(
                conn.execute(
                    select(Member.user, Member.account).where(Member.user.in_(list(accounts)))
                ).all()
            )
            changed = {u: a for u, a in accounts.items() if known.get(u) != a}
            if not changed:
                return
            stmt = _insert(conn, Member.__table__)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["user"], set_={"account": stmt.excluded.account}
                ),
                [{"user": u, "account": a} for u, a in sorted(changed.items())],
            )

    def account_of(self, user: str, conn: Connection | None = None) -> str:
        if conn is None:
            with self._read() as conn:
                return self.account_of(user, conn)
        row = conn.execute(select(Member.account).where(Member.user == user)).first()
        return row.account if row else self.account_for(user)

    def users(self, conn: Connection | None = None) -> list[str]:
        """Every user the ledger knows: configured, members, or charged."""
        if conn is None:
            with self._read() as conn:
                return self.users(conn)
        names = set(self.policy.users) | set(conn.scalars(select(Member.user)))
        return sorted(names)

    # --- metering ------------------------------------------------------------------------
    def open(
        self,
        consumer: str,
        *,
        user: str,
        account: str,
        source: str,
        started: float,
        rates: dict[str, float],
        profile: str = "",
    ) -> bool:
        """Start metering a consumer from `started` (idempotent: True only the first time)."""
        with self._write() as conn:
            if conn.execute(select(Consumer.id).where(Consumer.id == consumer)).first():
                return False
            # The hub (at spawn) and the meter (seeing it run) may open it at once.
            done = conn.execute(
                _insert(conn, Consumer.__table__).values(
                    id=consumer, user=user, account=account, source=source, profile=profile,
                    cpu_rate=rates.get("cpu_hours", 0.0), gpu_rate=rates.get("gpu_hours", 0.0),
                    started=started, charged_until=started, closed=False,
                ).on_conflict_do_nothing(index_elements=["id"]).returning(Consumer.id)
            )  # fmt: skip
            return done.first() is not None

    def open_many(self, consumers: list[dict]) -> int:
        """`open` for many consumers in one transaction; returns how many were new.

        Each dict has the keyword arguments of `open` plus `consumer`."""
        if not consumers:
            return 0
        with self._write() as conn:
            ids = [c["consumer"] for c in consumers]
            have = set(conn.scalars(select(Consumer.id).where(Consumer.id.in_(ids))))
            rows = [
                dict(
                    id=c["consumer"], user=c["user"], account=c["account"], source=c["source"],
                    profile=c.get("profile", ""), cpu_rate=c["rates"].get("cpu_hours", 0.0),
                    gpu_rate=c["rates"].get("gpu_hours", 0.0), started=c["started"],
                    charged_until=c["started"], closed=False,
                )
                for c in consumers
                if c["consumer"] not in have
            ]  # fmt: skip
            if rows:
                stmt = _insert(conn, Consumer.__table__).on_conflict_do_nothing(
                    index_elements=["id"]
                )
                conn.execute(stmt, rows)
            return len(rows)

    def charge(self, marks: dict[str, float | None], close: Iterable[str] = ()) -> int:
        """Charge each open consumer in `marks` up to its time; close those in `close`.

        One transaction for the lot: a crash loses nothing that was not yet committed,
        and the next call charges from the old marks. Returns the number of charge rows.
        A meter tick charges every consumer it saw running up to the same time: those
        whose span lies in one period are charged together, a few statements for all of
        them (`_charge_together`); the others (gone, or a span across a reset) one by one.
        """
        if not marks:
            return 0
        close = set(close) & set(marks)
        counts = Counter(u for u in marks.values() if u is not None)
        until = counts.most_common(1)[0][0] if counts else None
        together = [cid for cid, u in marks.items() if until is not None and u == until]
        one_by_one = [cid for cid, u in marks.items() if until is None or u != until]
        c = Consumer.__table__.c
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # SQLite's write transaction already holds the lock. Here, a concurrent
                # charge of the same consumer (the hub's close) waits, then reads the mark
                # this one moved; one lock order (by id): no deadlock.
                conn.execute(
                    select(c.id).where(c.id.in_(list(marks))).order_by(c.id).with_for_update()
                ).all()
            which = c.id.in_(one_by_one)
            if together:
                start = self.period(until).start  # before it: the span is cut at the reset
                which = or_(which, and_(c.id.in_(together), c.charged_until < start))
            rows = conn.execute(
                select(Consumer.__table__).where(which, c.closed.is_(False)).order_by(c.id)
            ).all()
            charged = self._charge_each(conn, rows, marks)
            if together:
                charged += self._charge_together(conn, together, until, start)
            if close:
                conn.execute(
                    update(Consumer)
                    .where(c.id.in_(sorted(close)), c.closed.is_(False))
                    .values(closed=True)
                )
            return charged

    def _charge_each(self, conn: Connection, rows: list, marks: dict[str, float | None]) -> int:
        """Charge these consumers (rows of `consumers`) one by one up to their marks, each
        span cut at period boundaries. Returns the number of charge rows."""
        charges, totals = [], defaultdict(float)
        moved = []
        pieces: dict[tuple[float, float], list] = {}  # consumers gone at once share a span
        for c in rows:
            until = marks[c.id]
            if until is None:  # end unknown: close at the last mark, charge nothing more
                until = c.charged_until
            if until <= c.charged_until:
                continue
            span = (c.charged_until, until)
            if span not in pieces:
                pieces[span] = split(*span, self.policy.period, self.tz)
            for start, end, period in pieces[span]:
                for resource, col in RATE_COLUMN.items():
                    rate = getattr(c, col)
                    if rate <= 0:
                        continue
                    amount = rate * (end - start) / 3600.0
                    charges.append(
                        dict(
                            consumer=c.id, user=c.user, account=c.account,
                            resource=resource, source=shown_as(c.source, c.profile),
                            start=start, end=end,
                            amount=amount, period_start=period.start,
                        )
                    )  # fmt: skip
                    totals[(period.start, "user", c.user, resource)] += amount
                    totals[(period.start, "account", c.account, resource)] += amount
            moved.append({"cid": c.id, "until": until})
        if charges:
            conn.execute(JournalEntry.__table__.insert(), charges)
        self._add_totals(conn, totals, "used")
        if moved:
            t = Consumer.__table__
            conn.execute(
                t.update().where(t.c.id == _bind("cid")).values(charged_until=_bind("until")),
                moved,
            )
        return len(charges)

    def _charge_together(self, conn: Connection, ids: list[str], until: float, start: float) -> int:
        """Charge the open consumers `ids` from their marks (at or after `start`, the
        period's start) up to `until`, all in that period: the journal rows, the totals and
        the marks in set-wise statements, the same rows and sums `_charge_each` makes
        without a row through Python (1,000 sessions a tick: ~27 -> ~10 ms CPU, issue 15).
        Returns the number of charge rows."""
        c = Consumer.__table__.c
        due = and_(
            c.id.in_(ids), c.closed.is_(False), c.charged_until < until, c.charged_until >= start
        )
        source = case((and_(c.source == "job", c.profile != ""), "lab"), else_=c.source)
        journal = JournalEntry.__table__
        cols = ["consumer", "user", "account", "resource", "source", "start", "end", "amount",
                "period_start"]  # fmt: skip
        t = Total.__table__
        charged = 0
        for resource, col in RATE_COLUMN.items():
            amount = c[col] * (literal(until, Float) - c.charged_until) / literal(3600.0, Float)
            rows = select(
                c.id, c.user, c.account, literal(resource, String), source, c.charged_until,
                literal(until, Float), amount, literal(start, Float),
            ).where(due, c[col] > 0)  # fmt: skip
            insert = journal.insert().from_select(cols, rows)
            # (rowcount of an INSERT: psycopg's driver has it only when asked to keep it)
            charged += conn.execute(insert.execution_options(preserve_rowcount=True)).rowcount
        # Accounts before users, each in name order: the lock order of `_add_totals`.
        for kind, name in (("account", c.account), ("user", c.user)):
            for resource, col in RATE_COLUMN.items():
                amount = c[col] * (literal(until, Float) - c.charged_until) / literal(3600.0, Float)
                sums = (
                    select(
                        literal(start, Float), literal(kind, String), name,
                        literal(resource, String), func.sum(amount), literal(0.0, Float),
                    )
                    .where(due, c[col] > 0)
                    .group_by(name)
                    .order_by(name)
                )  # fmt: skip
                stmt = _insert(conn, t).from_select(
                    ["period_start", "kind", "name", "resource", "used", "granted"], sums
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["period_start", "kind", "name", "resource"],
                        set_={"used": t.c.used + stmt.excluded.used},
                    )
                )
        conn.execute(update(Consumer).where(due).values(charged_until=until))
        return charged

    def post(self, users: list[str] | None = None) -> int:
        """Move journal rows (of `users`, or all) to `charges` in (user, start) order.

        One transaction: a crash leaves them in the journal, where every read still finds
        them. Together and sorted, a user's rows share the leaf pages of the per-user index,
        where the meter, row by row, would touch a page per running user per tick.
        Returns how many rows moved.
        """
        if users is not None and not users:
            return 0
        j, c = JournalEntry.__table__, Charge.__table__
        which = j.c.user.in_(users) if users is not None else true()
        cols = [col.name for col in j.columns if col.name != "id"]
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Nobody adds to the journal between the copy and the delete (SQLite's write
                # transaction already holds the lock); readers go on.
                conn.exec_driver_sql("LOCK TABLE journal IN EXCLUSIVE MODE")
            rows = select(*(j.c[n] for n in cols)).where(which).order_by(j.c.user, j.c.start)
            conn.execute(c.insert().from_select(cols, rows))
            return conn.execute(j.delete().where(which)).rowcount

    def journal_users(self, after: str = "", limit: int | None = None) -> list[str]:
        """Users with rows in the journal, by name, after `after`: the meter's next slice."""
        with self._read() as conn:
            q = (
                select(JournalEntry.user)
                .distinct()
                .where(JournalEntry.user > after)
                .order_by(JournalEntry.user)
            )
            return list(conn.scalars(q.limit(limit) if limit else q))

    def journal_size(self) -> int:
        """Charge rows waiting in the journal to be posted."""
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(JournalEntry)).scalar_one()

    def close(self, consumer: str, end: float | None) -> None:
        """The consumer stopped at `end` (exact, from the spawner): charge up to it and close.

        `end=None`: it died at an unknown time; close it at its last charged mark.

        An exact end that comes late (the hub's close queued while the quota service was
        down) finds the consumer already closed by the meter at its last mark, as vanished:
        it is charged on up to `end` all the same, so the outage loses no charge. A job
        settled from Slurm's accounting is not reopened: its charges are exact and final."""
        if end is not None:
            with self._write() as conn:
                conn.execute(
                    update(Consumer)
                    .where(Consumer.id == consumer, Consumer.closed.is_(True),
                           Consumer.reconciled.is_(False), Consumer.charged_until < end)
                    .values(closed=False)
                )  # fmt: skip
        self.charge({consumer: end}, close=[consumer])

    def settle(self, jobs: list) -> int:
        """Charge finished jobs exactly what Slurm's accounting recorded, once each.

        `jobs` are `accounting.FinishedJob`s. A job the meter never saw is charged its
        whole run; one it sampled gets correction rows (possibly negative) that bring its
        charges to the exact amount per period and resource. Either way its consumer is
        closed and marked reconciled in the same transaction, so settling it again (or the
        meter seeing it again) charges nothing. Returns how many jobs were settled now.
        """
        if not jobs:
            return 0
        with self._write() as conn:
            known = {}
            ids = sorted({j.consumer for j in jobs})
            for i in range(0, len(ids), 500):
                for c in conn.execute(
                    select(Consumer).where(Consumer.id.in_(ids[i : i + 500])).with_for_update()
                ):
                    known[c.id] = c
            new_users = sorted({j.user for j in jobs if j.consumer not in known})
            members = dict(conn.execute(_MEMBERS, {"users": new_users}).all()) if new_users else {}
            charges, totals, opened, settled = [], defaultdict(float), [], []
            done = set()
            for j in jobs:
                c = known.get(j.consumer)
                if (c is not None and c.reconciled) or j.consumer in done:
                    continue
                done.add(j.consumer)
                rates = dict(j.rates)
                if "gpu_hours" not in rates:  # a Slurm that does not account gres/gpu:
                    rates["gpu_hours"] = c.gpu_rate if c is not None else 0.0  # as sampled
                exact = self._pieces(j.start, j.end, rates)
                if c is None:  # never sampled: its whole run, as the meter would charge it
                    user, account = j.user, members.get(j.user) or self.account_for(j.user)
                    shown = "job"
                    rows = [(s, e, p, r, a) for (p, r), (s, e, a) in exact.items()]
                    opened.append(
                        dict(id=j.consumer, user=user, account=account, source="job",
                             profile="", started=j.start, charged_until=j.end, closed=True,
                             reconciled=True, cpu_rate=rates["cpu_hours"],
                             gpu_rate=rates["gpu_hours"])
                    )  # fmt: skip
                else:
                    user, account = c.user, c.account
                    shown = shown_as(c.source, c.profile)  # corrections go where it was shown
                    rates = {"cpu_hours": c.cpu_rate, "gpu_hours": c.gpu_rate}
                    sampled = self._pieces(c.started, c.charged_until, rates)
                    # Corrections sit at the end of everything charged so far (no sampled row
                    # starts there), one per period and resource: the journal's key is unique.
                    at = max(c.charged_until, j.end)
                    rows = []
                    for k, key in enumerate(sorted(set(exact) | set(sampled))):
                        delta = exact.get(key, (0, 0, 0.0))[2] - sampled.get(key, (0, 0, 0.0))[2]
                        if abs(delta) > 1e-12:
                            rows.append((at + k * 1e-3, at + k * 1e-3, key[0], key[1], delta))
                    settled.append(
                        {"cid": j.consumer, "s": j.start, "e": j.end,
                         "cpu": rates["cpu_hours"], "gpu": rates["gpu_hours"]}
                    )  # fmt: skip
                for start, end, period_start, resource, amount in rows:
                    charges.append(
                        dict(consumer=j.consumer, user=user, account=account, resource=resource,
                             source=shown, start=start, end=end, amount=amount,
                             period_start=period_start)
                    )  # fmt: skip
                    totals[(period_start, "user", user, resource)] += amount
                    totals[(period_start, "account", account, resource)] += amount
            if opened:
                conn.execute(Consumer.__table__.insert(), opened)
            if settled:
                t = Consumer.__table__
                conn.execute(
                    t.update()
                    .where(t.c.id == _bind("cid"))
                    .values(started=_bind("s"), charged_until=_bind("e"), cpu_rate=_bind("cpu"),
                            gpu_rate=_bind("gpu"), closed=True, reconciled=True),
                    settled,
                )  # fmt: skip
            if charges:
                conn.execute(JournalEntry.__table__.insert(), charges)
            self._add_totals(conn, totals, "used")
            return len(done)

    def _pieces(self, start: float, end: float, rates: dict[str, float]) -> dict:
        """(period start, resource) -> (start, end, amount) of a run at `rates`."""
        out = {}
        if end <= start:
            return out
        for s, e, period in split(start, end, self.policy.period, self.tz):
            for resource, rate in rates.items():
                if rate > 0:
                    out[(period.start, resource)] = (s, e, rate * (e - s) / 3600.0)
        return out

    def starts(self, consumers: list[str]) -> dict[str, float]:
        """When each of these consumers started, for those the ledger has."""
        out = {}
        with self._read() as conn:
            for i in range(0, len(consumers), 500):
                rows = select(Consumer.id, Consumer.started).where(
                    Consumer.id.in_(consumers[i : i + 500])
                )
                out.update(conn.execute(rows).all())
        return out

    def watermark(self, name: str) -> float | None:
        with self._read() as conn:
            return conn.scalar(select(Watermark.value).where(Watermark.name == name))

    def set_watermark(self, name: str, value: float) -> None:
        with self._write() as conn:
            stmt = _insert(conn, Watermark.__table__).values(name=name, value=value)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"], set_={"value": stmt.excluded.value}
                )
            )

    def open_consumers(self, source: str | None = None) -> list:
        with self._read() as conn:
            # The table's columns, not the ORM entity: its rows cost more to build (the
            # meter reads 1,000 each tick).
            t = Consumer.__table__
            q = select(t).where(t.c.closed.is_(False))
            if source:
                q = q.where(t.c.source == source)
            return list(conn.execute(q).all())

    def _add_totals(self, conn: Connection, totals: dict, column: str) -> None:
        if not totals:
            return
        stmt = _insert(conn, Total.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["period_start", "kind", "name", "resource"],
            set_={column: getattr(Total.__table__.c, column) + getattr(stmt.excluded, column)},
        )
        other = "granted" if column == "used" else "used"
        conn.execute(
            stmt,
            [
                {"period_start": p, "kind": k, "name": n, "resource": r, column: v, other: 0.0}
                for (p, k, n, r), v in sorted(totals.items())  # one lock order: no deadlock
            ],
        )

    # --- grants --------------------------------------------------------------------------
    def grant(
        self,
        *,
        by: str,
        resource: str,
        amount: float,
        reason: str,
        user: str | None = None,
        account: str | None = None,
        now: float | None = None,
    ) -> dict:
        """Top up the current period of an account, or of a user's personal cap."""
        now = time.time() if now is None else now
        if resource not in RESOURCES:
            raise QuotaError(Message("resource must be one of {resources}, not {resource}",
                                     resources=list(RESOURCES), resource=repr(resource)))
        # Messages: the operator's CLI and the usage page show them in their reader's words.
        if not amount > 0:
            raise QuotaError(Message("amount must be a positive number of hours"))
        if not reason.strip():
            raise QuotaError(Message("reason must say why the grant is made"))
        if (user is None) == (account is None):
            raise QuotaError(Message("give exactly one of user or account"))
        if account is not None and account not in self.policy.accounts:
            raise QuotaError(Message("unknown account {account}", account=repr(account)))
        if user is not None:
            cap = self.policy.users.get(user)
            has_cap = resource in self.caps(user) or (cap and getattr(cap, resource) is not None)
            if not has_cap:
                raise QuotaError(Message(
                    "{user} has no personal cap on {resource}: grant to their account "
                    "({account}) instead", user=user, resource=resource,
                    account=self.account_of(user)))  # fmt: skip
        kind, name = ("user", user) if user is not None else ("account", account)
        period = self.period(now)
        with self._write() as conn:
            gid = conn.execute(
                Grant.__table__.insert().values(
                    at=now, by=by, kind=kind, name=name, resource=resource, amount=amount,
                    reason=reason, period_start=period.start,
                )
            ).inserted_primary_key[0]  # fmt: skip
            self._add_totals(conn, {(period.start, kind, name, resource): amount}, "granted")
            # Whoever the grant lifts above zero leaves the grace period; the meter
            # puts back anyone still at zero on its next tick.
            lifted = (
                Exhaustion.user == user
                if user is not None
                else Exhaustion.user.in_(select(Member.user).where(Member.account == account))
            )
            conn.execute(Exhaustion.__table__.delete().where(lifted))
        return {
            "id": gid, "at": iso(now, self.tz), "by": by, kind: name, "resource": resource,
            "amount": amount, "reason": reason,
        }  # fmt: skip

    # --- personal caps set by managers -------------------------------------------------
    def caps(self, user: str) -> dict[str, float]:
        """The caps managers set for `user` (resource -> hours); the config's are apart."""
        with self._read() as conn:
            return {c.resource: c.hours for c in conn.execute(_CAPS, {"users": [user]})}

    def users_with_caps(self) -> list[str]:
        with self._read() as conn:
            return sorted(set(conn.scalars(select(Cap.user))))

    def set_cap(
        self, user: str, resource: str, hours: float | None, by: str, now: float | None = None
    ) -> None:
        """Set `user`'s personal cap on `resource` (None: remove it). Who may, and up to
        how much, is the caller's rule (the usage page: within the account's pool)."""
        if resource not in RESOURCES:
            raise QuotaError(f"resource must be one of {', '.join(RESOURCES)}, not {resource!r}")
        now = time.time() if now is None else now
        with self._write() as conn:
            t = Cap.__table__
            conn.execute(t.delete().where(t.c.user == user, t.c.resource == resource))
            if hours is not None:
                conn.execute(
                    t.insert().values(user=user, resource=resource, hours=hours, set_by=by, at=now)
                )
            # A raised cap may lift the user above zero: the meter re-marks anyone still there.
            conn.execute(Exhaustion.__table__.delete().where(Exhaustion.user == user))

    # --- balances ------------------------------------------------------------------------
    def balance(self, user: str, now: float | None = None) -> Balance:
        return self.balances([user], now)[user]

    def balances(
        self, users: list[str], now: float | None = None, running: bool = True
    ) -> dict[str, Balance]:
        """Balances of several users at once: a few queries whatever their number.
        `running=False`: without what each one runs (`Balance.running` empty), as the
        meter's enforcement asks every tick."""
        now = time.time() if now is None else now
        period = self.period(now)
        with self._read() as conn:
            members = dict(conn.execute(_MEMBERS, {"users": users}).all())
            accounts = {u: members.get(u) or self.account_for(u) for u in users}
            set_caps: dict[str, dict[str, float]] = defaultdict(dict)
            for c in conn.execute(_CAPS, {"users": users}):
                set_caps[c.user][c.resource] = c.hours
            acct_policy = {a: self.policy.accounts[a].limits() for a in set(accounts.values())}
            user_policy = {}
            for u in users:
                cap = self.policy.users.get(u)
                # a cap a manager set replaces the config's for that resource
                user_policy[u] = {**(cap.limits() if cap else {}), **set_caps[u]}
            # The totals of limits only: an unlimited user's or account's are never read
            # here (1,000 users under one account's pool: 2 rows, not 2,002).
            names = sorted({a for a, p in acct_policy.items() if p} |
                           {u for u, p in user_policy.items() if p})  # fmt: skip
            got = {
                (r.kind, r.name, r.resource): r
                for r in (
                    conn.execute(_TOTALS, {"period": period.start, "names": names})
                    if names
                    else ()
                )
            }
            since = dict(conn.execute(_EXHAUSTED, {"users": users}).all())
            consumers: dict[str, list] = {u: [] for u in users}
            for c in conn.execute(_RUNNING, {"users": users}) if running else ():
                consumers[c.user].append(
                    {"consumer": c.id, "source": c.source, "profile": c.profile,
                     "cost_per_hour": {"cpu_hours": c.cpu_rate, "gpu_hours": c.gpu_rate}}
                )  # fmt: skip
        out = {}
        for user in users:
            account = accounts[user]

            def limit(kind, name, r, policy):
                if r not in policy:
                    return None
                t = got.get((kind, name, r))
                return Limit(policy[r], t.granted if t else 0.0, t.used if t else 0.0)

            resources = {
                r: ResourceBalance(
                    r,
                    limit("account", account, r, acct_policy[account]),
                    limit("user", user, r, user_policy[user]),
                )
                for r in RESOURCES
            }
            out[user] = Balance(
                user, account, period, resources, self.policy.warn_fraction, self.tz,
                exhausted_since=since.get(user), running=consumers[user],
            )  # fmt: skip
        return out

    def accounts_pool(self, now: float | None = None) -> dict[str, dict[str, dict]]:
        """Every account's pool this period: account -> resource -> limit as a dict."""
        period = self.period(now)
        with self._read() as conn:
            got = {
                (r.name, r.resource): r
                for r in conn.execute(
                    select(Total).where(Total.period_start == period.start, Total.kind == "account")
                )
            }
        out = {}
        for name, acct in self.policy.accounts.items():
            out[name] = {}
            for r, allocated in acct.limits().items():
                t = got.get((name, r))
                out[name][r] = Limit(
                    allocated, t.granted if t else 0.0, t.used if t else 0.0
                ).as_dict()
        return out

    def account_pool(self, name: str, now: float | None = None) -> dict:
        period = self.period(now)
        return {
            "account": name,
            "description": self.policy.accounts[name].description,
            "period": {"start": iso(period.start, self.tz), "resets_at": iso(period.end, self.tz)},
            "resources": self.accounts_pool(now)[name],
        }

    # --- enforcement records -------------------------------------------------------------
    def mark_exhausted(self, states: dict[str, bool], now: float) -> dict[str, float]:
        """Record who is at zero (since when, kept from the first tick) and who no longer is.

        Returns user -> since for those at zero: the grace period counts from there.
        """
        with self._write() as conn:
            known = dict(
                conn.execute(select(Exhaustion.user, Exhaustion.since).where(
                    Exhaustion.user.in_(list(states)))).all()
            )  # fmt: skip
            recovered = [u for u, ex in states.items() if not ex and u in known]
            new = [u for u, ex in states.items() if ex and u not in known]
            if recovered:
                conn.execute(Exhaustion.__table__.delete().where(Exhaustion.user.in_(recovered)))
            if new:
                conn.execute(
                    Exhaustion.__table__.insert(), [{"user": u, "since": now} for u in new]
                )
        return {u: known.get(u, now) for u, ex in states.items() if ex}

    def record_stop(self, user: str, consumer: str, reason: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                Stop.__table__.insert().values(at=now, user=user, consumer=consumer, reason=reason)
            )

    def stops(self, user: str | None = None) -> list:
        with self._read() as conn:
            q = select(Stop).order_by(Stop.at)
            if user:
                q = q.where(Stop.user == user)
            return list(conn.execute(q).all())

    # --- history -------------------------------------------------------------------------
    def usage(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list:
        """Charges (posted and still in the journal) overlapping [since, until), by start."""

        def query(t):
            q = select(t)
            if user is not None:
                q = q.where(t.user == user)
            if since is not None:
                q = q.where(t.end > since)
            if until is not None:
                q = q.where(t.start < until)
            order = (t.start, t.consumer, t.resource)
            q = q.order_by(*(o.desc() for o in order) if newest_first else order)
            return q.limit(limit) if limit else q

        with self._read() as conn:
            posted = conn.execute(query(Charge)).all()
            journal = conn.execute(query(JournalEntry)).all()
        rows = heapq.merge(
            posted, journal, key=lambda r: (r.start, r.consumer, r.resource), reverse=newest_first
        )
        return list(itertools.islice(rows, limit or None))

    def grants(self, since_period: float | None = None) -> list:
        with self._read() as conn:
            q = select(Grant).order_by(Grant.at)
            if since_period is not None:
                q = q.where(Grant.period_start >= since_period)
            return list(conn.execute(q).all())

    def totals_used(
        self, period_start: float, users: list[str] | None = None
    ) -> dict[tuple[str, str, str], float]:
        """(kind, name, resource) -> hours used in the period: every user's and account's,
        or only these `users`' (a few rows of the key, not the whole period's)."""
        q = select(Total.kind, Total.name, Total.resource, func.sum(Total.used)).where(
            Total.period_start == period_start
        )
        if users is not None:
            q = q.where(Total.kind == "user", Total.name.in_(users))
        with self._read() as conn:
            rows = conn.execute(q.group_by(Total.kind, Total.name, Total.resource))
            return {(k, n, r): u for k, n, r, u in rows}

    # --- deleted users ---------------------------------------------------------------------
    def set_apart(self, user: str, now: float | None = None) -> str:
        """Keep a deleted user's record apart under a tombstone name, `NAME~deleted-STAMP`:
        their usage, grants, personal totals and account stay for reports, and a new user
        who signs up as NAME starts with none of them. Returns the tombstone name."""
        tomb = f"{user}~deleted-{int(time.time() if now is None else now)}"
        with self._write() as conn:
            for table in (JournalEntry, Charge, Consumer, Member, Exhaustion, Stop, Cap):
                conn.execute(update(table).where(table.user == user).values(user=tomb))
            for table in (Total, Grant):
                conn.execute(
                    update(table).where(table.kind == "user", table.name == user).values(name=tomb)
                )
        return tomb


# The reads of `balances`, built once: a balance is read on every refresh of every Lab's
# status bar, and building a statement costs more than SQLite takes to run it.
def _any_of(column, name: str):
    return column.in_(bindparam(name, expanding=True))


_MEMBERS = select(Member.user, Member.account).where(_any_of(Member.user, "users"))
_TOTALS = select(Total.kind, Total.name, Total.resource, Total.granted, Total.used).where(
    Total.period_start == bindparam("period"),
    Total.kind.in_(("user", "account")),  # kind too, so the whole key is a seek
    _any_of(Total.name, "names"),
)
_CAPS = select(Cap.user, Cap.resource, Cap.hours).where(_any_of(Cap.user, "users"))
_EXHAUSTED = select(Exhaustion.user, Exhaustion.since).where(_any_of(Exhaustion.user, "users"))
_RUNNING = select(
    Consumer.id, Consumer.user, Consumer.source, Consumer.profile, Consumer.cpu_rate,
    Consumer.gpu_rate,
).where(_any_of(Consumer.user, "users"), Consumer.closed.is_(False))  # fmt: skip


def _insert(conn: Connection, table):
    """An INSERT that knows ON CONFLICT (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _bind(name: str):
    return bindparam(name)


def _sqlite_explicit_transactions(engine: Engine) -> None:
    """pysqlite starts transactions lazily and never as IMMEDIATE; take control so that a
    write transaction holds the lock from its first read (the SQLAlchemy-documented recipe)."""
    if getattr(engine, "_sz_tx", False):
        return
    engine._sz_tx = True

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn, _record):
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):
        write = conn.get_execution_options().get("write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


__all__ = ["Balance", "Ledger", "Limit", "QuotaError", "rates_of", "FOREVER"]
