"""The meter, driven tick by tick with explicit `now`s: it opens what it sees run, charges
it, closes what vanished at its last mark, keeps what a failing source can't report, and
stops a user's consumers only after the grace period at zero (a grant lifts that)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from shangzhuang.quota.consumers import Consumer
from shangzhuang.quota.db import Charge
from shangzhuang.quota.ledger import Ledger
from shangzhuang.quota.meter import Meter, Running, TickReport
from tests.unit.quota.conftest import TZ, at, policy

H = 3600.0
T0 = at(2026, 10, 10, 9, 0)
GRACE = 300.0


class FakeSource:
    """Stands in for the hub API (`LabSessions` in quota/service.py): an in-memory list of
    what runs; `failing` makes it raise as an unreachable hub would; `stop` records what the
    meter stopped and takes it off the list, as the hub stopping the server would."""

    def __init__(self, name: str = "lab"):
        self.name = name
        self.items: dict[str, Running] = {}
        self.failing = False
        self.stopped: list[tuple[str, str, str]] = []

    def start(self, user: str, started: float, gpus: float = 0, cores: float = 1,
              groups: tuple[str, ...] = (), server: str = "") -> str:  # fmt: skip
        cid = str(Consumer.session("lab", user, server, started))
        self.items[cid] = Running(
            consumer=cid, user=user, source=self.name, started=started,
            rates={"gpu_hours": gpus, "cpu_hours": cores}, profile="p", groups=groups,
        )  # fmt: skip
        return cid

    def vanish(self, cid: str) -> None:
        del self.items[cid]

    async def running(self) -> list[Running]:
        if self.failing:
            raise ConnectionError("hub API unreachable")
        return list(self.items.values())

    async def stop(self, consumer: str, user: str, reason: str) -> bool:
        self.stopped.append((consumer, user, reason))
        return self.items.pop(consumer, None) is not None  # False: it had ended already


def tick(meter: Meter, now: float) -> TickReport:
    return asyncio.run(meter.tick(now))


def used(ledger: Ledger, user: str, now: float, resource: str = "cpu_hours") -> float:
    """What `user` has been charged for `resource` in the period of `now`."""
    return ledger.totals_used(ledger.period(now).start).get(("user", user, resource), 0.0)


def open_ids(ledger: Ledger) -> list[str]:
    return sorted(c.id for c in ledger.open_consumers())


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def meter(ledger, source) -> Meter:
    return Meter(ledger, [source], grace_seconds=GRACE)


def test_opens_what_it_sees_and_charges_each_tick(ledger, source, meter):
    cid = source.start("dave", T0, cores=4, groups=("physics", "zoo"))
    r = tick(meter, T0 + 60)
    assert (r.opened, r.charged, r.closed, r.stopped) == (1, 1, 0, [])  # cpu only: one row
    [c] = ledger.open_consumers()
    assert (c.id, c.user, c.account, c.source, c.profile) == (cid, "dave", "physics", "lab", "p")
    assert (c.started, c.charged_until, c.cpu_rate, c.gpu_rate) == (T0, T0 + 60, 4, 0)
    assert ledger.account_of("dave") == "physics"  # a hub group that is an account
    assert used(ledger, "dave", T0 + 60, "cpu_hours") == pytest.approx(4 * 60 / H)

    r = tick(meter, T0 + 120)
    assert (r.opened, r.charged) == (0, 1)
    assert used(ledger, "dave", T0 + 120, "cpu_hours") == pytest.approx(4 * 120 / H)
    # A tick at the same time (a restarted meter, a retry) charges nothing more.
    assert tick(meter, T0 + 120).charged == 0
    assert used(ledger, "dave", T0 + 120, "cpu_hours") == pytest.approx(4 * 120 / H)


def test_what_starts_after_now_is_not_opened_yet(ledger, source, meter):
    source.start("dave", T0 + 100)
    assert tick(meter, T0 + 50).opened == 0
    assert ledger.open_consumers() == []
    assert tick(meter, T0 + 150).opened == 1


def test_a_consumer_the_hub_opened_is_charged_not_reopened(ledger, source, meter):
    cid = source.start("bob", T0, gpus=1)
    ledger.open(cid, user="bob", account="physics", source="lab", started=T0,
                rates={"gpu_hours": 1, "cpu_hours": 1})  # fmt: skip
    r = tick(meter, T0 + 600)
    assert (r.opened, r.charged) == (0, 2)
    assert used(ledger, "bob", T0 + 600, "gpu_hours") == pytest.approx(600 / H)


def test_closes_what_vanished_at_its_last_mark(ledger, source, meter):
    gone = source.start("dave", T0, cores=2)
    stays = source.start("erin", T0, cores=2)
    tick(meter, T0 + 60)
    source.vanish(gone)  # died somewhere after T0 + 60; nobody says when
    r = tick(meter, T0 + 75)
    assert (r.closed, r.charged) == (1, 1)  # erin charged; dave closed, not charged
    assert open_ids(ledger) == [stays]
    assert used(ledger, "dave", T0 + 75, "cpu_hours") == pytest.approx(2 * 60 / H)
    assert used(ledger, "erin", T0 + 75, "cpu_hours") == pytest.approx(2 * 75 / H)
    # It does not come back as running; another tick changes nothing for it.
    tick(meter, T0 + 90)
    assert used(ledger, "dave", T0 + 90, "cpu_hours") == pytest.approx(2 * 60 / H)


def test_a_failing_source_does_not_close_its_consumers(ledger, source, meter):
    cid = source.start("dave", T0, cores=1)
    tick(meter, T0 + 60)
    source.failing = True
    r = tick(meter, T0 + 120)
    assert (r.closed, r.charged, r.opened) == (0, 0, 0)
    assert open_ids(ledger) == [cid]
    source.failing = False  # back: still running, charged through the outage
    tick(meter, T0 + 180)
    assert used(ledger, "dave", T0 + 180, "cpu_hours") == pytest.approx(180 / H)
    source.failing = True
    tick(meter, T0 + 240)
    source.vanish(cid)
    source.failing = False  # back, and it is gone: closed at the last mark it was seen
    assert tick(meter, T0 + 300).closed == 1
    assert ledger.open_consumers() == []
    assert used(ledger, "dave", T0 + 300, "cpu_hours") == pytest.approx(180 / H)


def test_only_the_failing_source_keeps_its_consumers(ledger):
    labs, jobs = FakeSource("lab"), FakeSource("job")
    meter = Meter(ledger, [labs, jobs], grace_seconds=GRACE)
    lab = labs.start("dave", T0)
    job = jobs.start("dave", T0, server="job1")
    tick(meter, T0 + 60)
    assert open_ids(ledger) == sorted([lab, job])
    labs.failing = True
    labs.vanish(lab)
    jobs.vanish(job)
    assert tick(meter, T0 + 120).closed == 1
    assert open_ids(ledger) == [lab]


def test_consumers_of_sources_it_does_not_meter_are_left_alone(ledger, source, meter):
    ledger.open("job:dave/1", user="dave", account="default", source="job", started=T0,
                rates={"cpu_hours": 1})  # fmt: skip
    tick(meter, T0 + 60)
    assert open_ids(ledger) == ["job:dave/1"]


def test_enforcement_stops_only_after_the_grace_period_at_zero(ledger, source, meter):
    # bio has 2 gpu_hours; carol runs 1 GPU from T0 and a CPU-only session beside it.
    gpu = source.start("carol", T0, gpus=1, cores=4)
    cpu = source.start("carol", T0, gpus=0, cores=4, server="cpu")
    other = source.start("bob", T0, gpus=1)
    for t in (T0 + H, T0 + 2 * H - 60):
        assert tick(meter, t).stopped == []
    assert ledger.balance("carol", T0 + 2 * H - 60).state == "low"
    zero = T0 + 2 * H
    assert tick(meter, zero).stopped == []
    b = ledger.balance("carol", zero)
    assert b.state == "exhausted" and b.exhausted_since == zero
    assert b.as_dict()["exhausted_since"] == "2026-10-10T11:00:00+08:00"
    assert tick(meter, zero + GRACE - 1).stopped == []
    assert source.stopped == [] and ledger.stops() == []

    r = tick(meter, zero + GRACE)
    assert r.stopped == [gpu]  # the CPU-only session does not burn what ran out
    [(cid, user, reason)] = source.stopped
    assert (cid, user) == (gpu, "carol")
    assert reason == f"quota exhausted (gpu_hours) for {int(GRACE)} s"
    [stop] = ledger.stops("carol")
    assert (stop.consumer, stop.user, stop.reason, stop.at) == (gpu, "carol", reason, zero + GRACE)
    assert ledger.stops("bob") == [] and len(ledger.stops()) == 1
    assert set(source.items) == {cpu, other}

    # The stopped server is gone from the hub: closed at its last mark on the next tick.
    r = tick(meter, zero + GRACE + 15)
    assert r.closed == 1 and r.stopped == []
    assert gpu not in open_ids(ledger)
    assert ledger.balance("carol", zero + GRACE + 15).remaining("gpu_hours") == 0


def test_a_failing_stop_is_not_recorded(ledger, source, meter):
    source.start("carol", T0, gpus=1)

    async def broken(consumer, user, reason):
        raise RuntimeError("hub said 500")

    source.stop = broken
    tick(meter, T0 + 2 * H)
    assert tick(meter, T0 + 2 * H + GRACE).stopped == []
    assert ledger.stops() == []


def test_a_run_that_ended_before_its_stop_is_not_recorded_as_stopped(ledger, source, meter):
    """At zero after the grace, but the run ended between the listing and the stop (the
    user stopped it herself; the source stops nothing and says so): no stop at zero."""
    source.start("carol", T0, gpus=1)

    async def ended_already(consumer, user, reason):
        return False

    source.stop = ended_already
    tick(meter, T0 + 2 * H)
    assert tick(meter, T0 + 2 * H + GRACE).stopped == []
    assert ledger.stops() == []


def test_a_grant_clears_exhaustion(ledger, source, meter):
    cid = source.start("carol", T0, gpus=1)
    zero = T0 + 2 * H
    tick(meter, zero)
    assert ledger.balance("carol", zero).exhausted_since == zero
    ledger.grant(by="admin", account="bio", resource="gpu_hours", amount=1, reason="deadline",
                 now=zero + 100)  # fmt: skip
    b = ledger.balance("carol", zero + 100)
    assert b.exhausted_since is None and b.state == "ok"
    # Past the old grace period: not stopped, the grant pays for another hour.
    assert tick(meter, zero + GRACE + 60).stopped == []
    assert tick(meter, zero + H - 1).stopped == []
    # At zero again: a new grace period from the new zero.
    assert tick(meter, zero + H).stopped == []
    assert ledger.balance("carol", zero + H).exhausted_since == zero + H
    assert tick(meter, zero + H + GRACE - 1).stopped == []
    assert tick(meter, zero + H + GRACE).stopped == [cid]


def test_a_grant_that_leaves_zero_restarts_the_grace_period(ledger, source, meter):
    source.start("carol", T0, gpus=1)
    tick(meter, T0 + 3 * H)  # an hour overdrawn
    ledger.grant(by="admin", account="bio", resource="gpu_hours", amount=0.5, reason="x",
                 now=T0 + 3 * H + 10)  # fmt: skip
    assert tick(meter, T0 + 3 * H + GRACE).stopped == []  # still at zero, counted from now
    assert ledger.balance("carol", T0 + 3 * H + GRACE).exhausted_since == T0 + 3 * H + GRACE


def test_a_period_reset_lifts_exhaustion(ledger, source, meter):
    source.start("carol", at(2026, 10, 31, 20, 0), gpus=1)
    end = at(2026, 10, 31, 22, 0)
    tick(meter, end)
    assert ledger.balance("carol", end).state == "exhausted"
    nov = at(2026, 11, 1)
    r = tick(meter, nov + 60)
    assert r.stopped == []  # 2 hours past zero, but November starts fresh
    b = ledger.balance("carol", nov + 60)
    assert b.state == "ok" and b.exhausted_since is None
    assert b.resources["gpu_hours"].account.used == pytest.approx(60 / H)


def test_a_restarted_meter_charges_from_the_marks(ledger, source, meter, engines):
    cid = source.start("dave", T0, cores=1)
    tick(meter, T0 + 60)
    again = Meter(Ledger(engines(), policy(), TZ), [source], grace_seconds=GRACE)
    r = tick(again, T0 + 90)
    assert (r.opened, r.charged) == (0, 1)
    assert open_ids(ledger) == [cid]
    assert used(ledger, "dave", T0 + 90, "cpu_hours") == pytest.approx(90 / H)


def test_each_tick_posts_the_next_slice_of_users(ledger, source):
    """Four users, 2 slices: after each tick (between ticks, as the service runs it) the
    journal rows of the next 2 users by name are posted, round and round, so every user's
    rows reach the history every other tick; nothing is lost or charged twice on the way.
    The tick itself posts nothing (issue 15: bookkeeping off the event loop)."""
    meter = Meter(ledger, [source], grace_seconds=GRACE, post_slices=2)
    for user in ("erin", "dave", "fay", "gus"):
        source.start(user, T0)
    posted = []
    for i in range(1, 6):
        r = tick(meter, T0 + 15 * i)
        assert r.posted == 0 and ledger.journal_size() == (4 if i == 1 else 6)
        meter.between_ticks(r)
        with ledger.engine.connect() as conn:
            posted.append(sorted(set(conn.scalars(select(Charge.user)))))
        assert r.posted == (2 if i == 1 else 4)  # one row per tick per user (cpu only)
    assert posted[:2] == [["dave", "erin"], ["dave", "erin", "fay", "gus"]]
    assert sorted(ledger.journal_users()) == ["fay", "gus"]  # charged since their slice
    assert len(ledger.usage()) == 20
    for user in ("dave", "erin", "fay", "gus"):
        assert used(ledger, user, T0 + 75) == pytest.approx(75 / H)


def test_old_gpu_readings_are_merged_between_ticks_not_in_them(ledger, source, meter):
    """Downsampling the GPU readings past 24 h (utilisation.tidy) runs between ticks, with
    the posting and the WAL copy (Meter.between_ticks, in a thread in the service): the
    tick leaves them raw, the round after it merges them into one row per hour."""
    from shangzhuang.quota import utilisation

    now = T0 + 2 * 86400
    hour = (now - utilisation.RAW_SECONDS) // H * H - 2 * H  # a whole hour past 24 h
    with ledger._write() as conn:
        for k in range(240):
            utilisation.record(conn, "lab:old/@1", "old", hour + 15 * k, 5.0 + k % 3)

    def rows() -> int:
        with ledger._read() as conn:
            return len(utilisation.recent(conn, "lab:old/@1", hour))

    source.start("dave", now - 60)
    r = tick(meter, now)
    assert (r.merged, rows()) == (0, 240)
    meter.between_ticks(r)
    assert (r.merged, rows()) == (240, 1)
    assert r.tidy_seconds > 0 and r.checkpoint_seconds > 0


def test_a_consumer_the_hub_opens_while_the_sources_answer_is_not_closed(ledger, source, meter):
    """The hub opens a session's consumer at spawn. If that happens after the hub's listing
    was taken but before the meter looks at what is open, the session is in the ledger and
    not in the listing: it must not be closed as vanished (it would never be charged)."""
    listed = source.running

    async def hub_spawns_meanwhile():
        answer = await listed()
        ledger.open("lab:erin/@1", user="erin", account="default", source="lab",
                    started=T0, rates={"cpu_hours": 1})  # fmt: skip
        return answer

    source.running = hub_spawns_meanwhile
    r = tick(meter, T0 + 15)
    assert (r.closed, open_ids(ledger)) == (0, ["lab:erin/@1"])
    source.running = listed
    source.items["lab:erin/@1"] = Running("lab:erin/@1", "erin", "lab", T0, {"cpu_hours": 1})
    assert tick(meter, T0 + 30).charged == 1
    assert used(ledger, "erin", T0 + 30) == pytest.approx(30 / H)


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_the_service_copies_the_wal_back_between_ticks_not_in_them(ledger, source, tmp_path):
    """SQLite: a tick's commits leave its pages in the WAL (a commit checkpoints only past
    db.WAL_PAGES, not at SQLite's 1,000: a tick of 1,000 GPU sessions writes ~2,000), and the
    service's loop (service.run_meter) copies them into the database file once the tick is
    done, off the event loop. Seen in the file alone, copied without its -wal."""
    import shutil
    import sqlite3

    from shangzhuang.quota.db import WAL_PAGES
    from shangzhuang.quota.service import Metrics, run_meter

    path = ledger.engine.url.database
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_PAGES

    def opened_in_the_file() -> list[str]:
        copy = tmp_path / "file-alone.sqlite"
        shutil.copyfile(path, copy)  # the database file without its WAL
        with sqlite3.connect(copy) as db:
            return [r[0] for r in db.execute("SELECT id FROM consumers")]

    ledger.checkpoint()  # the schema: in the file before the tick
    assert opened_in_the_file() == []
    cid = source.start("ann", time.time() - 60, cores=1)
    meter = Meter(ledger, [source], grace_seconds=GRACE)
    tick(meter, time.time())
    assert open_ids(ledger) == [cid]
    assert opened_in_the_file() == []  # the tick's commits left it in the WAL

    async def one_round() -> None:
        service = asyncio.ensure_future(run_meter(meter, 3600, Metrics()))
        for _ in range(100):  # the tick, then the copy in a thread, then a sleep of an hour
            await asyncio.sleep(0.05)
            if opened_in_the_file():
                break
        service.cancel()

    asyncio.run(one_round())
    assert opened_in_the_file() == [cid]
