"""The usage page's figures (quota/figures.py) on a real ledger (SQLite and PostgreSQL):
hours per local day by resource and source, the previous periods, members' burn and the
date a pool runs dry at the current rate, the estate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shangzhuang.quota import figures
from shangzhuang.quota.ledger import Ledger, QuotaError
from shangzhuang.quota.periods import iso
from shangzhuang.settings import Quota
from tests.unit.quota.conftest import POLICY, TZ, at, policy

H = 3600.0
T0 = at(2026, 10, 10, 23, 0)  # Saturday 23:00 in Shanghai


def run(ledger: Ledger, user: str, source: str, start: float, hours: float, gpus=1, cores=0):
    cid = f"{source}:{user}/{start}-{hours}"
    ledger.open(
        cid, user=user, account=ledger.account_for(user), source=source, started=start,
        rates={"gpu_hours": gpus, "cpu_hours": cores},
    )  # fmt: skip
    ledger.close(cid, start + hours * H)


def test_daily_splits_at_local_midnight_by_resource_and_source(ledger):
    run(ledger, "alice", "lab", T0, 3, gpus=1, cores=2)  # 23:00 to 02:00: 1 h, then 2 h
    run(ledger, "alice", "job", at(2026, 10, 11, 9), 0.5, gpus=2)
    run(ledger, "bob", "lab", T0, 1)
    d = figures.daily(ledger, at(2026, 10, 10), at(2026, 10, 12), user="alice")
    assert d["days"] == ["2026-10-10", "2026-10-11"]
    assert d["x"] == [at(2026, 10, 10), at(2026, 10, 11)]
    assert d["by_source"]["gpu_hours"] == {"job": [0.0, 1.0], "lab": [1.0, 2.0]}
    assert d["by_source"]["cpu_hours"] == {"lab": [2.0, 4.0]}
    assert d["total"] == {"gpu_hours": 4.0, "cpu_hours": 6.0}
    # an account's view holds both members; bob's hour is on the 10th
    acct = figures.daily(ledger, at(2026, 10, 10), at(2026, 10, 12), account="physics")
    assert acct["by_source"]["gpu_hours"]["lab"] == [2.0, 2.0]


def test_daily_cuts_a_charge_at_the_window(ledger):
    run(ledger, "alice", "lab", at(2026, 10, 31, 22), 4)  # 2 h in October, 2 h in November
    w = figures.window(ledger, back=1, now=at(2026, 11, 15))
    assert (w.start, w.end) == (at(2026, 10, 1), at(2026, 11, 1))
    d = figures.daily(ledger, w.start, w.end, user="alice")
    assert len(d["days"]) == 31 and d["days"][-1] == "2026-10-31"
    assert d["total"]["gpu_hours"] == pytest.approx(2.0)
    assert figures.daily(ledger, at(2026, 11, 1), at(2026, 11, 2), user="alice")["total"] == {
        "gpu_hours": 2.0, "cpu_hours": 0.0,
    }  # fmt: skip


def test_window_without_periods_is_thirty_days(engine):
    ledger = Ledger(engine, policy(period="none"), TZ)
    now = at(2026, 10, 31)
    w = figures.window(ledger, back=1, now=now)
    assert (w.start, w.end) == (now - 60 * figures.DAY, now - 30 * figures.DAY)


def test_burn_projects_the_date_the_pool_runs_dry(ledger):
    # physics: 10 GPU-hours a month. alice burns 6 (3 h of 2 GPUs) in the week before `now`.
    start = at(2026, 10, 10, 9)
    run(ledger, "alice", "lab", start, 3, gpus=2)
    now = start + 24 * H
    b = figures.burn(ledger, "physics", now)
    rate = 6 / (7 * 24)  # hours per hour over the last week
    p = b["projection"]["gpu_hours"]
    assert p["rate_per_hour"] == pytest.approx(rate, abs=1e-6)
    assert p["runs_dry_at"] == iso(now + 4 / rate * H, TZ)  # 112 h later: 16 October
    assert p["runs_dry_at"].startswith("2026-10-16")
    assert p["lasts_to_reset"] is False
    # cpu_hours: 100 in the pool, nothing burnt: it lasts
    assert b["projection"]["cpu_hours"] == {
        "rate_per_hour": 0.0, "runs_dry_at": None, "lasts_to_reset": True,
    }  # fmt: skip
    by_user = {m["user"]: m for m in b["members"]}
    assert set(by_user) == {"alice", "bob"}
    assert by_user["alice"]["used"]["gpu_hours"] == pytest.approx(6.0)
    assert by_user["alice"]["cap"]["gpu_hours"]["allocated"] == 4  # her personal cap
    assert by_user["bob"]["cap"]["gpu_hours"] is None
    assert b["pool"]["gpu_hours"]["remaining"] == pytest.approx(4.0)


def test_burn_that_lasts_to_the_reset_and_a_pool_already_dry(ledger):
    start = at(2026, 10, 28, 9)
    run(ledger, "bob", "lab", start, 1)  # 1 h in 7 days: 9 h left last past 1 November
    assert figures.burn(ledger, "physics", start + 2 * H)["projection"]["gpu_hours"] == {
        "rate_per_hour": pytest.approx(1 / 168, abs=1e-6), "runs_dry_at": None,
        "lasts_to_reset": True,
    }  # fmt: skip
    run(ledger, "carol", "lab", start, 3)  # bio has 2 GPU-hours: dry now
    now = start + 4 * H
    assert figures.burn(ledger, "bio", now)["projection"]["gpu_hours"]["runs_dry_at"] == iso(
        now, TZ
    )


def test_estate_accounts_top_users_and_stops(ledger):
    run(ledger, "alice", "lab", T0, 2)
    run(ledger, "carol", "job", T0, 1, gpus=1, cores=4)
    run(ledger, "dora", "lab", T0, 1, gpus=0, cores=1)  # the default account
    run(ledger, "bob", "lab", at(2026, 10, 31, 23), 2)  # 1 h in October, 1 h in November
    ledger.record_stop("carol", "job:carol/1", "quota", T0 + H)
    e = figures.estate(ledger, at(2026, 10, 1), at(2026, 11, 1))
    assert e["accounts"]["physics"] == {"gpu_hours": 3.0, "cpu_hours": 0.0}
    assert e["accounts"]["bio"] == {"gpu_hours": 1.0, "cpu_hours": 4.0}
    assert e["accounts"]["default"] == {"gpu_hours": 0.0, "cpu_hours": 1.0}
    assert e["total"] == {"gpu_hours": 4.0, "cpu_hours": 5.0}
    assert [u["user"] for u in e["top_users"]] == ["alice", "carol", "bob", "dora"]
    assert e["stops_at_zero"] == 1
    assert figures.estate(ledger, at(2026, 11, 1), at(2026, 12, 1))["stops_at_zero"] == 0
    # a window that is not a period is summed from the charges: the same figures here
    part = figures.estate(ledger, at(2026, 10, 5), at(2026, 11, 1))
    assert part["accounts"] == e["accounts"] and part["top_users"] == e["top_users"]
    assert figures.estate(ledger, at(2026, 10, 31, 23, 30), at(2026, 11, 1))["accounts"][
        "physics"
    ] == {"gpu_hours": 0.5, "cpu_hours": 0.0}  # half an hour of bob's run


def test_the_estate_counts_refused_starts_per_reason_per_day_and_user(ledger):
    """Refusals (quota/refusals.py) in the estate's window: per reason, per reason per local
    day (Shanghai: 23:30 UTC+8 is still the 10th), the users refused most; and Prometheus'
    counter of them, read from the ledger."""
    from prometheus_client import CollectorRegistry, generate_latest

    from shangzhuang.quota import refusals
    from shangzhuang.quota.db import Refusal

    refusals.record(ledger, "alice", "quota", "gpu-1", ["gpu_hours"], now=T0 + 0.5 * H)
    refusals.record(ledger, "alice", "gpus-busy", "gpu-1", now=T0 + 2 * H)  # the 11th
    refusals.record(ledger, "bob", "server-limit", "cpu", now=T0 + 3 * H)
    refusals.record(ledger, "carol", "held-at-zero", "job:7", ["gpu_hours"], now=T0 + 3 * H)
    refusals.record(ledger, "alice", "quota", "gpu-1", ["gpu_hours"], now=at(2026, 11, 2))
    with pytest.raises(ValueError, match="unknown refusal reason"):
        refusals.record(ledger, "alice", "bored")
    r = figures.estate(ledger, at(2026, 10, 10), at(2026, 10, 12))["refusals"]
    assert r["total"] == 4
    assert r["by_reason"] == {"quota": 1, "quota-unavailable": 0, "gpus-busy": 1,
                              "server-limit": 1, "slurm": 0, "held-at-zero": 1}  # fmt: skip
    assert r["days"] == ["2026-10-10", "2026-10-11"] and r["x"] == [at(2026, 10, 10),
                                                                     at(2026, 10, 11)]  # fmt: skip
    assert r["per_day"]["quota"] == [1, 0] and r["per_day"]["gpus-busy"] == [0, 1]
    assert r["per_day"]["held-at-zero"] == [0, 1]
    assert r["top_users"] == [
        {"user": "alice", "refusals": 2, "by_reason": {"gpus-busy": 1, "quota": 1}},
        {"user": "bob", "refusals": 1, "by_reason": {"server-limit": 1}},
        {"user": "carol", "refusals": 1, "by_reason": {"held-at-zero": 1}},
    ]
    with ledger._read() as conn:  # charged to the account each was in when refused
        rows = conn.execute(Refusal.__table__.select()).all()
    assert {(x.user, x.account, x.asked, x.resources) for x in rows} >= {
        ("alice", "physics", "gpu-1", "gpu_hours"), ("carol", "bio", "job:7", "gpu_hours"),
        ("bob", "physics", "cpu", ""),
    }  # fmt: skip
    # another month: its own
    november = figures.estate(ledger, at(2026, 11, 1), at(2026, 12, 1))["refusals"]
    assert november["total"] == 1 and november["by_reason"]["quota"] == 1
    registry = CollectorRegistry()
    registry.register(figures.RefusalsCollector(ledger))
    text = generate_latest(registry).decode()
    assert 'shangzhuang_quota_refusals_total{reason="quota"} 2.0' in text
    assert 'shangzhuang_quota_refusals_total{reason="slurm"} 0.0' in text


def test_managers_are_set_per_account_and_validated(engine):
    accounts = {**POLICY["accounts"], "physics": {"gpu_hours": 10, "managers": ["pat"]}}
    ledger = Ledger(engine, policy(accounts=accounts), TZ)
    assert figures.managed_by(ledger, "pat") == ["physics"]
    assert figures.managed_by(ledger, "alice") == []
    for bad in (["pat", "pat"], [""], [" pat"]):
        with pytest.raises(ValidationError, match="managers"):
            Quota.model_validate({"accounts": {"default": {}, "x": {"managers": bad}}})


def test_a_cap_set_by_a_manager_binds_the_member_and_replaces_the_config_cap(ledger):
    run(ledger, "bob", "lab", T0, 1)
    assert ledger.balance("bob", T0 + 2 * H).resources["gpu_hours"].personal is None
    ledger.set_cap("bob", "gpu_hours", 1.5, by="pat", now=T0)
    b = ledger.balance("bob", T0 + 2 * H)
    assert b.resources["gpu_hours"].personal.allocated == 1.5
    assert b.remaining("gpu_hours") == pytest.approx(0.5)  # the cap binds, not the pool's 9
    ledger.set_cap("alice", "gpu_hours", 8, by="pat", now=T0)  # the config said 4
    assert ledger.balance("alice", T0).resources["gpu_hours"].personal.allocated == 8
    assert ledger.caps("alice") == {"gpu_hours": 8}
    ledger.set_cap("bob", "gpu_hours", None, by="pat", now=T0)
    assert ledger.balance("bob", T0 + 2 * H).resources["gpu_hours"].personal is None
    with pytest.raises(QuotaError, match="resource must be one of"):
        ledger.set_cap("bob", "tpu_hours", 1, by="pat")


def test_used_hours_counter_keeps_counting_across_a_reset(ledger):
    from prometheus_client import CollectorRegistry, generate_latest

    run(ledger, "alice", "lab", at(2026, 10, 31, 22), 4)  # 2 h in October, 2 in November
    registry = CollectorRegistry()
    registry.register(figures.UsedHoursCollector(ledger, clock=lambda: at(2026, 11, 15)))
    labels = {"account": "physics", "resource": "gpu_hours"}
    total = registry.get_sample_value("shangzhuang_quota_used_hours_total", labels)
    assert total == pytest.approx(4.0)
    assert registry.get_sample_value(
        "shangzhuang_quota_used_hours_total", {"account": "bio", "resource": "cpu_hours"}
    ) == 0  # fmt: skip
    # this period's gauge (November): only November's 2 h
    gauge = registry.get_sample_value("shangzhuang_quota_account_used_hours", labels)
    assert gauge == pytest.approx(2.0)
    assert b"shangzhuang_quota_used_hours_total" in generate_latest(registry)
