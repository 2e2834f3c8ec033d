"""An account's managers (quota/managers.py) on a real ledger: the config's and those an
admin sets on the page, one list for the page, the requests and the alerts."""

from __future__ import annotations

import pytest

from shangzhuang.quota import managers
from shangzhuang.quota.alerts import Alerts
from shangzhuang.quota.ledger import Ledger, QuotaError
from shangzhuang.settings import QuotaAlerts
from tests.unit.quota.conftest import POLICY, TZ, policy


@pytest.fixture
def ledger(engine) -> Ledger:
    accounts = {**POLICY["accounts"], "physics": {"gpu_hours": 10, "managers": ["pat"]}}
    return Ledger(engine, policy(accounts=accounts), TZ)


def test_admins_add_and_remove_managers_beside_the_configs(ledger):
    assert managers.managers_of(ledger, "physics") == ["pat"]
    managers.set_manager(ledger, "physics", "bob", True, by="root")
    managers.set_manager(ledger, "bio", "bob", True, by="root")
    assert managers.managers_of(ledger, "physics") == ["bob", "pat"]
    assert managers.managed_by(ledger, "bob") == ["bio", "physics"]
    assert managers.manages(ledger, "bob", "bio") and not managers.manages(ledger, "carol", "bio")
    alert = type("A", (), {"kind": "account", "name": "physics"})
    assert Alerts(ledger, QuotaAlerts()).recipients(alert) == ["bob", "pat"]

    managers.set_manager(ledger, "physics", "bob", False, by="root")
    assert managers.managed_by(ledger, "bob") == ["bio"]
    with pytest.raises(QuotaError, match=r"\[quota.accounts.physics\] managers"):
        managers.set_manager(ledger, "physics", "pat", False, by="root")
    with pytest.raises(QuotaError, match="unknown account"):
        managers.set_manager(ledger, "nowhere", "bob", True, by="root")
