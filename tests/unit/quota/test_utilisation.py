"""GPU utilisation (quota/utilisation.py): readings kept, how long a session has been idle,
the history downsampled to a bounded size, and the idle share of GPU-hours; on SQLite and
PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from shangzhuang.quota import utilisation as u
from shangzhuang.quota.db import GpuSample

T0 = 1_789_999_200.0  # a whole hour (divisible by 3,600)
LAB = "lab:alice/@1790000000000"


@pytest.fixture
def write(ledger):
    return ledger._write


def test_readings_are_kept_once_clamped_and_read_back_in_order(write):
    with write() as conn:
        u.record(conn, LAB, "alice", T0 + 30, 55.5)
        u.record(conn, LAB, "alice", T0 + 15, 120.0)  # NVML never says more than 100
        u.record(conn, LAB, "alice", T0 + 30, 1.0)  # the same time again: the first stays
        u.record(conn, "lab:bob/@1", "bob", T0 + 15, 3.0)
    with write() as conn:
        assert u.recent(conn, LAB, since=T0) == [(T0 + 15, 100.0), (T0 + 30, 55.5)]
        assert u.recent(conn, LAB, since=T0 + 20) == [(T0 + 30, 55.5)]
        assert u.recent(conn, "lab:nobody/@1", since=0) == []


def test_idle_for_counts_the_newest_run_under_the_threshold(write):
    with write() as conn:
        assert u.idle_for(conn, LAB, 10, now=T0) == 0.0  # no reading: not idle
        for i, p in enumerate([50, 80, 4, 3, 9]):  # every 15 s from T0 + 15
            u.record(conn, LAB, "alice", T0 + 15 * (i + 1), p, seconds=15)
    with write() as conn:
        # Under 10% since the reading at T0 + 45 (the 80% one was T0 + 30).
        assert u.idle_for(conn, LAB, 10, now=T0 + 80) == pytest.approx(35)
        # No further than one interval past the newest reading (T0 + 75): then unknown.
        assert u.idle_for(conn, LAB, 10, now=T0 + 600) == pytest.approx(45)
        # Under 5%: only the newest reading (9%) is not, so not idle at 5.
        assert u.idle_for(conn, LAB, 5, now=T0 + 80) == 0.0
        # Busy at 90: under it since the first reading.
        assert u.idle_for(conn, LAB, 90, now=T0 + 80) == pytest.approx(65)
        u.record(conn, LAB, "alice", T0 + 90, 60, seconds=15)  # busy again
        assert u.idle_for(conn, LAB, 10, now=T0 + 95) == 0.0


def test_a_gap_in_the_readings_ends_an_idle_run(write):
    with write() as conn:
        for t in (15, 30, 45):
            u.record(conn, LAB, "alice", T0 + t, 1, seconds=15)
        # The quota service was down 5 minutes: nobody saw the GPUs then.
        for t in (345, 360):
            u.record(conn, LAB, "alice", T0 + t, 1, seconds=15)
        assert u.idle_for(conn, LAB, 10, now=T0 + 370) == pytest.approx(25)


def test_history_is_downsampled_to_hours_and_pruned_at_a_bounded_size(write):
    step = 300.0  # readings every 5 minutes, over three days
    readings = [(T0 + step * i, 2.0 if i % 3 else 40.0) for i in range(3 * 288 + 1)]
    with write() as conn:
        u.record_many(conn, [u.Sample(LAB, "alice", t, p, step, 1000.0) for t, p in readings])
        before = _sums(conn)
    now = readings[-1][0]
    with write() as conn:
        merged = 0
        for _ in range(20):  # a few hours per tick, as the meter's ticks would
            merged += u.tidy(conn, now)[0]
    with write() as conn:
        rows = conn.execute(select(GpuSample.__table__).order_by(GpuSample.at)).all()
        after = _sums(conn)
    raw = [r for r in rows if r.at >= now - u.RAW_SECONDS]
    hourly = [r for r in rows if r.at < now - u.RAW_SECONDS]
    # The last 24 h stay one row per reading; two days before it are one row an hour.
    assert len(raw) == 24 * 12 + 1
    assert len(hourly) == 2 * 24
    assert merged == len(readings) - len(raw)
    assert all(r.at % 3600 == 0 and r.seconds == 3600 for r in hourly)
    # Each hour keeps its mean, peak, idle time and memory: 4 of 12 readings at 40%.
    assert all(r.percent == pytest.approx((4 * 40 + 8 * 2) / 12) for r in hourly)
    assert all(r.peak == 40 and r.idle_seconds == 8 * step for r in hourly)
    assert all(r.memory_mib == pytest.approx(1000) for r in hourly)
    assert after == pytest.approx(before)  # sums of seconds, idle seconds, weighted percent
    with write() as conn:
        assert u.tidy(conn, now) == (0, 0)  # nothing left to merge
        # 400 days on, everything is past KEEP_SECONDS.
        assert u.tidy(conn, now + u.KEEP_SECONDS + u.RAW_SECONDS + 1)[1] == len(rows)
        assert conn.execute(select(func.count()).select_from(GpuSample)).scalar() == 0


def test_an_hour_of_many_sessions_is_merged_a_few_sessions_per_tick(write):
    sessions = [f"lab:u{i:02d}/@1" for i in range(20)]
    with write() as conn:
        u.record_many(conn, [
            u.Sample(c, "u", T0 + 60 * k, 50.0, 60) for c in sessions for k in range(1, 60)
        ])  # fmt: skip
    now = T0 + 3600 + u.RAW_SECONDS  # just that hour is past 24 h
    with write() as conn:
        counts = [u.tidy(conn, now)[0] for _ in range(4)]
        rows = conn.execute(select(func.count()).select_from(GpuSample)).scalar()
    per_tick = u.SESSIONS_PER_TIDY * 59
    assert counts == [per_tick, per_tick, (20 - 2 * u.SESSIONS_PER_TIDY) * 59, 0]
    assert rows == 20  # one row an hour each


def _sums(conn) -> tuple[float, float, float]:
    g = GpuSample
    row = conn.execute(
        select(func.sum(g.seconds), func.sum(g.idle_seconds), func.sum(g.percent * g.seconds))
    ).one()
    return tuple(row)


def test_efficiency_is_the_share_of_gpu_hours_under_ten_percent(ledger, write):
    ledger.set_account("alice", "physics")
    common = dict(account="physics", source="lab", started=T0)
    ledger.open(LAB, user="alice", rates={"gpu_hours": 2, "cpu_hours": 4}, **common)
    ledger.open("lab:alice/b@1", user="alice", rates={"gpu_hours": 1}, **common)
    with write() as conn:
        # The 2-GPU session: an hour at 3%, then an hour at 60%; the other one hour at 5%.
        u.record(conn, LAB, "alice", T0 + 3600, 3, seconds=3600)
        u.record(conn, LAB, "alice", T0 + 7200, 60, seconds=3600)
        u.record(conn, "lab:alice/b@1", "alice", T0 + 3600, 5, seconds=3600)
    with write() as conn:
        by_user = u.efficiency_by(conn, "user", T0, T0 + 8000)
        by_account = u.efficiency_by(conn, "account", T0, T0 + 8000)
        by_session = u.efficiency_by(conn, "consumer", T0, T0 + 8000)
        early = u.efficiency_by(conn, "user", T0, T0 + 3601, names=["alice"])
    alice = by_user["alice"]
    assert (alice.gpu_hours, alice.idle_gpu_hours) == pytest.approx((5, 3))
    assert alice.idle_share == pytest.approx(0.6)
    assert alice.percent == pytest.approx((2 * 3 + 2 * 60 + 5) / 5)
    assert by_account["physics"].as_dict() == alice.as_dict()  # from gpu_account_hours
    assert by_session[LAB].idle_share == pytest.approx(0.5)
    assert early["alice"].idle_share == 1.0
    assert u.Efficiency().idle_share is None  # nothing sampled: no figure


def test_the_accounts_hours_count_each_reading_once_and_outlive_downsampling(ledger, write):
    """The estate reads gpu_account_hours, written with the readings: the same figures as
    the readings themselves, a reading given twice counted once, kept when the readings
    are merged into hours, and gone after KEEP_SECONDS."""
    ledger.set_account("alice", "physics")
    ledger.open(LAB, user="alice", account="physics", source="lab", started=T0,
                rates={"gpu_hours": 2, "cpu_hours": 4})  # fmt: skip
    with write() as conn:
        for k in range(1, 241):  # two hours, every 30 s: 4% then 40%
            u.record(conn, LAB, "alice", T0 + 30 * k, 4 if k <= 120 else 40, seconds=30)
        u.record(conn, LAB, "alice", T0 + 30, 99, seconds=30)  # again: ignored
        sums = u.efficiency_by(conn, "account", T0, T0 + 3 * 3600)["physics"]
        assert (sums.gpu_hours, sums.idle_gpu_hours) == pytest.approx((4, 2))  # 2 GPUs x 2 h
        from_readings = u.efficiency_by(conn, "user", T0, T0 + 3 * 3600)["alice"]
        assert sums.as_dict() == from_readings.as_dict()
        u.tidy(conn, T0 + 3 * 3600 + u.RAW_SECONDS)
        merged = u.efficiency_by(conn, "account", T0, T0 + 3 * 3600)["physics"]
        assert merged.as_dict() == sums.as_dict()
        u.tidy(conn, T0 + u.KEEP_SECONDS + 4 * 3600)
        assert u.efficiency_by(conn, "account", T0, T0 + 3 * 3600) == {}


def test_a_ticks_readings_given_again_count_once_and_hide_no_other_sessions(ledger, write):
    """record_many finds a tick's repeats by their time: a reading of one session at an
    instant another session already has a reading for is kept and counted, and the whole
    tick given again (a tick run twice) adds nothing."""
    bob = "lab:bob/@1790000000000"
    for user, consumer in (("alice", LAB), ("bob", bob)):
        ledger.set_account(user, "physics")
        ledger.open(consumer, user=user, account="physics", source="lab", started=T0,
                    rates={"gpu_hours": 1})  # fmt: skip
    t = T0 + 15
    with write() as conn:
        u.record_many(conn, [u.Sample(LAB, "alice", t, 50.0, 15.0)])
        tick = [u.Sample(LAB, "alice", t, 99.0, 15.0), u.Sample(bob, "bob", t, 5.0, 15.0)]
        u.record_many(conn, tick)
        u.record_many(conn, tick)
        assert u.recent(conn, LAB, T0) == [(t, 50.0)]  # the first reading stays
        assert u.recent(conn, bob, T0) == [(t, 5.0)]
        hours = u.efficiency_by(conn, "account", T0, T0 + 3600)["physics"]
    assert (hours.gpu_hours, hours.idle_gpu_hours) == pytest.approx((30 / 3600, 15 / 3600))


def test_the_accounts_hours_take_what_the_meter_knows_of_its_consumers(ledger, write):
    """The meter hands record_many the (account, GPUs) of the consumers it read this tick
    (issue 15: no second read of 1,000 consumers); one it does not know is read from the
    ledger: the same hours as without."""
    bob = "lab:bob/@1790000000000"
    for user, consumer, account in (("alice", LAB, "physics"), ("bob", bob, "bio")):
        ledger.set_account(user, account)
        ledger.open(consumer, user=user, account=account, source="lab", started=T0,
                    rates={"gpu_hours": 2})  # fmt: skip
    t = T0 + 15
    with write() as conn:
        tick = [u.Sample(LAB, "alice", t, 5.0, 15.0), u.Sample(bob, "bob", t, 50.0, 15.0)]
        u.record_many(conn, tick, {LAB: ("physics", 2.0)})
        hours = u.efficiency_by(conn, "account", T0, T0 + 3600)
    assert (hours["physics"].gpu_hours, hours["physics"].idle_gpu_hours) == pytest.approx(
        (30 / 3600, 30 / 3600)
    )
    assert (hours["bio"].gpu_hours, hours["bio"].idle_gpu_hours) == pytest.approx((30 / 3600, 0))
