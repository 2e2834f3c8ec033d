"""The allocation ledger on SQLite and PostgreSQL: grants, balances (account pool and personal
cap), charging across a period reset, idempotent charging, and the hub and the quota service
charging the same consumer at once."""

from __future__ import annotations

import math
import threading
from collections import defaultdict

import pytest
from sqlalchemy import select

from shangzhuang.quota.db import Charge, Consumer, Grant, JournalEntry, Member
from shangzhuang.quota.ledger import Ledger, QuotaError
from tests.unit.quota.conftest import TZ, at, policy

H = 3600.0
OCT = at(2026, 10, 1)
NOV = at(2026, 11, 1)
T0 = at(2026, 10, 10, 9, 0)  # a Saturday morning in October, Shanghai time


def use(
    ledger: Ledger, user: str, hours: float, start: float = T0, gpus: float = 1, cores: float = 0
) -> str:
    """Run a session of `user` for `hours` from `start`, charged and closed: its consumer id."""
    cid = f"lab:{user}/@{start}-{hours}-{gpus}-{cores}"
    assert ledger.open(
        cid, user=user, account=ledger.account_for(user), source="lab", started=start,
        rates={"gpu_hours": gpus, "cpu_hours": cores},
    )  # fmt: skip
    ledger.close(cid, start + hours * H)
    return cid


def charges(ledger: Ledger, consumer: str) -> list:
    """A consumer's charge rows, posted or still in the journal, by start."""
    with ledger.engine.connect() as conn:
        rows = [
            *conn.execute(select(Charge).where(Charge.consumer == consumer)),
            *conn.execute(select(JournalEntry).where(JournalEntry.consumer == consumer)),
        ]
    return sorted(rows, key=lambda c: (c.start, c.resource))


def charged_hours(ledger: Ledger, consumer: str, resource: str = "gpu_hours") -> float:
    return sum(c.amount for c in charges(ledger, consumer) if c.resource == resource)


def consumer_row(ledger: Ledger, consumer: str):
    with ledger.engine.connect() as conn:
        return conn.execute(select(Consumer).where(Consumer.id == consumer)).one()


# --- grants ---------------------------------------------------------------------------------
def test_grant_to_an_account_tops_up_its_pool(ledger):
    g = ledger.grant(
        by="admin", account="physics", resource="gpu_hours", amount=5, reason="paper", now=T0
    )
    assert g["account"] == "physics" and g["amount"] == 5 and g["by"] == "admin"
    assert g["reason"] == "paper" and g["at"] == "2026-10-10T09:00:00+08:00"
    assert isinstance(g["id"], int)
    bob = ledger.balance("bob", T0).resources["gpu_hours"]
    assert (bob.account.allocated, bob.account.granted, bob.account.total) == (10, 5, 15)
    assert bob.personal is None and bob.remaining == 15
    # alice's personal cap (4) still binds though her account has 15.
    assert ledger.balance("alice", T0).remaining("gpu_hours") == 4
    [row] = ledger.grants()
    assert (row.kind, row.name, row.by, row.reason) == ("account", "physics", "admin", "paper")
    assert row.amount == 5
    assert row.period_start == OCT and row.at == T0


def test_grant_to_a_user_with_a_personal_cap(ledger):
    ledger.grant(by="admin", user="alice", resource="gpu_hours", amount=2.5, reason="x", now=T0)
    alice = ledger.balance("alice", T0).resources["gpu_hours"]
    assert (alice.personal.allocated, alice.personal.granted) == (4, 2.5)
    assert alice.remaining == 6.5
    assert alice.account.granted == 0  # the pool is untouched
    assert ledger.balance("bob", T0).remaining("gpu_hours") == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(user="bob"), r"bob has no personal cap on gpu_hours: grant to their account "
                           r"\(physics\) instead"),
        (dict(user="alice", resource="cpu_hours"), r"alice has no personal cap on cpu_hours"),
        (dict(user="nobody"), r"nobody has no personal cap on gpu_hours.*\(default\)"),
        (dict(account="nope"), r"unknown account 'nope'"),
        (dict(account="physics", resource="tpu_hours"),
         r"resource must be one of gpu_hours, cpu_hours, not 'tpu_hours'"),
        (dict(account="physics", amount=0), r"amount must be a positive number"),
        (dict(account="physics", amount=-3), r"amount must be a positive number"),
        (dict(account="physics", amount=math.nan), r"amount must be a positive number"),
        (dict(account="physics", reason=""), r"reason must say why"),
        (dict(account="physics", reason="  \n"), r"reason must say why"),
        (dict(account="physics", user="alice"), r"exactly one of user or account"),
        (dict(), r"exactly one of user or account"),
    ],
)  # fmt: skip
def test_refused_grants_say_which_field_and_leave_no_trace(ledger, kwargs, message):
    args = dict(by="admin", resource="gpu_hours", amount=1.0, reason="why") | kwargs
    with pytest.raises(QuotaError, match=message):
        ledger.grant(now=T0, **args)
    assert ledger.grants() == []
    for user in ("alice", "bob"):
        assert ledger.balance(user, T0).resources["gpu_hours"].account.granted == 0


def test_a_grant_counts_in_its_own_period_only(ledger):
    ledger.grant(by="admin", account="bio", resource="gpu_hours", amount=3, reason="x", now=T0)
    use(ledger, "carol", 4, start=T0)  # 2 allocated + 3 granted - 4 used
    assert ledger.balance("carol", T0 + 5 * H).remaining("gpu_hours") == pytest.approx(1)
    nov = ledger.balance("carol", NOV + 60).resources["gpu_hours"]
    assert (nov.account.granted, nov.account.used, nov.remaining) == (0, 0, 2)
    assert nov.account.allocated == 2
    assert [g.period_start for g in ledger.grants(since_period=NOV)] == []
    assert len(ledger.grants(since_period=OCT)) == 1


# --- balances ------------------------------------------------------------------------------
def test_remaining_is_the_smaller_of_personal_and_account_remaining(ledger):
    use(ledger, "alice", 1)
    alice, bob = ledger.balance("alice", T0 + 2 * H), ledger.balance("bob", T0 + 2 * H)
    a = alice.resources["gpu_hours"]
    assert (a.personal.used, a.account.used) == (pytest.approx(1), pytest.approx(1))
    assert a.remaining == pytest.approx(3) and a.binding is a.personal  # personal: 4 - 1
    assert bob.remaining("gpu_hours") == pytest.approx(9)  # the pool: 10 - 1

    use(ledger, "bob", 7, start=T0 + 2 * H)  # the shared pool now has 2 left
    alice, bob = ledger.balance("alice", T0 + 10 * H), ledger.balance("bob", T0 + 10 * H)
    a = alice.resources["gpu_hours"]
    assert a.remaining == pytest.approx(2) and a.binding is a.account
    assert a.personal.remaining == pytest.approx(3)
    assert bob.remaining("gpu_hours") == pytest.approx(2)
    assert alice.account == bob.account == "physics"


def test_members_of_one_account_share_its_pool_of_every_resource(ledger):
    use(ledger, "alice", 2, gpus=1, cores=10)  # 2 gpu_hours, 20 cpu_hours
    use(ledger, "bob", 3, gpus=2, cores=20, start=T0 + H)  # 6 gpu_hours, 60 cpu_hours
    pool = ledger.accounts_pool(T0 + 5 * H)["physics"]
    assert pool["gpu_hours"] == {"allocated": 10, "granted": 0, "used": 8, "remaining": 2}
    assert pool["cpu_hours"] == {"allocated": 100, "granted": 0, "used": 80, "remaining": 20}
    for user in ("alice", "bob"):
        b = ledger.balance(user, T0 + 5 * H)
        assert b.remaining("cpu_hours") == pytest.approx(20)
    assert ledger.balance("alice", T0 + 5 * H).remaining("gpu_hours") == pytest.approx(2)
    assert ledger.totals_used(OCT)[("user", "bob", "gpu_hours")] == pytest.approx(6)
    assert ledger.totals_used(OCT)[("account", "physics", "cpu_hours")] == pytest.approx(80)


def test_a_resource_without_allocation_is_unlimited(ledger):
    use(ledger, "carol", 1, cores=500)  # bio limits gpu_hours only
    carol = ledger.balance("carol", T0 + 2 * H)
    assert carol.remaining("cpu_hours") is None
    assert carol.resources["cpu_hours"].binding is None
    assert carol.as_dict()["resources"]["cpu_hours"] == {
        "remaining": None, "account": None, "personal": None,
    }  # fmt: skip
    dave = ledger.balance("dave", T0)  # nobody configured him: the default account, unlimited
    assert dave.account == "default"
    assert dave.remaining("gpu_hours") is None and dave.remaining("cpu_hours") is None
    assert dave.state == "ok"
    assert dave.can_afford({"gpu_hours": 1000, "cpu_hours": 1000}, 1000) == []


def test_state_ok_low_exhausted_with_warn_fraction(ledger):
    t = T0
    assert ledger.balance("bob", t).state == "ok"
    use(ledger, "bob", 9, start=t)  # 1 of 10 left: exactly 10%, not under it
    assert ledger.balance("bob", t + 10 * H).state == "ok"
    use(ledger, "bob", 0.5, start=t + 10 * H)  # 0.5 of 10 left
    b = ledger.balance("bob", t + 11 * H)
    assert b.state == "low" and b.remaining("gpu_hours") == pytest.approx(0.5)
    use(ledger, "bob", 1, start=t + 11 * H)  # overdrawn by half an hour
    b = ledger.balance("bob", t + 13 * H)
    assert b.state == "exhausted" and b.remaining("gpu_hours") == 0
    assert b.resources["gpu_hours"].account.remaining == pytest.approx(-0.5)
    assert b.as_dict()["state"] == "exhausted"
    # November: alice's personal cap is low before the pool is: 0.3 of 4 left.
    use(ledger, "alice", 3.7, start=NOV + H)
    alice = ledger.balance("alice", NOV + 5 * H)
    assert alice.state == "low" and alice.resources["gpu_hours"].binding.allocated == 4


def test_low_follows_the_configured_warn_fraction(ledger):
    use(ledger, "bob", 7, start=T0)
    assert ledger.balance("bob", T0 + 8 * H).state == "ok"
    wary = Ledger(ledger.engine, policy(warn_fraction=0.5), TZ)
    assert wary.balance("bob", T0 + 8 * H).state == "low"


def test_can_afford(ledger):
    use(ledger, "bob", 8)  # physics has 2 gpu_hours and 100 cpu_hours left
    b = ledger.balance("bob", T0 + 9 * H)
    assert b.can_afford({"gpu_hours": 1, "cpu_hours": 4}, 2) == []
    assert b.can_afford({"gpu_hours": 2, "cpu_hours": 4}, 1.5) == ["gpu_hours"]
    assert b.can_afford({"gpu_hours": 0, "cpu_hours": 60}, 2) == ["cpu_hours"]
    assert b.can_afford({"gpu_hours": 2, "cpu_hours": 60}, 2) == ["gpu_hours", "cpu_hours"]
    use(ledger, "bob", 3, start=T0 + 9 * H)  # gpu overdrawn: a CPU-only session still fits
    b = ledger.balance("bob", T0 + 13 * H)
    assert b.can_afford({"gpu_hours": 0, "cpu_hours": 4}, 1) == []
    assert b.can_afford({"gpu_hours": 1, "cpu_hours": 4}, 0.01) == ["gpu_hours"]


def test_balance_lists_running_consumers_and_the_period(ledger):
    ledger.open(
        "lab:bob/@1", user="bob", account="physics", source="lab", started=T0,
        rates={"gpu_hours": 1, "cpu_hours": 4}, profile="gpu-small",
    )  # fmt: skip
    d = ledger.balance("bob", T0 + 60).as_dict()
    assert d["period"] == {
        "start": "2026-10-01T00:00:00+08:00", "resets_at": "2026-11-01T00:00:00+08:00",
    }  # fmt: skip
    assert d["running"] == [
        {"consumer": "lab:bob/@1", "source": "lab", "profile": "gpu-small",
         "cost_per_hour": {"cpu_hours": 4, "gpu_hours": 1}},
    ]  # fmt: skip
    # The meter's enforcement asks without them: the same balance otherwise.
    lean = ledger.balances(["bob"], T0 + 60, running=False)["bob"].as_dict()
    assert lean == {**d, "running": []}
    ledger.close("lab:bob/@1", T0 + 60)
    assert ledger.balance("bob", T0 + 120).running == []


def test_balances_of_many_users_read_the_totals_of_their_limits(ledger):
    """A user without a limit of their own has no personal figures, whatever their totals
    say; the account's pool and the personal caps count what was charged (only limits'
    totals are read: 1,000 users under one pool read two rows a tick, issue 15)."""
    ledger.set_cap("dan", "cpu_hours", 50, by="admin", now=T0)
    for user in ("alice", "bob", "dan", "erin"):
        use(ledger, user, 1, cores=2)
    got = ledger.balances(["alice", "bob", "dan", "erin"], T0 + 2 * H, running=False)
    assert got["alice"].resources["gpu_hours"].personal.used == pytest.approx(1)
    assert got["alice"].resources["cpu_hours"].personal is None
    assert got["bob"].resources["gpu_hours"].personal is None
    assert got["bob"].resources["gpu_hours"].account.used == pytest.approx(2)  # alice + bob
    assert got["bob"].resources["cpu_hours"].account.used == pytest.approx(4)
    assert got["dan"].resources["cpu_hours"].personal.used == pytest.approx(2)
    assert got["dan"].resources["gpu_hours"].personal is None
    assert got["dan"].resources["gpu_hours"].account is None  # default: not limited
    assert got["erin"].remaining("gpu_hours") is None and got["erin"].state == "ok"
    assert {u: b.as_dict() for u, b in got.items()} == {
        u: ledger.balance(u, T0 + 2 * H).as_dict() for u in got
    }


def test_set_account_moves_future_charges(ledger):
    assert ledger.account_of("dave") == "default"
    ledger.set_account("dave", "bio")
    ledger.set_account("dave", "bio")  # idempotent
    assert ledger.account_of("dave") == "bio"
    assert ledger.balance("dave", T0).resources["gpu_hours"].account.allocated == 2
    with pytest.raises(QuotaError, match="unknown account 'nope'"):
        ledger.set_account("dave", "nope")
    assert "dave" in ledger.users()
    with ledger.engine.connect() as conn:
        assert conn.execute(select(Member.account).where(Member.user == "dave")).scalar() == "bio"


# --- periods -------------------------------------------------------------------------------
def test_a_session_across_the_reset_is_charged_to_both_periods(ledger):
    """Open 22:00 on 31 October, charged at 01:00 and 02:00 on 1 November (Shanghai)."""
    start = at(2026, 10, 31, 22, 0)
    ledger.open(
        "lab:bob/@reset", user="bob", account="physics", source="lab", started=start,
        rates={"gpu_hours": 2, "cpu_hours": 8},
    )  # fmt: skip
    ledger.charge({"lab:bob/@reset": at(2026, 11, 1, 1, 0)})
    ledger.charge({"lab:bob/@reset": at(2026, 11, 1, 2, 0)})
    rows = [(c.resource, c.start, c.end, c.amount, c.period_start) for c in charges(
        ledger, "lab:bob/@reset") if c.resource == "gpu_hours"]  # fmt: skip
    assert rows == [
        ("gpu_hours", start, NOV, pytest.approx(4), OCT),
        ("gpu_hours", NOV, at(2026, 11, 1, 1), pytest.approx(2), NOV),
        ("gpu_hours", at(2026, 11, 1, 1), at(2026, 11, 1, 2), pytest.approx(2), NOV),
    ]
    old = ledger.balance("bob", NOV - 1).resources
    assert old["gpu_hours"].account.used == pytest.approx(4)
    assert old["cpu_hours"].account.used == pytest.approx(16)
    new = ledger.balance("bob", at(2026, 11, 1, 2, 0)).resources
    assert new["gpu_hours"].account.used == pytest.approx(4)  # fresh: only 1 November's 2 hours
    assert new["gpu_hours"].remaining == pytest.approx(6)
    assert new["cpu_hours"].account.used == pytest.approx(16)
    assert ledger.totals_used(OCT)[("user", "bob", "gpu_hours")] == pytest.approx(4)
    assert ledger.totals_used(NOV)[("user", "bob", "gpu_hours")] == pytest.approx(4)


def test_a_weekly_reset_in_berlin_across_the_clock_change(engine):
    tz = "Europe/Berlin"
    ledger = Ledger(engine, policy(period="weekly"), tz)
    start = at(2026, 10, 25, 1, 0, tz=tz)  # Sunday 01:00 CEST; 02:00-03:00 came twice
    monday = at(2026, 10, 26, tz=tz)
    ledger.open(
        "c", user="bob", account="physics", source="lab", started=start,
        rates={"gpu_hours": 1},
    )  # fmt: skip
    ledger.close("c", monday + 3 * H)
    assert [(c.start, c.end, c.period_start) for c in charges(ledger, "c")] == [
        (start, monday, at(2026, 10, 19, tz=tz)),
        (monday, monday + 3 * H, monday),
    ]
    assert ledger.balance("bob", monday + 4 * H).resources["gpu_hours"].account.used == 3
    # 01:00 to midnight on the day the clocks went back: 24 hours, not 23.
    assert ledger.balance("bob", monday - 1).resources["gpu_hours"].account.used == 24


def test_period_none_keeps_counting(engine):
    ledger = Ledger(engine, policy(period="none"), TZ)
    use(ledger, "bob", 3, start=T0)
    use(ledger, "bob", 3, start=at(2027, 6, 1))
    b = ledger.balance("bob", at(2028, 1, 1))
    assert b.remaining("gpu_hours") == pytest.approx(4)
    assert b.as_dict()["period"] == {"start": "1970-01-01T08:00:00+08:00", "resets_at": None}


# --- idempotency ---------------------------------------------------------------------------
def test_charging_the_same_marks_twice_adds_nothing(ledger):
    ledger.open(
        "c", user="bob", account="physics", source="lab", started=T0,
        rates={"gpu_hours": 2, "cpu_hours": 4},
    )  # fmt: skip
    assert ledger.charge({"c": T0 + H}) == 2  # one row per resource
    assert ledger.charge({"c": T0 + H}) == 0
    assert ledger.charge({"c": T0 + H / 2}) == 0  # an older mark: nothing
    assert ledger.charge({"unknown": T0 + H}) == 0
    assert ledger.charge({}) == 0
    assert charged_hours(ledger, "c") == pytest.approx(2)
    assert charged_hours(ledger, "c", "cpu_hours") == pytest.approx(4)
    assert consumer_row(ledger, "c").charged_until == T0 + H
    assert ledger.charge({"c": T0 + 1.5 * H}) == 2
    assert charged_hours(ledger, "c") == pytest.approx(3)
    assert ledger.balance("bob", T0 + 2 * H).resources["gpu_hours"].account.used == 3


def test_open_is_idempotent_and_never_reopens(ledger):
    args = dict(user="bob", account="physics", source="lab", started=T0, rates={"gpu_hours": 1})
    assert ledger.open("c", **args) is True
    assert ledger.open("c", **(args | {"started": T0 + H})) is False
    assert consumer_row(ledger, "c").started == T0
    ledger.close("c", T0 + H)
    assert ledger.open("c", **args) is False
    assert consumer_row(ledger, "c").closed
    assert ledger.open_consumers() == []


def test_close_without_an_end_charges_nothing_more(ledger):
    ledger.open("c", user="bob", account="physics", source="lab", started=T0,
                rates={"gpu_hours": 1})  # fmt: skip
    ledger.charge({"c": T0 + 600})
    ledger.close("c", None)
    row = consumer_row(ledger, "c")
    assert row.closed and row.charged_until == T0 + 600
    assert charged_hours(ledger, "c") == pytest.approx(600 / H)
    # Closed: the meter's charges and unknown ends charge it no more.
    assert ledger.charge({"c": T0 + 1200}) == 0
    ledger.close("c", None)
    assert charged_hours(ledger, "c") == pytest.approx(600 / H)
    assert consumer_row(ledger, "c").charged_until == T0 + 600
    # The hub's exact end, come late (queued while the quota service was down): charged up
    # to it, once, however often it comes.
    ledger.close("c", T0 + 1800)
    ledger.close("c", T0 + 1800)
    ledger.close("c", T0 + 900)
    assert charged_hours(ledger, "c") == pytest.approx(1800 / H)
    row = consumer_row(ledger, "c")
    assert row.closed and row.charged_until == T0 + 1800


def test_close_at_an_exact_end_charges_up_to_it(ledger):
    ledger.open("c", user="bob", account="physics", source="lab", started=T0,
                rates={"gpu_hours": 2, "cpu_hours": 3})  # fmt: skip
    ledger.charge({"c": T0 + 900})
    ledger.close("c", T0 + 1000)
    assert charged_hours(ledger, "c") == pytest.approx(2 * 1000 / H)
    assert charged_hours(ledger, "c", "cpu_hours") == pytest.approx(3 * 1000 / H)
    assert [(c.start, c.end) for c in charges(ledger, "c") if c.resource == "gpu_hours"] == [
        (T0, T0 + 900), (T0 + 900, T0 + 1000),
    ]  # fmt: skip
    assert ledger.open_consumers() == []


def test_charge_and_close_several_in_one_call(ledger):
    for cid in ("a", "b", "c"):
        ledger.open(cid, user="bob", account="physics", source="lab", started=T0,
                    rates={"gpu_hours": 1})  # fmt: skip
    assert ledger.charge({"a": T0 + 60, "b": T0 + 120, "c": None}, close=["b", "c"]) == 2
    assert [c.id for c in ledger.open_consumers()] == ["a"]
    assert [c.id for c in ledger.open_consumers(source="lab")] == ["a"]
    assert ledger.open_consumers(source="job") == []
    assert charged_hours(ledger, "c") == 0


def test_a_tick_charged_together_makes_the_rows_and_sums_of_one_by_one(new_database):
    """`charge` charges the consumers that share a mark within one period in set-wise
    statements (issue 15): the same journal rows (a Slurm job of a Lab session shown as
    "lab"), totals and marks as its one-by-one path (`_charge_each`) makes of the same
    tick. Among them: spans across the reset (cut in two, one by one), one charged before,
    one whose mark is there already, a closed one, one gone (no mark: closed where it is)."""
    from shangzhuang.quota.db import make_engine, migrate

    until = NOV + 900
    opened = [
        ("lab:bob/a", "bob", "physics", "lab", "", T0, {"gpu_hours": 2, "cpu_hours": 8}),
        ("job:8", "carol", "bio", "job", "", T0, {"gpu_hours": 1}),
        ("lab:dan/c", "dan", "default", "lab", "", NOV - 100, {"gpu_hours": 1}),
        ("lab:eve/g", "eve", "default", "lab", "", NOV + 300, {"gpu_hours": 1, "cpu_hours": 2}),
        ("job:9", "carol", "bio", "job", "gpu-1", NOV + 7.5, {"gpu_hours": 1.5}),
        ("lab:bob/h", "bob", "physics", "lab", "", NOV + 100, {"cpu_hours": 4}),
        ("lab:eve/i", "eve", "default", "lab", "", NOV, {"gpu_hours": 1}),
        ("lab:dan/d", "dan", "default", "lab", "", until, {"gpu_hours": 1}),
        ("lab:dan/e", "dan", "default", "lab", "", NOV, {"gpu_hours": 1}),
        ("lab:dan/f", "dan", "default", "lab", "", NOV - 30, {"gpu_hours": 1}),
    ]
    marks = {cid: until for cid, *_ in opened} | {"lab:dan/f": None}

    def tick(ledger: Ledger, together: bool) -> tuple:
        for cid, user, account, source, profile, started, rates in opened:
            ledger.open(cid, user=user, account=account, source=source, profile=profile,
                        started=started, rates=rates)  # fmt: skip
        ledger.charge({"lab:dan/c": NOV - 40, "lab:eve/i": NOV + 450, "lab:dan/e": NOV + 10})
        ledger.charge({"lab:dan/e": NOV + 10}, close=["lab:dan/e"])
        if together:
            n = ledger.charge(marks, close=["lab:dan/f"])
        else:
            with ledger._write() as conn:
                rows = conn.execute(
                    select(Consumer.__table__)
                    .where(Consumer.closed.is_(False))
                    .order_by(Consumer.id)
                ).all()
                n = ledger._charge_each(conn, rows, marks)
            ledger.charge({"lab:dan/f": None}, close=["lab:dan/f"])
        with ledger.engine.connect() as conn:
            journal = sorted(
                (j.consumer, j.user, j.account, j.resource, j.source, j.start, j.end,
                 j.amount, j.period_start)
                for j in conn.execute(select(JournalEntry))
            )  # fmt: skip
            consumers = sorted(
                (c.id, c.charged_until, c.closed) for c in conn.execute(select(Consumer))
            )
        return n, journal, consumers, ledger.totals_used(OCT), ledger.totals_used(NOV)

    ledgers = [Ledger(make_engine(new_database()), policy(), TZ) for _ in range(2)]
    for ledger in ledgers:
        migrate(ledger.engine)
    together, one_by_one = tick(ledgers[0], True), tick(ledgers[1], False)
    # a: 2 periods x 2 resources, job:8 and dan/c: 2 periods, eve/g 2 resources, job:9,
    # bob/h, eve/i: 1 each; dan/d (its mark), dan/e (closed) and dan/f (gone): none
    assert together[0] == one_by_one[0] == 4 + 2 + 2 + 2 + 1 + 1 + 1
    assert together[1] == one_by_one[1]
    assert [j[4] for j in together[1] if j[0] in ("job:8", "job:9")] == ["job", "job", "lab"]
    assert together[2] == one_by_one[2]
    assert ("lab:dan/f", NOV - 30, True) in together[2]
    assert ("lab:dan/d", until, False) in together[2]
    for period in (3, 4):
        assert together[period].keys() == one_by_one[period].keys()
        for key, used in together[period].items():
            assert used == pytest.approx(one_by_one[period][key], rel=1e-12)
    assert together[4][("user", "eve", "gpu_hours")] == pytest.approx((600 + 900) / H)


def check_no_double_charge(ledger: Ledger, consumer: str) -> None:
    """The charges of a consumer tile [started, charged_until) once per resource."""
    row = consumer_row(ledger, consumer)
    by_resource = defaultdict(list)
    for c in charges(ledger, consumer):
        by_resource[c.resource].append(c)
    for resource, rate in (("gpu_hours", row.gpu_rate), ("cpu_hours", row.cpu_rate)):
        rows = by_resource[resource]
        if rate <= 0 or not rows:
            assert rows == [] and (rate <= 0 or row.charged_until == row.started)
            continue
        assert [c.start for c in rows] == [row.started] + [c.end for c in rows[:-1]]
        assert rows[-1].end == row.charged_until
        assert sum(c.amount for c in rows) == pytest.approx(
            rate * (row.charged_until - row.started) / H
        )


def test_the_hub_and_the_service_charging_one_consumer_at_once_never_double_charge(engines):
    """Two Ledger objects on one database (the hub's and the quota service's), in threads:
    the meter charges every open consumer at rising marks while the hub closes them one by
    one at their exact ends (or at an unknown end). Whoever wins, every second is charged
    at most once, the charges tile [started, charged_until), and the totals match."""
    hub, service = Ledger(engines(), policy(), TZ), Ledger(engines(), policy(), TZ)
    n, ticks = 6, 25
    ids = [f"lab:u{i}/@{T0}" for i in range(n)]
    for i, cid in enumerate(ids):
        hub.open(cid, user=f"u{i}", account="default", source="lab", started=T0,
                 rates={"gpu_hours": 1, "cpu_hours": 2})  # fmt: skip
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def meter():
        barrier.wait()
        for k in range(1, ticks + 1):
            service.charge({cid: T0 + 60 * k for cid in ids})

    def stopper():
        barrier.wait()
        for i, cid in enumerate(reversed(ids)):
            hub.close(cid, None if i % 3 == 2 else T0 + 60 * (2 * i + 1) + 30)
            hub.charge({cid: T0 + 60 * ticks})  # after the close: must add nothing

    threads = [threading.Thread(target=_catching(f, errors)) for f in (meter, stopper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert hub.open_consumers() == []
    for cid in ids:
        check_no_double_charge(service, cid)
        assert consumer_row(hub, cid).charged_until <= T0 + 60 * ticks
    used = hub.totals_used(OCT)
    for i, cid in enumerate(ids):
        assert used.get(("user", f"u{i}", "gpu_hours"), 0) == pytest.approx(charged_hours(hub, cid))


def test_opening_one_consumer_from_two_ledgers_at_once(engines):
    """The hub opens a session as it starts; the meter may see it first and open it too."""
    a, b = Ledger(engines(), policy(), TZ), Ledger(engines(), policy(), TZ)

    def open_(ledger: Ledger, user: str, cid: str, barrier: threading.Barrier, results: list):
        barrier.wait()
        ledger.set_account(user, "physics")  # as the spawner and the meter both do
        results.append(
            ledger.open(
                cid, user=user, account="physics", source="lab", started=T0, rates={"gpu_hours": 1}
            )  # fmt: skip
        )

    for round_ in range(10):
        user, cid = f"new{round_}", f"lab:new{round_}/@{T0}"
        results: list[bool] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_catching(open_, errors), args=(x, user, cid, barrier, results))
            for x in (a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(results) == [False, True]
        assert a.account_of(user) == "physics"


def _catching(f, errors):
    def run(*args):
        try:
            f(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    return run


def test_grants_and_usage_history(ledger):
    use(ledger, "bob", 1, start=T0)
    use(ledger, "alice", 2, start=T0 + H)
    ledger.grant(by="root", account="physics", resource="cpu_hours", amount=1, reason="r", now=T0)
    assert [c.user for c in ledger.usage()] == ["bob", "alice"]
    assert [c.user for c in ledger.usage(newest_first=True, limit=1)] == ["alice"]
    assert [c.user for c in ledger.usage(user="alice")] == ["alice"]
    assert ledger.usage(since=T0 + 3 * H) == []
    assert [c.user for c in ledger.usage(until=T0 + H)] == ["bob"]
    with ledger.engine.connect() as conn:
        assert conn.execute(select(Grant.by)).scalars().all() == ["root"]


# --- the journal ---------------------------------------------------------------------------
def rows_in(ledger: Ledger, table) -> int:
    with ledger.engine.connect() as conn:
        return len(conn.execute(select(table)).all())


def test_posting_moves_the_journal_to_the_ledger_and_reads_do_not_change(ledger):
    """Charges land in the journal; `post` moves them to `charges` in one go. Every read
    (usage, balances) gives the same before and after, also while both tables hold rows."""
    use(ledger, "bob", 1, start=T0 + H, cores=2)
    use(ledger, "alice", 2, start=T0 + 2 * H, cores=2)
    assert rows_in(ledger, Charge) == 0 and ledger.journal_size() == 4  # gpu and cpu rows
    before = [tuple(c) for c in ledger.usage()]
    balance = ledger.balance("alice", T0 + 5 * H).as_dict()

    assert ledger.post() == 4
    assert rows_in(ledger, Charge) == 4 and ledger.journal_size() == 0
    assert [tuple(c)[1:] for c in ledger.usage()] == [r[1:] for r in before]  # ids are new
    assert ledger.balance("alice", T0 + 5 * H).as_dict() == balance
    assert ledger.post() == 0

    # A session seen late (started before what is posted) sorts among the posted rows.
    use(ledger, "carol", 1, start=T0, cores=2)
    assert ledger.journal_size() == 2 and rows_in(ledger, Charge) == 4
    assert [c.user for c in ledger.usage(newest_first=False) if c.resource == "gpu_hours"] == [
        "carol", "bob", "alice",
    ]  # fmt: skip
    assert [c.user for c in ledger.usage(newest_first=True, limit=2)] == ["alice", "alice"]
    assert [c.user for c in ledger.usage(limit=2)] == ["carol", "carol"]
    assert [c.user for c in ledger.usage(user="carol")] == ["carol", "carol"]
    assert [c.user for c in ledger.usage(until=T0 + H)] == ["carol", "carol"]


def test_posted_rows_are_in_user_order_and_keep_the_interval_key(ledger):
    """Posting writes the rows sorted by (user, start), the order of the per-user index; the
    interval key still refuses a second copy of a posted interval."""
    use(ledger, "bob", 1, start=T0 + H)
    use(ledger, "alice", 1, start=T0 + 2 * H)
    use(ledger, "bob", 1, start=T0)
    ledger.post()
    with ledger.engine.connect() as conn:
        posted = conn.execute(select(Charge.user, Charge.start).order_by(Charge.id)).all()
    assert posted == sorted(posted)
    row = {k: v for k, v in posted_row(ledger).items() if k != "id"}
    with pytest.raises(Exception, match="(?i)unique"):
        with ledger.engine.begin() as conn:
            conn.execute(Charge.__table__.insert().values(**row))


def posted_row(ledger: Ledger) -> dict:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(Charge).limit(1)).one()._mapping)
