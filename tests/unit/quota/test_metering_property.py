"""Metering as a state machine on a simulated clock: users spawn, stop (the hub tells the
exact end) and crash (nobody tells; the meter finds out), the meter ticks at most a sampling
interval apart, and the meter and the hub restart with new Ledger objects on the same
database. Whatever the order, each consumer is charged no more than it ran and no less than
it ran minus one sampling interval; a stop is charged exactly; the totals are the sums of
the charges; the charges of a consumer never overlap; and all of it whenever the journal is
posted to the ledger. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from shangzhuang.quota.consumers import Consumer as ConsumerId
from shangzhuang.quota.db import Charge, Consumer, JournalEntry, Total, make_engine, migrate
from shangzhuang.quota.ledger import Ledger
from shangzhuang.quota.meter import Meter, Running
from shangzhuang.settings import Quota
from tests.unit.quota.conftest import TZ, at

SAMPLE = 15.0  # seconds between meter ticks, at most
GRACE = 30.0
POST_SLICES = 2  # the meter posts half the users' journal rows each tick
NOV = at(2026, 11, 1)  # the clock starts a few minutes before this reset
USERS = ["alice", "bob", "carol", "dave"]
PROFILES = [
    {"gpu_hours": 0.0, "cpu_hours": 2.0},
    {"gpu_hours": 1.0, "cpu_hours": 4.0},
    {"gpu_hours": 2.0, "cpu_hours": 8.0},
]
# Small allocations so that enforcement stops sessions within a few minutes of clock.
POLICY = Quota.model_validate(
    {
        "period": "monthly",
        "grace_seconds": GRACE,
        "accounts": {
            "default": {},
            "tiny": {"gpu_hours": 0.01, "cpu_hours": 0.05},
            "pool": {"cpu_hours": 0.5},
        },
        "users": {
            "alice": {"account": "pool", "cpu_hours": 0.1},
            "bob": {"account": "pool"},
            "carol": {"account": "tiny"},
        },
    }
)
EPS = 1e-6


@dataclass
class Run:
    user: str
    start: float
    rates: dict[str, float]
    end: float | None = None
    exact: bool = False  # ended by a stop that the ledger was told the time of


class Processes:
    """Stands in for the hub API: what runs now; `stop` is the hub stopping a server for
    the meter, which the spawner then closes in the ledger at that exact time."""

    name = "lab"

    def __init__(self, machine: Metering):
        self.machine = machine
        self.items: dict[str, Running] = {}

    async def running(self) -> list[Running]:
        return list(self.items.values())

    async def stop(self, consumer: str, user: str, reason: str) -> bool:
        self.machine.end(consumer, exact=True)
        return True


class Metering(RuleBasedStateMachine):
    new_url = None  # set by the test: makes an empty database, returns its URL

    def __init__(self):
        super().__init__()
        self.url = type(self).new_url()
        self.engines = []
        self.hub = self.ledger()
        self.source = Processes(self)
        self.meter = Meter(self.ledger(), [self.source], GRACE, post_slices=POST_SLICES)
        self.now = self.last_tick = NOV - 300
        self.runs: dict[str, Run] = {}
        self.hub_state: dict[str, str] = {}  # user -> consumer id (the spawner's state)

    def ledger(self) -> Ledger:
        """A new Ledger with an engine of its own, as a restarted process makes (which would
        migrate too: a no-op, see test_migrations.py, and slow enough to skip here)."""
        engine = make_engine(self.url)
        if not self.engines:
            migrate(engine)
        self.engines.append(engine)
        return Ledger(engine, POLICY, TZ)

    # --- the clock -------------------------------------------------------------------------
    @initialize(before_reset=st.floats(0, 600))
    def set_clock(self, before_reset):
        self.now = self.last_tick = NOV - before_reset

    def advance(self, fraction: float) -> None:
        """Move the clock on, never more than SAMPLE past the last tick."""
        self.now += fraction * (self.last_tick + SAMPLE - self.now)

    @rule(fraction=st.floats(0, 1))
    def elapse(self, fraction):
        self.advance(fraction)

    # --- the hub ---------------------------------------------------------------------------
    @rule(user=st.sampled_from(USERS), profile=st.sampled_from(PROFILES))
    def spawn(self, user, profile):
        cid = str(ConsumerId.session("lab", user, "", self.now))
        if user in self.hub_state or cid in self.runs:  # one server each; ids are unique
            return
        self.hub.set_account(user, self.hub.account_for(user))
        self.hub.open(cid, user=user, account=self.hub.account_of(user), source="lab",
                      started=self.now, rates=profile)  # fmt: skip
        self.runs[cid] = Run(user, self.now, profile)
        self.hub_state[user] = cid
        self.source.items[cid] = Running(cid, user, "lab", self.now, profile)

    def end(self, cid: str, exact: bool) -> None:
        """The process of `cid` ends now; with `exact`, the hub closes it at this time."""
        run = self.runs[cid]
        run.end, run.exact = self.now, exact
        self.source.items.pop(cid, None)
        if exact:
            self.hub.close(cid, self.now)
            self.hub_state.pop(run.user, None)

    def alive(self) -> list[str]:
        return sorted(cid for cid, run in self.runs.items() if run.end is None)

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def stop(self, data):
        user = self.runs[data.draw(st.sampled_from(self.alive()))].user
        self.end(self.hub_state[user], exact=True)

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def crash(self, data):
        self.end(data.draw(st.sampled_from(self.alive())), exact=False)

    @precondition(lambda self: any(self.runs[c].end is not None for c in self.hub_state.values()))
    @rule(data=st.data())
    def hub_finds_it_dead(self, data):
        """The spawner's poll sees the process gone: closed at the last mark (end unknown)."""
        dead = sorted(u for u, c in self.hub_state.items() if self.runs[c].end is not None)
        user = data.draw(st.sampled_from(dead))
        self.hub.close(self.hub_state.pop(user), None)

    @rule()
    def hub_restart(self):
        self.hub = self.ledger()  # hub_state survives: JupyterHub keeps the spawner state

    # --- the meter -------------------------------------------------------------------------
    @rule(fraction=st.floats(0, 1))
    def meter_tick(self, fraction):
        self.advance(fraction)
        asyncio.run(self.meter.tick(self.now))
        self.last_tick = self.now

    @rule()
    def post(self):
        """The journal posted at any moment, by whichever process."""
        self.hub.post()

    @rule()
    def meter_restart(self):
        self.meter = Meter(self.ledger(), [self.source], GRACE, post_slices=POST_SLICES)

    # --- what must hold ----------------------------------------------------------------------
    @invariant()
    def charged_as_run(self):
        with self.hub.engine.connect() as conn:
            charges = sorted(
                [*conn.execute(select(Charge)), *conn.execute(select(JournalEntry))],
                key=lambda c: c.start,
            )
            consumers = {c.id: c for c in conn.execute(select(Consumer))}
            totals = conn.execute(select(Total)).all()
        by_consumer = defaultdict(list)
        for c in charges:
            by_consumer[(c.consumer, c.resource)].append(c)
        assert set(consumers) == set(self.runs)
        for cid, run in self.runs.items():
            row = consumers[cid]
            ran = (self.now if run.end is None else run.end) - run.start
            for resource, rate in run.rates.items():
                rows = by_consumer[(cid, resource)]
                if rate == 0:
                    assert rows == []
                    continue
                # Never overlapping: the charges tile [start, charged_until).
                starts = [c.start for c in rows]
                assert starts == ([run.start] + [c.end for c in rows[:-1]] if rows else [])
                assert (rows[-1].end if rows else run.start) == row.charged_until
                charged = sum(c.amount for c in rows) / rate * 3600
                assert charged <= ran + EPS, (cid, resource, charged, ran)
                assert charged >= ran - SAMPLE - EPS, (cid, resource, charged, ran)
                if run.exact:
                    assert charged == pytest.approx(ran, abs=EPS)
            if run.exact:
                assert row.closed
        sums = defaultdict(float)
        for c in charges:
            sums[(c.period_start, "user", c.user, c.resource)] += c.amount
            sums[(c.period_start, "account", c.account, c.resource)] += c.amount
        table = {(t.period_start, t.kind, t.name, t.resource): t.used for t in totals}
        assert set(table) == set(sums)
        for key, used in table.items():
            assert used == pytest.approx(sums[key], rel=1e-9, abs=1e-12), key

    def teardown(self):
        try:
            # Everyone stops; one more tick closes what crashed: nothing stays open.
            for cid in list(self.hub_state.values()):
                if self.runs[cid].end is None:
                    self.end(cid, exact=True)
            self.meter_tick(0.5)
            self.charged_as_run()
            assert self.hub.open_consumers() == []
        finally:
            for engine in self.engines:
                engine.dispose()


def test_metering_never_overcharges_nor_loses_more_than_a_sample(new_database, db_kind):
    Metering.new_url = staticmethod(new_database)
    run_state_machine_as_test(
        Metering,
        settings=settings(
            max_examples=40 if db_kind == "sqlite" else 20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
