"""A deleted user's quota record is set apart (Ledger.set_apart): whoever signs up under the
same name later starts with no usage, grants or account of the earlier person, while the
account's pool still counts what the earlier person used."""

from __future__ import annotations

from shangzhuang.quota.ledger import Ledger
from tests.unit.quota.conftest import at
from tests.unit.quota.test_ledger import T0, use


def test_set_apart_moves_usage_grants_and_account_to_a_tombstone(ledger: Ledger):
    ledger.set_account("alice", "physics")  # as a spawn records it
    consumer = use(ledger, "alice", hours=2, gpus=1)  # alice has a personal cap of 4
    ledger.grant(by="admin", user="alice", resource="gpu_hours", amount=1.5, reason="x", now=T0)
    before = ledger.balance("alice", T0 + 3 * 3600).resources["gpu_hours"]
    assert (before.personal.used, before.personal.granted) == (2, 1.5)
    pool_used = before.account.used

    tomb = ledger.set_apart("alice", now=at(2026, 10, 11))
    assert tomb == f"alice~deleted-{int(at(2026, 10, 11))}"

    fresh = ledger.balance("alice", T0 + 3 * 3600).resources["gpu_hours"]
    assert (fresh.personal.used, fresh.personal.granted) == (0, 0)
    assert fresh.account.used == pool_used  # the account paid: its pool still says so
    assert ledger.usage(user="alice") == []
    assert {c.consumer for c in ledger.usage(user=tomb)} == {consumer}
    assert tomb in ledger.users() and ledger.account_of(tomb) == "physics"
