"""Quota alerts: when an account's pool or a user's personal cap crosses a share used
(`[quota.alerts] thresholds`), once per threshold per period, a message to the account's
managers (a pool) or the user (a cap) by e-mail, and to the site's webhook (JSON POST).

Each crossing is a row of the `alerts` table before anything is sent (its unique key makes
it once per period); each channel (webhook, mail) is marked as it takes it, the alert sent
when every channel did; until then it is retried on the next pass, also after a restart,
on the channels that haven't taken it. A kill between a send and its mark can send that
channel twice: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import time
import urllib.request
from email.message import EmailMessage

from sqlalchemy import select, update

from shangzhuang.quota.db import Alert
from shangzhuang.quota.ledger import Ledger, _insert
from shangzhuang.quota.managers import managers_of
from shangzhuang.quota.periods import iso
from shangzhuang.settings import QuotaAlerts

log = logging.getLogger("shangzhuang.quota")

# The texts people read: whole sentences with named fields (for translation later).
POOL_TEXT = (
    "The account {name} has used {percent}% of its {resource} this period: "
    "{used:.2f} of {total:.2f} hours."
)
CAP_TEXT = (
    "{name} has used {percent}% of their personal {resource} cap this period: "
    "{used:.2f} of {total:.2f} hours."
)
POOL_SUBJECT = "Quota: the account {name} has used {percent}% of its {resource}"
CAP_SUBJECT = "Quota: {name} has used {percent}% of their {resource} cap"
REQUEST_SUBJECT = "Quota: {user} asks for {hours:g} more {resource}"
REQUEST_TEXT = (
    "{user} asks for {hours:g} more {resource} for the account {account} this period: "
    "{reason}. Approve or decline it on the usage page."
)
MAX_ATTEMPTS = 50


def sends(config: QuotaAlerts) -> bool:
    """Whether the site sends alerts at all: a webhook or an SMTP server is set."""
    return bool(config.webhook_url or config.smtp_host)


class Alerts:
    def __init__(self, ledger: Ledger, config: QuotaAlerts, timeout: float = 10):
        self.ledger = ledger
        self.config = config
        self.timeout = timeout

    @property
    def enabled(self) -> bool:
        return sends(self.config)

    # --- finding crossings -----------------------------------------------------------
    def limits(self, now: float) -> list[tuple[str, str, str, float, float]]:
        """(kind, name, resource, used, total) of every pool and personal cap this period."""
        out = []
        for account, pool in self.ledger.accounts_pool(now).items():
            for resource, lim in pool.items():
                out.append(
                    ("account", account, resource, lim["used"], lim["allocated"] + lim["granted"])
                )
        capped = [u for u, q in self.ledger.policy.users.items() if q.limits()]
        capped += self.ledger.users_with_caps()
        for user, balance in self.ledger.balances(sorted(set(capped)), now).items():
            for resource, rb in balance.resources.items():
                if rb.personal is not None:
                    out.append(("user", user, resource, rb.personal.used, rb.personal.total))
        return out

    def check(self, now: float | None = None) -> int:
        """Record every threshold crossed this period and not yet recorded; how many new."""
        now = time.time() if now is None else now
        period = self.ledger.period(now)
        rows = [
            {
                "period_start": period.start, "kind": kind, "name": name, "resource": resource,
                "threshold": t, "used": used, "total": total, "created": now, "sent": None,
                "attempts": 0,
            }
            for kind, name, resource, used, total in self.limits(now)
            if total > 0
            for t in self.config.thresholds
            if used >= t * total - 1e-9
        ]  # fmt: skip
        if not rows:
            return 0
        with self.ledger._write() as conn:
            stmt = _insert(conn, Alert.__table__).on_conflict_do_nothing(
                index_elements=["period_start", "kind", "name", "resource", "threshold"]
            )
            new = [conn.execute(stmt.values(**r).returning(Alert.id)).first() for r in rows]
        return sum(x is not None for x in new)

    def pending(self) -> list:
        with self.ledger._read() as conn:
            return list(
                conn.execute(
                    select(Alert)
                    .where(Alert.sent.is_(None), Alert.attempts < MAX_ATTEMPTS)
                    .order_by(Alert.id)
                ).all()
            )

    # --- delivering ------------------------------------------------------------------
    def message(self, a) -> dict | None:
        """What alert `a` says; None for a request no longer waiting for a decision."""
        if a.kind == "request":
            return self.request_message(a)
        fields = {
            "name": a.name, "resource": a.resource, "percent": round(a.threshold * 100),
            "used": a.used, "total": a.total,
        }  # fmt: skip
        text = (POOL_TEXT if a.kind == "account" else CAP_TEXT).format(**fields)
        return {
            "kind": a.kind, a.kind: a.name, "resource": a.resource, "threshold": a.threshold,
            "used": round(a.used, 6), "total": round(a.total, 6),
            "period_start": iso(a.period_start, self.ledger.tz), "text": text,
            "subject": (POOL_SUBJECT if a.kind == "account" else CAP_SUBJECT).format(**fields),
        }  # fmt: skip

    def request_message(self, a) -> dict | None:
        """A request for more hours (quota/requests.py; its alert's threshold is its id);
        None once it is decided: nobody needs asking any more."""
        from shangzhuang.quota.requests import Requests  # it builds on the service's handlers

        req = Requests(self.ledger).get(int(a.threshold))
        if req is None or req["state"] != "open":
            return None
        fields = {
            "user": req["user"], "account": req["account"], "hours": req["hours"],
            "resource": req["resource"], "reason": req["reason"],
        }  # fmt: skip
        return {
            "kind": "request", "request": req["id"], "user": req["user"],
            "account": req["account"], "resource": req["resource"], "hours": req["hours"],
            "reason": req["reason"], "text": REQUEST_TEXT.format(**fields),
            "subject": REQUEST_SUBJECT.format(**fields),
        }  # fmt: skip

    def recipients(self, a) -> list[str]:
        """Hub users who get the mail: the account's managers (a pool, a request), or the
        capped user."""
        if a.kind in ("account", "request"):
            return managers_of(self.ledger, a.name)
        return [a.name]

    async def deliver(self) -> int:
        """Send what is pending; mark each sent once every channel took it. How many sent.

        Each alert goes out in a thread that marks each channel as it takes it: a stop of
        the service (its tasks cancelled) never comes between a send and its mark, since
        the process waits for its threads before it exits. Only a kill between the two can
        send one channel twice."""
        sent = 0
        for a in self.pending():
            if await asyncio.to_thread(self._deliver, a):
                sent += 1
        return sent

    def _deliver(self, a) -> bool:
        """Send alert `a` on each channel that hasn't taken it yet; whether all have now."""
        msg = self.message(a)
        done: dict = {"attempts": a.attempts + 1}
        try:
            if msg is not None:  # None: e.g. a request decided while alerts were off
                if self.config.webhook_url and a.posted is None:
                    self._post(msg)
                    self._mark(a.id, posted=time.time())
                to = self.recipients(a)
                if self.config.smtp_host and to and a.mailed is None:
                    self._mail(msg, to)
                    self._mark(a.id, mailed=time.time())
        except Exception as e:  # kept, retried on the next pass
            log.warning("quota alert %s not delivered yet: %s", a.id, e)
            self._mark(a.id, **done)
            return False
        self._mark(a.id, **done, sent=time.time())
        return msg is not None

    def _mark(self, alert_id: int, **values) -> None:
        with self.ledger._write() as conn:
            conn.execute(update(Alert).where(Alert.id == alert_id).values(**values))

    def _post(self, msg: dict) -> None:
        request = urllib.request.Request(
            self.config.webhook_url, data=json.dumps(msg).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=self.timeout):
            pass  # any 2xx: taken (urlopen raises on the others)

    def _mail(self, msg: dict, users: list[str]) -> None:
        mail = EmailMessage()
        mail["From"] = self.config.mail_from
        mail["To"] = ", ".join(f"{u}@{self.config.mail_domain}" for u in users)
        mail["Subject"] = msg["subject"]
        mail.set_content(msg["text"])
        with smtplib.SMTP(self.config.smtp_host, self.config.smtp_port, timeout=self.timeout) as s:
            s.send_message(mail)

    async def tick(self, now: float | None = None) -> int:
        self.check(now)
        return await self.deliver()


async def run_alerts(alerts: Alerts, every: float) -> None:
    """The quota service's alert loop (beside the meter): find crossings, send, repeat."""
    while True:
        try:
            await alerts.tick()
        except Exception:
            log.exception("quota alerts pass failed")
        await asyncio.sleep(every)
