"""Quota alerts (quota/alerts.py) on a real ledger, a real SMTP server (aiosmtpd) and a real
HTTP webhook receiver: once per threshold per period, to the managers (a pool) or the user
(a cap), kept across a restart of the service (a new Alerts on the same database), retried
when a channel is down."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from shangzhuang.quota.alerts import Alerts
from shangzhuang.quota.ledger import Ledger
from shangzhuang.settings import QuotaAlerts
from tests.ports import free_port
from tests.unit.quota.conftest import POLICY, TZ, at, policy

H = 3600.0
T0 = at(2026, 10, 10, 9)


class Mailbox:
    """aiosmtpd's handler: keeps every message it is handed."""

    def __init__(self):
        self.mails = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, box
    controller.stop()


class Webhook:
    """A real HTTP server that keeps the JSON posted to it."""

    def __init__(self):
        self.posts = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.close()


@pytest.fixture
def managed(engine) -> Ledger:
    accounts = {**POLICY["accounts"], "physics": {"gpu_hours": 10, "managers": ["pat", "quin"]}}
    return Ledger(engine, policy(accounts=accounts), TZ)


def config(smtp, webhook_url: str) -> QuotaAlerts:
    controller, _ = smtp
    return QuotaAlerts(
        webhook_url=webhook_url, smtp_host="127.0.0.1", smtp_port=controller.port,
        mail_from="quota@example.org", mail_domain="example.org",
    )  # fmt: skip


def run(ledger: Ledger, user: str, start: float, hours: float, gpus: float = 1) -> None:
    cid = f"lab:{user}/{start}"
    ledger.open(
        cid, user=user, account=ledger.account_for(user), source="lab", started=start,
        rates={"gpu_hours": gpus, "cpu_hours": 0},
    )  # fmt: skip
    ledger.close(cid, start + hours * H)


def tick(alerts: Alerts, now: float) -> int:
    return asyncio.run(alerts.tick(now))


def test_once_per_threshold_to_managers_and_user_across_a_restart(managed, smtp, webhook):
    _, box = smtp
    alerts = Alerts(managed, config(smtp, webhook.url))
    run(managed, "bob", T0, 5)  # physics: 5 of 10 GPU-hours
    assert tick(alerts, T0 + 6 * H) == 1
    [post] = webhook.posts
    assert (post["account"], post["resource"], post["threshold"]) == ("physics", "gpu_hours", 0.5)
    assert post["text"] == (
        "The account physics has used 50% of its gpu_hours this period: 5.00 of 10.00 hours."
    )
    [(to, mail)] = box.mails
    assert sorted(to) == ["pat@example.org", "quin@example.org"]
    assert mail["Subject"] == "Quota: the account physics has used 50% of its gpu_hours"
    # again, and after a restart (a new service on the same database): nothing more
    assert tick(alerts, T0 + 7 * H) == 0
    assert tick(Alerts(managed, config(smtp, webhook.url)), T0 + 8 * H) == 0
    assert len(webhook.posts) == 1 and len(box.mails) == 1

    run(managed, "alice", T0 + 8 * H, 3)  # physics 8 of 10; alice 3 of her cap of 4
    assert tick(alerts, T0 + 12 * H) == 2
    got = {(p["kind"], p.get("account") or p.get("user"), p["threshold"]) for p in webhook.posts}
    assert got == {("account", "physics", 0.5), ("account", "physics", 0.8), ("user", "alice", 0.5)}
    assert (["alice@example.org"], "Quota: alice has used 50% of their gpu_hours cap") in [
        (to, m["Subject"]) for to, m in box.mails
    ]

    # the next period: the same thresholds alert again
    run(managed, "bob", at(2026, 11, 2, 9), 6)
    assert tick(alerts, at(2026, 11, 2, 16)) == 1
    assert webhook.posts[-1]["period_start"].startswith("2026-11-01")


def test_an_alert_not_delivered_is_retried_after_a_restart(managed, smtp, webhook):
    _, box = smtp
    down = f"http://127.0.0.1:{free_port()}/nobody-listens"
    run(managed, "carol", T0, 1)  # bio: 1 of 2 GPU-hours, no managers: webhook only
    assert tick(Alerts(managed, config(smtp, down)), T0 + 2 * H) == 0
    assert tick(Alerts(managed, config(smtp, down)), T0 + 3 * H) == 0  # still down
    assert webhook.posts == []
    # the service restarts with the webhook back: the kept alert goes out, once
    restarted = Alerts(managed, config(smtp, webhook.url))
    assert tick(restarted, T0 + 4 * H) == 1
    assert tick(restarted, T0 + 5 * H) == 0
    assert [(p["account"], p["threshold"]) for p in webhook.posts] == [("bio", 0.5)]
    assert box.mails == []  # bio has no managers to mail


def test_alert_settings_are_validated():
    with pytest.raises(ValueError, match="above 0 and at most 1"):
        QuotaAlerts(thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match="smtp_host needs mail_from and mail_domain"):
        QuotaAlerts(smtp_host="mail.example.org")
    assert QuotaAlerts(thresholds=[1.0, 0.5]).thresholds == [0.5, 1.0]


def test_a_channel_that_took_an_alert_is_not_sent_it_again(managed, smtp, webhook):
    """SMTP down, webhook up: the mail is retried, the webhook gets the alert once."""
    _, box = smtp
    controller, _ = smtp
    down = config(smtp, webhook.url).model_copy(update={"smtp_port": free_port()})
    run(managed, "bob", T0, 5)  # physics: 5 of 10 GPU-hours, managers pat and quin
    assert tick(Alerts(managed, down), T0 + 6 * H) == 0
    assert tick(Alerts(managed, down), T0 + 7 * H) == 0  # the mail still can't go
    assert [p["threshold"] for p in webhook.posts] == [0.5]
    up = Alerts(managed, config(smtp, webhook.url))
    assert tick(up, T0 + 8 * H) == 1  # the mail goes now; the webhook isn't posted again
    assert tick(up, T0 + 9 * H) == 0
    assert [p["threshold"] for p in webhook.posts] == [0.5]
    assert [m["Subject"] for _, m in box.mails] == [
        "Quota: the account physics has used 50% of its gpu_hours"
    ]


class SlowMailbox(Mailbox):
    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(1)
        return await super().handle_DATA(server, session, envelope)


def test_a_service_stopped_mid_delivery_sends_nothing_twice(managed, webhook):
    """The quota service is stopped (its tasks cancelled, as run_service does on SIGTERM)
    after the webhook took an alert and while the mail is on its way: after the restart
    neither channel is sent it again (CI rehearsal of session 6 saw the 50% alert twice)."""
    box = SlowMailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        cfg = config((controller, box), webhook.url)
        run(managed, "bob", T0, 5)

        async def stopped_mid_mail():
            task = asyncio.ensure_future(Alerts(managed, cfg).tick(T0 + 6 * H))
            while not webhook.posts:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the mail is with the (slow) SMTP server now
            task.cancel()

        asyncio.run(stopped_mid_mail())  # like asyncio.run in run_service, it then exits
        time.sleep(1.5)  # whatever was still on its way has arrived
        assert tick(Alerts(managed, cfg), T0 + 7 * H) == 0
        assert [p["threshold"] for p in webhook.posts] == [0.5]
        assert len(box.mails) == 1
    finally:
        controller.stop()
