"""The usage page at /services/quota/ and the JSON its charts draw (figures.py).

Who sees what: a user their own usage; an account's managers (`[quota.accounts.X]
managers`) their members'; admins (the `admin:users` scope) everything. The charts are
uPlot (static/uplot, MIT), served by this service: no CDN at run time.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from jupyterhub.utils import url_path_join
from pydantic import Field
from tornado import web

from shangzhuang.i18n import Message, jinja_environment
from shangzhuang.quota import figures, managers, reclaim, refusals, utilisation
from shangzhuang.quota import requests as quota_requests
from shangzhuang.quota.ledger import QuotaError
from shangzhuang.quota.openapi import operation, route
from shangzhuang.quota.periods import iso
from shangzhuang.quota.service import APIHandler
from shangzhuang.services import Input
from shangzhuang.settings import RESOURCES

HERE = Path(__file__).parent
STATIC = HERE / "static"
_jinja = jinja_environment(HERE / "templates")  # translated like the hub's (shangzhuang.i18n)

# How sources and resources are named on the page (plain words, one place to translate).
SOURCE_NAMES = {
    "lab": Message("Lab"), "job": Message("Slurm job"), "dask": Message("Dask worker"),
    "app": Message("App"),
}  # fmt: skip
RESOURCE_NAMES = {"gpu_hours": Message("GPU-hours"), "cpu_hours": Message("CPU-hours")}


_DATE = "an ISO 8601 date or time, such as 2026-11-01 (give since and until together)"


class Window(Input):
    back: int = Field(0, ge=0, le=120, description="periods before this one (0: this one)")
    since: str | None = Field(None, description=_DATE)
    until: str | None = Field(None, description=_DATE)


class DailyQuery(Window):
    user: str | None = Field(None, description="whose days (default: yours)")
    account: str | None = Field(None, description="an account's days (its managers, admins)")


class EstateQuery(Window):
    format: Literal["json", "csv"] = "json"


class CapRequest(Input):
    """A member's personal cap within the account's pool; hours null removes it."""

    user: str
    resource: Literal["gpu_hours", "cpu_hours"]
    hours: float | None = Field(ge=0, description="hours this period, or null for no cap")


class UsageAccess(APIHandler):
    """Access rules of the usage page and its figures."""

    def manages(self, me: dict, account: str) -> bool:
        return managers.manages(self.ledger, me.get("name"), account)

    def may_read_user(self, name: str) -> dict:
        me = self.caller()
        if me.get("name") == name or self.is_admin(me):
            return me
        if self.manages(me, self.ledger.account_of(name)):
            return me
        raise web.HTTPError(403, f"you may read your own usage, not {name}'s")

    def may_manage(self, account: str) -> dict:
        me = self.caller()
        if account not in self.ledger.policy.accounts:
            raise web.HTTPError(404, f"no account {account!r}")
        if not (self.is_admin(me) or self.manages(me, account)):
            raise web.HTTPError(403, f"only managers of {account} and admins may do this")
        return me

    def window(self, query: Window):
        since = self.time_arg("since", query.since)
        until = self.time_arg("until", query.until)
        if since is None and until is None:
            w = figures.window(self.ledger, query.back)
            return w.start, w.end  # the whole period: the chart shows the days to come too
        if since is None or until is None or until <= since:
            raise web.HTTPError(400, "Give both since and until, with since before until.")
        if until - since > 400 * figures.DAY:
            raise web.HTTPError(400, "since and until may be at most 400 days apart.")
        return since, until


class UsagePage(UsageAccess):
    """GET /services/quota/: the page; its script fetches the figures below."""

    def get(self):
        me = self.caller()
        balance = self.ledger.balance(me["name"])
        tz = ZoneInfo(self.ledger.tz)
        resets = datetime.fromtimestamp(balance.period.end, tz) if balance.period.resets else None
        remaining = [
            {"resource": r, "hours": rb.remaining, "limit": rb.binding}
            for r, rb in balance.resources.items()
        ]
        prefix = self.settings["prefix"]
        html = _jinja.get_template("usage.html").render(
            prefix=prefix,
            static=url_path_join(prefix, "static/"),
            me=me["name"],
            account=balance.account,
            remaining=remaining,
            resets=resets,
            managed=figures.managed_by(self.ledger, me["name"])
            if not self.is_admin(me)
            else sorted(self.ledger.policy.accounts),
            admin=self.is_admin(me),
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes)
            else self.xsrf_token,
            # Words for the page's script (JSON): in the reader's language now.
            source_names={k: str(v) for k, v in SOURCE_NAMES.items()},
            resource_names={k: str(v) for k, v in RESOURCE_NAMES.items()},
            reason_names={k: str(v) for k, v in refusals.REASONS.items()},
            site=self.settings["site"].site.name,
            apps=self.settings["site"].apps.enabled,
        )  # fmt: skip
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


class DailyHandler(UsageAccess):
    """GET api/v1/usage/daily?user=NAME|account=NAME&back=N (or since/until): hours per
    day by resource and source. No user or account: your own."""

    @operation("Hours per day by resource and source: yours, a member's or an account's",
               query=DailyQuery)  # fmt: skip
    def get(self, query: DailyQuery):
        user, account = query.user, query.account
        if user is not None and account is not None:
            raise web.HTTPError(400, "give user or account, not both")
        if account is not None:
            self.may_manage(account)
        else:
            user = user or self.caller()["name"]
            self.may_read_user(user)
        since, until = self.window(query)
        data = figures.daily(self.ledger, since, until, user=user, account=account)
        self.write_json({"user": user, "account": account, **data})


class BurnHandler(UsageAccess):
    """GET api/v1/accounts/NAME/burn: members' use, caps, and when the pool runs dry."""

    @operation("An account's pool, members' use and caps, and when the pool runs dry")
    def get(self, account):
        self.may_manage(account)
        self.write_json(figures.burn(self.ledger, account))


class CapsHandler(UsageAccess):
    """POST api/v1/accounts/NAME/caps {"user", "resource", "hours"}: a member's personal cap
    within the pool (hours null removes it). Managers of NAME and admins; a browser needs
    the page's XSRF token (ServiceHandler)."""

    @operation("Set a member's personal cap within the pool (managers, admins)",
               body=CapRequest)  # fmt: skip
    def post(self, account, body: CapRequest):
        me = self.may_manage(account)
        user, resource, hours = body.user, body.resource, body.hours
        if self.ledger.account_of(user) != account:
            raise web.HTTPError(403, f"{user} is not a member of the account {account}")
        pool = self.ledger.accounts_pool()[account].get(resource)
        if hours is not None and pool is not None:
            total = pool["allocated"] + pool["granted"]
            if hours > total:
                raise web.HTTPError(
                    400,
                    f"A cap of {hours:g} {resource} is more than the pool of the account "
                    f"{account}, {total:g} {resource} this period.",
                )
        self.ledger.set_cap(user, resource, None if hours is None else float(hours), me["name"])
        self.write_json(self.ledger.balance(user).as_dict())


class ManagerChange(Input):
    """Make a user a manager of the account (manager true), or no longer one (false)."""

    user: str = Field(min_length=1, max_length=100)
    manager: bool


class ManagersHandler(UsageAccess):
    """GET|POST api/v1/accounts/NAME/managers: who manages NAME (its managers, admins);
    admins add and remove managers (those of the config stay: quota/managers.py)."""

    def answer(self, account: str) -> None:
        configured = self.ledger.policy.accounts[account].managers
        self.write_json({
            "account": account, "managers": managers.managers_of(self.ledger, account),
            "from_config": sorted(configured),
        })  # fmt: skip

    @operation("An account's managers (its managers, admins)")
    def get(self, account):
        self.may_manage(account)
        self.answer(account)

    @operation("Make a user a manager of an account, or no longer one (admins)",
               body=ManagerChange)  # fmt: skip
    def post(self, account, body: ManagerChange):
        me = self.admin()
        if account not in self.ledger.policy.accounts:
            raise web.HTTPError(404, f"no account {account!r}")
        if body.manager and body.user not in self.ledger.users():
            raise web.HTTPError(400, str(Message(
                "No user {user} is known to the quota service yet: they appear at their "
                "first sign-in.", user=body.user,
            )))  # fmt: skip
        try:
            managers.set_manager(self.ledger, account, body.user, body.manager, me["name"])
        except QuotaError as e:
            raise web.HTTPError(400, str(e)) from None
        self.answer(account)


class ExemptChange(Input):
    """Exempt a user from idle GPU reclaim (exempt true), or no longer (false)."""

    user: str = Field(min_length=1, max_length=100)
    exempt: bool


class ReclaimExemptHandler(UsageAccess):
    """GET|POST api/v1/reclaim/exempt: who is exempt from idle GPU reclaim (admins); admins
    exempt users and take exemptions back (those of the config stay: quota/reclaim.py)."""

    def answer(self) -> None:
        policy = self.site.quota.reclaim
        self.write_json({
            "exempt": sorted(reclaim.exempted(self.ledger, policy)),
            "from_config": sorted(policy.exempt),
        })  # fmt: skip

    @operation("The users exempt from idle GPU reclaim (admins)")
    def get(self):
        self.admin()
        self.answer()

    @operation("Exempt a user from idle GPU reclaim, or no longer (admins)", body=ExemptChange)
    def post(self, body: ExemptChange):
        me = self.admin()
        if body.exempt and body.user not in self.ledger.users():
            raise web.HTTPError(400, str(Message(
                "No user {user} is known to the quota service yet: they appear at their "
                "first sign-in.", user=body.user,
            )))  # fmt: skip
        try:
            reclaim.set_exempt(self.ledger, self.site.quota.reclaim, body.user, body.exempt,
                               me["name"])  # fmt: skip
        except QuotaError as e:
            raise web.HTTPError(400, str(e)) from None
        self.answer()


class GpusQuery(Window):
    user: str | None = Field(None, description="whose GPU sessions (default: yours)")


class GpusHandler(UsageAccess):
    """GET api/v1/usage/gpus?user=NAME&back=N (or since/until): a user's GPU sessions,
    each one's utilisation readings (epoch seconds, %) and efficiency, and the total."""

    @operation("GPU utilisation and efficiency of a user's GPU sessions", query=GpusQuery)
    def get(self, query: GpusQuery):
        user = query.user or self.caller()["name"]
        self.may_read_user(user)
        since, until = self.window(query)
        with self.ledger._read() as conn:
            sessions = utilisation.sessions_of(conn, user, since, until)
            total = utilisation.efficiency_by(conn, "user", since, until, names=[user])
        self.write_json({
            "user": user, "since": since, "until": until,
            "idle_percent": utilisation.IDLE_PERCENT, "sessions": sessions,
            "total": total.get(user, utilisation.Efficiency()).as_dict(),
        })  # fmt: skip


class EstateHandler(UsageAccess):
    """GET api/v1/estate?back=N (or since/until)&format=json|csv: admins only."""

    # The CSV: one row per account and top user (hours), then the refusals (per reason over
    # the window, day "", and per reason per day), the users refused most, and what waits
    # now in the backend's queue (per reason).
    COLUMNS = ["kind", "name", *RESOURCES, "day", "count"]

    @operation("Every account, the top users, the stops at zero, the starts refused and "
               "the queue now (admins), JSON or CSV", query=EstateQuery, csv=True)  # fmt: skip
    def get(self, query: EstateQuery):
        self.admin()
        since, until = self.window(query)
        data = figures.estate(self.ledger, since, until)
        data["queue"] = refusals.waiting_now(
            self.settings["sources"], lambda t: iso(t, self.ledger.tz)
        )
        with self.ledger._read() as conn:  # GPU-hours read, and those under 10% (idle)
            gpus = utilisation.efficiency_by(conn, "account", since, until)
        data["gpu_utilisation"] = {
            "accounts": {a: e.as_dict() for a, e in sorted(gpus.items())},
            "idle_gpu_hours": round(sum(e.idle_gpu_hours for e in gpus.values()), 6),
            "gpu_hours_read": round(sum(e.gpu_hours for e in gpus.values()), 6),
            "idle_percent": utilisation.IDLE_PERCENT,
        }
        if query.format == "json":
            return self.write_json(data)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="estate.csv"')
        self.finish(self.csv(data))

    def csv(self, data: dict) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.COLUMNS)
        w.writeheader()
        for name, hours in data["accounts"].items():
            w.writerow({"kind": "account", "name": name, **hours})
        for row in data["top_users"]:
            w.writerow({"kind": "user", "name": row["user"], **{r: row[r] for r in RESOURCES}})
        refused = data["refusals"]
        for reason, n in refused["by_reason"].items():
            w.writerow({"kind": "refusals", "name": reason, "count": n})
        for reason, counts in refused["per_day"].items():
            for day, n in zip(refused["days"], counts, strict=True):
                if n:
                    w.writerow({"kind": "refusals", "name": reason, "day": day, "count": n})
        for row in refused["top_users"]:
            w.writerow({"kind": "refused_user", "name": row["user"], "count": row["refusals"]})
        for reason, n in (data["queue"] or {}).get("by_reason", {}).items():
            w.writerow({"kind": "waiting", "name": reason, "count": n})
        return buf.getvalue()


# The page's API v1 paths (documented with the service's, openapi.json) and handlers.
API = [
    ("/usage/daily", DailyHandler),
    ("/usage/gpus", GpusHandler),
    ("/accounts/{account}/burn", BurnHandler),
    ("/accounts/{account}/caps", CapsHandler),
    ("/accounts/{account}/managers", ManagersHandler),
    ("/reclaim/exempt", ReclaimExemptHandler),
    ("/estate", EstateHandler),
    *quota_requests.API,  # asking for more (quota/requests.py)
]


def handlers(prefix: str) -> list:
    api = url_path_join(prefix, "api/v1")
    return [
        (prefix, UsagePage),
        *((api + route(path), handler) for path, handler in API),
        (url_path_join(prefix, "static/(.*)"), web.StaticFileHandler, {"path": str(STATIC)}),
    ]
