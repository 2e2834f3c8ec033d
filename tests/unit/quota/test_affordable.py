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
