"""The spawn rule as the quota service answers it (one place): for a profile, and for any
work at given rates (a Dask cluster's worker jobs)."""

from __future__ import annotations

import math

from shangzhuang.quota.service import affords_rates


def test_how_many_units_the_balance_pays_for(ledger):
    minutes = ledger.policy.min_minutes_to_spawn
    # carol's account (bio) has 2 gpu_hours and no CPU limit.
    one_gpu = affords_rates(ledger, "carol", {"gpu_hours": 1, "cpu_hours": 4})
    assert one_gpu["affordable"] and one_gpu["short"] == {}
    assert one_gpu["fits"] == math.floor(2 / (minutes / 60))
    too_big = affords_rates(ledger, "carol", {"gpu_hours": 2.5 * 60 / minutes})
    assert not too_big["affordable"] and too_big["short"] == {"gpu_hours": 2}
    assert too_big["fits"] == 0 and too_big["account"] == "bio"
    # Nothing limited: every unit fits, so no count.
    assert affords_rates(ledger, "dave", {"cpu_hours": 1000})["fits"] is None


def test_when_the_meter_stops_a_session_at_zero():
    """meter.stops_in: the meter's own rule, which the API's balance answers with."""
    from shangzhuang.quota.ledger import Balance, Limit, ResourceBalance
    from shangzhuang.quota.meter import stops_in

    def balance(gpu_left: float, since: float | None) -> Balance:
        resources = {
            "gpu_hours": ResourceBalance("gpu_hours", Limit(2, 0, 2 - gpu_left), None),
            "cpu_hours": ResourceBalance("cpu_hours", None, None),  # not limited
        }
        return Balance("ada", "bio", None, resources, 0.1, "UTC", exhausted_since=since)

    at_zero = balance(0, since=1000.0)
    assert stops_in(at_zero, {"gpu_hours": 1, "cpu_hours": 4}, 300, now=1100.0) == 200
    assert stops_in(at_zero, {"gpu_hours": 1}, 300, now=1400.0) == 0  # due: the meter stops it
    assert stops_in(at_zero, {"gpu_hours": 0, "cpu_hours": 4}, 300, now=1100.0) is None
    assert stops_in(balance(0.5, since=None), {"gpu_hours": 1}, 300, now=1100.0) is None
