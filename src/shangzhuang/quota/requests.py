"""Asking for more: a user requests more hours (on the usage page, or from a quota refusal
that links to it); the managers of their account and the admins see it on their usage page
and get an alert (quota/alerts.py's channels); one of them approves it, which is a grant
(Ledger.grant, recorded with who and why), or declines it with a reason the user reads.

Who may: a user asks for themselves and reads only their own requests; a manager reads and
decides their accounts' requests; admins all of them; nobody decides their own. A browser
needs the page's XSRF token on every POST (services.ServiceHandler).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field
from sqlalchemy import insert, or_, select, update
from tornado import web

from shangzhuang.i18n import Message
from shangzhuang.quota.alerts import sends
from shangzhuang.quota.db import Alert, QuotaRequest
from shangzhuang.quota.ledger import Ledger, QuotaError
from shangzhuang.quota.managers import managed_by
from shangzhuang.quota.openapi import operation
from shangzhuang.quota.periods import iso
from shangzhuang.quota.service import APIHandler
from shangzhuang.services import Input

OPEN_PER_USER = 3  # open requests a user may have at once: managers' mailboxes stay theirs
ALERT_KIND = "request"  # its alerts row: `threshold` holds the request's id (once each)


class Ask(Input):
    """More hours of one resource, and why."""

    resource: Literal["gpu_hours", "cpu_hours"]
    hours: float = Field(gt=0, le=100000, description="hours more this period")
    reason: str = Field(min_length=1, max_length=400, description="what the hours are for")


class Decision(Input):
    """Why a request is approved (optional) or declined (required: the user reads it)."""

    reason: str = Field("", max_length=400)


class RequestsQuery(Input):
    state: Literal["open", "all"] = "open"


class Requests:
    """The quota_requests table: asking, listing, deciding.

    `alerting`: the site sends alerts (quota.alerts.sends). Without a webhook or an SMTP
    server a request is on the usage page only: no alert row is queued for it, since none
    would ever be sent (they piled up unsent)."""

    def __init__(self, ledger: Ledger, alerting: bool = True):
        self.ledger = ledger
        self.alerting = alerting

    def ask(self, user: str, resource: str, hours: float, reason: str, now: float | None = None):
        """Record `user`'s request and its alert to the managers; the request as a dict."""
        now = time.time() if now is None else now
        account = self.ledger.account_of(user)
        with self.ledger._write() as conn:
            open_ = conn.execute(
                select(QuotaRequest.id).where(
                    QuotaRequest.user == user, QuotaRequest.state == "open"
                )
            ).all()
            if len(open_) >= OPEN_PER_USER:
                raise QuotaError(
                    str(Message(
                        "You have {n} requests waiting already; wait for an answer to one "
                        "before asking again.", n=len(open_),
                    ))
                )  # fmt: skip
            rid = conn.execute(
                insert(QuotaRequest).values(
                    user=user, account=account, resource=resource, hours=hours,
                    reason=reason.strip(), created=now, state="open",
                )
            ).inserted_primary_key[0]  # fmt: skip
            if self.alerting:
                conn.execute(
                    insert(Alert).values(
                        period_start=self.ledger.period(now).start, kind=ALERT_KIND,
                        name=account, resource=resource, threshold=float(rid), used=hours,
                        total=0.0, created=now, sent=None, attempts=0,
                    )
                )  # fmt: skip
        return self.get(rid)

    def get(self, rid: int) -> dict | None:
        with self.ledger._read() as conn:
            row = conn.execute(select(QuotaRequest).where(QuotaRequest.id == rid)).first()
        return self._dict(row) if row else None

    def listed(
        self, *, user: str | None = None, accounts: list[str] | None = None, everyone=False,
        state: str = "open",
    ) -> list[dict]:  # fmt: skip
        """Requests of `user`, or of `accounts`, or of everyone; newest first."""
        q = select(QuotaRequest).order_by(QuotaRequest.id.desc()).limit(500)
        if state == "open":
            q = q.where(QuotaRequest.state == "open")
        if not everyone:
            who = []
            if user is not None:
                who.append(QuotaRequest.user == user)
            if accounts:
                who.append(QuotaRequest.account.in_(accounts))
            if not who:
                return []
            q = q.where(or_(*who))
        with self.ledger._read() as conn:
            return [self._dict(r) for r in conn.execute(q).all()]

    def decide(self, rid: int, by: str, approve: bool, answer: str, now: float | None = None):
        """Approve (a grant) or decline request `rid`; it must still be open."""
        now = time.time() if now is None else now
        t = QuotaRequest.__table__
        with self.ledger._write() as conn:  # one decision, even with two deciders at once
            taken = conn.execute(
                update(t).where(t.c.id == rid, t.c.state == "open").values(state="deciding")
            ).rowcount
        if not taken:
            raise QuotaError(str(Message("This request was decided already.")))
        req = self.get(rid)
        grant_id = None
        if approve:
            try:
                grant_id = self._grant(req, by, answer, now)["id"]
            except Exception:
                with self.ledger._write() as conn:
                    conn.execute(update(t).where(t.c.id == rid).values(state="open"))
                raise
        with self.ledger._write() as conn:
            conn.execute(
                update(t).where(t.c.id == rid).values(
                    state="approved" if approve else "declined", decided_by=by,
                    decided_at=now, answer=answer.strip(), grant_id=grant_id,
                )
            )  # fmt: skip
        return self.get(rid)

    def _grant(self, req: dict, by: str, answer: str, now: float) -> dict:
        """The grant that answers `req`: to the user's personal cap where one binds them on
        that resource, else to their account's pool."""
        user, resource = req["user"], req["resource"]
        capped = self.ledger.balance(user, now).resources[resource].personal is not None
        reason = f"Request {req['id']} from {user}: {req['reason']}"
        if answer.strip():
            reason += f" (approved: {answer.strip()})"
        return self.ledger.grant(
            by=by, resource=resource, amount=req["hours"], reason=reason[:500], now=now,
            **({"user": user} if capped else {"account": req["account"]}),
        )  # fmt: skip

    def _dict(self, r) -> dict:
        tz = self.ledger.tz
        return {
            "id": r.id, "user": r.user, "account": r.account, "resource": r.resource,
            "hours": r.hours, "reason": r.reason, "created": iso(r.created, tz),
            "state": r.state, "decided_by": r.decided_by,
            "decided_at": iso(r.decided_at, tz) if r.decided_at else None,
            "answer": r.answer, "grant": r.grant_id,
        }  # fmt: skip


class RequestsAccess(APIHandler):
    """Who reads and decides which requests."""

    @property
    def requests(self) -> Requests:
        return Requests(self.ledger, alerting=sends(self.site.quota.alerts))

    def deciding_for(self, me: dict) -> tuple[list[str], bool]:
        """The accounts whose requests `me` decides, and whether that is every account."""
        if self.is_admin(me):
            return [], True
        return managed_by(self.ledger, me["name"]), False


class RequestsHandler(RequestsAccess):
    """GET api/v1/requests?state=open|all: yours, and those you may decide.
    POST api/v1/requests {"resource", "hours", "reason"}: ask for more, for yourself."""

    @operation("Your requests for more hours, and those you may decide", query=RequestsQuery)
    def get(self, query: RequestsQuery):
        me = self.caller()
        accounts, everyone = self.deciding_for(me)
        mine = self.requests.listed(user=me["name"], state=query.state)
        to_decide = []
        if accounts or everyone:
            to_decide = [
                r
                for r in self.requests.listed(
                    accounts=accounts, everyone=everyone, state=query.state
                )
                if r["user"] != me["name"]
            ]
        self.write_json({"mine": mine, "to_decide": to_decide})

    @operation("Ask for more hours this period (for yourself)", body=Ask, status=201)
    def post(self, body: Ask):
        me = self.caller()
        if me.get("kind", "user") != "user":
            raise web.HTTPError(403, "only a user may ask for more hours, for themselves")
        try:
            req = self.requests.ask(me["name"], body.resource, body.hours, body.reason)
        except QuotaError as e:
            raise web.HTTPError(409, str(e)) from None
        self.write_json(req, status=201)


class DecideHandler(RequestsAccess):
    """POST api/v1/requests/ID/approve|decline {"reason"}: a manager of the request's
    account or an admin, never the one who asked."""

    decision: Literal["approve", "decline"] = "approve"

    @operation("Approve (a grant) or decline a request for more hours (managers, admins)",
               body=Decision)  # fmt: skip
    def post(self, rid, body: Decision):
        decision = self.decision
        me = self.caller()
        # isascii: str.isdigit() holds for '²', which int() refuses (the fuzzer found a 500)
        req = self.requests.get(int(rid)) if rid.isascii() and rid.isdigit() else None
        accounts, everyone = self.deciding_for(me)
        if req is None or not (everyone or req["account"] in accounts):
            # the same answer for "no such request" and "not yours to see": ids don't leak
            raise web.HTTPError(404, str(Message("No request {id} that you may decide.", id=rid)))
        if req["user"] == me["name"]:
            raise web.HTTPError(
                403, str(Message("You may not decide your own request: another manager of "
                                 "the account or an admin must."))
            )  # fmt: skip
        if decision == "decline" and not body.reason.strip():
            why = Message("Say why the request is declined: the user reads it.")
            raise web.HTTPError(400, str(why))
        try:
            done = self.requests.decide(int(rid), me["name"], decision == "approve", body.reason)
        except QuotaError as e:
            raise web.HTTPError(409, str(e)) from None
        self.write_json(done)


class DeclineHandler(DecideHandler):
    decision = "decline"


# The API v1 paths (documented with the service's, openapi.json) and their handlers.
API = [
    ("/requests", RequestsHandler),
    ("/requests/{rid}/approve", DecideHandler),
    ("/requests/{rid}/decline", DeclineHandler),
]
