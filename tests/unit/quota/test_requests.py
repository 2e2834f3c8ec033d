"""Asking for more (quota/requests.py) on a real ledger (SQLite and PostgreSQL): a request
alerts the account's managers through a real SMTP server and webhook receiver, an approval
is a grant recorded with who and why, a decline keeps its reason, and a request is decided
once."""

from __future__ import annotations

import pytest

from shangzhuang.quota.alerts import Alerts, sends
from shangzhuang.quota.ledger import QuotaError
from shangzhuang.quota.requests import OPEN_PER_USER, Requests
from shangzhuang.settings import QuotaAlerts
from tests.unit.quota import test_alerts as kit
from tests.unit.quota.test_alerts import T0, config, tick

# The alert tests' fixtures: a ledger whose physics account has managers pat and quin, a real
# SMTP server and a real webhook receiver.
managed, smtp, webhook = kit.managed, kit.smtp, kit.webhook


def test_a_request_alerts_the_managers_and_an_approval_is_a_grant(managed, smtp, webhook):
    _, box = smtp
    store = Requests(managed)
    asked = store.ask("bob", "gpu_hours", 5, "a thesis deadline", now=T0)
    assert asked["state"] == "open" and asked["account"] == "physics"
    assert tick(Alerts(managed, config(smtp, webhook.url)), T0 + 60) == 1
    [post] = webhook.posts
    assert (post["kind"], post["request"], post["user"]) == ("request", asked["id"], "bob")
    assert post["text"] == (
        "bob asks for 5 more gpu_hours for the account physics this period: a thesis "
        "deadline. Approve or decline it on the usage page."
    )
    [(to, mail)] = box.mails
    assert sorted(to) == ["pat@example.org", "quin@example.org"]

    before = managed.balance("bob", T0).remaining("gpu_hours")
    done = store.decide(asked["id"], "pat", True, "fine", now=T0 + 120)
    assert (done["state"], done["decided_by"], done["grant"]) == ("approved", "pat", 1)
    assert managed.balance("bob", T0 + 120).remaining("gpu_hours") == pytest.approx(before + 5)
    [grant] = managed.grants()
    assert (grant.by, grant.kind, grant.name, grant.amount) == ("pat", "account", "physics", 5)
    assert "a thesis deadline" in grant.reason
    with pytest.raises(QuotaError, match="decided already"):
        store.decide(asked["id"], "quin", True, "")
    assert len(managed.grants()) == 1


def test_a_capped_user_gets_the_grant_on_her_cap_and_a_decline_keeps_its_reason(managed):
    store = Requests(managed)
    a = store.ask("alice", "gpu_hours", 2, "more epochs", now=T0)  # alice: a 4 h cap
    store.decide(a["id"], "pat", True, "", now=T0 + 1)
    [grant] = managed.grants()
    assert (grant.kind, grant.name) == ("user", "alice")
    assert managed.balance("alice", T0 + 2).remaining("gpu_hours") == pytest.approx(6)

    d = store.ask("alice", "cpu_hours", 50, "more", now=T0 + 3)
    done = store.decide(d["id"], "pat", False, "the pool is for the course", now=T0 + 4)
    assert (done["state"], done["answer"]) == ("declined", "the pool is for the course")
    assert len(managed.grants()) == 1
    assert [r["id"] for r in store.listed(user="alice", state="all")] == [d["id"], a["id"]]
    assert store.listed(user="alice") == []  # none open
    assert store.listed(accounts=["bio"], state="all") == []


def test_a_user_may_have_only_a_few_requests_open(managed):
    store = Requests(managed)
    for i in range(OPEN_PER_USER):
        store.ask("bob", "cpu_hours", 1, f"ask {i}", now=T0 + i)
    with pytest.raises(QuotaError, match="waiting already"):
        store.ask("bob", "cpu_hours", 1, "one more", now=T0 + 9)


def test_with_alerts_off_a_request_queues_no_alert(managed, smtp, webhook):
    """A site without a webhook or SMTP server ([quota.alerts] unset) sends no alert, so a
    request leaves no alert row waiting: they used to pile up unsent. The managers still
    find it on the usage page, and once the site sets a channel, requests alert again."""
    off = QuotaAlerts()
    assert not sends(off)
    asked = Requests(managed, alerting=sends(off)).ask("bob", "gpu_hours", 5, "a deadline", now=T0)
    assert Alerts(managed, off).pending() == []
    assert [r["id"] for r in Requests(managed).listed(accounts=["physics"])] == [asked["id"]]

    on = config(smtp, webhook.url)
    again = Requests(managed, alerting=sends(on)).ask("bob", "cpu_hours", 1, "more", now=T0 + 1)
    assert tick(Alerts(managed, on), T0 + 60) == 1
    assert [p["request"] for p in webhook.posts] == [again["id"]]


def test_a_request_decided_before_its_alert_went_out_is_not_alerted(managed, smtp, webhook):
    """Alert rows of requests queued while a site had no channel (before the rule above)
    and decided since: once the site sets a channel, only those still open are sent."""
    store = Requests(managed, alerting=True)  # queued, as they were with alerts off
    decided = store.ask("bob", "gpu_hours", 5, "a deadline", now=T0)
    store.decide(decided["id"], "pat", False, "not this month", now=T0 + 1)
    waiting = store.ask("bob", "cpu_hours", 1, "more", now=T0 + 2)
    alerts = Alerts(managed, config(smtp, webhook.url))
    assert tick(alerts, T0 + 60) == 1
    assert [p["request"] for p in webhook.posts] == [waiting["id"]]
    assert alerts.pending() == []  # the decided one is done with, not retried
