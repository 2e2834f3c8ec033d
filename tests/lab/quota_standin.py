"""A small real Tornado server that stands in for the quota service, so that the Lab server
extension can be tested without a hub.

It answers the parts of API v1 the extension calls (`GET me`, `GET usage` as JSON and CSV)
the way src/shangzhuang/quota/service.py does, checks the session's token, records every
request, and can be made to fail: down (port closed), slow, or answering an error.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

TOKEN = "session-token-of-alice"
COLUMNS = ("consumer", "user", "account", "resource", "source", "start", "end", "amount")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def limit(allocated: float, used: float, granted: float = 0.0) -> dict:
    return {"allocated": allocated, "granted": granted, "used": used,
            "remaining": round(allocated + granted - used, 6)}  # fmt: skip


def balance(user: str = "alice", **kw) -> dict:
    """A GET me answer shaped like ledger.Balance.as_dict()."""
    me = {
        "user": user,
        "account": "tsinghua",
        "state": "ok",
        "period": {"start": "2026-11-01T00:00:00+08:00", "resets_at": "2026-12-01T00:00:00+08:00"},
        "resources": {
            "gpu_hours": {
                "remaining": 12.4,
                "account": limit(500, 100),
                "personal": limit(40, 27.6),
            },
            "cpu_hours": {"remaining": 310.75, "account": limit(20000, 19689.25), "personal": None},
        },
        "exhausted_since": None,
        "running": [],
    }
    me.update(kw)
    return me


@dataclass
class Charge:
    consumer: str
    user: str
    resource: str
    start: float
    end: float
    amount: float

    def as_dict(self) -> dict:
        return {"consumer": self.consumer, "user": self.user, "account": "tsinghua",
                "resource": self.resource, "source": "lab", "start": iso(self.start),
                "end": iso(self.end), "amount": self.amount}  # fmt: skip


@dataclass
class QuotaStandIn:
    me: dict = field(default_factory=balance)
    charges: list[Charge] = field(default_factory=list)
    fail_status: int | None = None  # answer every request with this status
    delay: float = 0.0  # seconds before answering
    requests: list = field(default_factory=list)  # (path, query args, Authorization header)
    port: int = 0
    server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/quota/"

    def start(self) -> None:
        sock, self.port = bind_unused_port()
        app = web.Application(
            [
                (r"/services/quota/api/v1/me", MeHandler, {"standin": self}),
                (r"/services/quota/api/v1/usage", UsageHandler, {"standin": self}),
            ]
        )
        self.server = HTTPServer(app)
        self.server.add_sockets([sock])

    def stop(self) -> None:
        """Down: the port no longer accepts connections."""
        if self.server:
            self.server.stop()
            self.server = None


class Handler(web.RequestHandler):
    def initialize(self, standin: QuotaStandIn):
        self.standin = standin

    async def prepare(self):
        s = self.standin
        s.requests.append(
            (self.request.path, {k: self.get_argument(k) for k in self.request.arguments},
             self.request.headers.get("Authorization"))
        )  # fmt: skip
        if s.delay:
            await asyncio.sleep(s.delay)
        if self.request.headers.get("Authorization") != f"token {TOKEN}":
            self.fail(403, "a JupyterHub token or login is required")
        if s.fail_status:
            self.fail(s.fail_status, "the ledger is locked")

    def fail(self, status: int, message: str):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status, "message": message}))
        raise web.Finish()


class MeHandler(Handler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.standin.me))


class UsageHandler(Handler):
    def get(self):
        user = self.get_argument("user", "alice")
        since = self.get_argument("since", None)
        since_t = datetime.fromisoformat(since).timestamp() if since else None
        limit_n = int(self.get_argument("limit", "100000"))
        rows = sorted(
            (c for c in self.standin.charges
             if c.user == user and (since_t is None or c.end > since_t)),
            key=lambda c: c.start,
        )[:limit_n]  # fmt: skip
        records = [c.as_dict() for c in rows]
        if self.get_argument("format", "json") == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(records)
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", 'attachment; filename="usage.csv"')
            self.finish(buf.getvalue())
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"user": user, "records": records}))
