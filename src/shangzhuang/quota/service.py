"""The quota service: a JupyterHub-managed Tornado service at /services/quota/.

It runs the meter every `quota.sample_seconds` and answers API v1 (see openapi.py).
Users and notebooks authenticate with JupyterHub tokens or the hub's OAuth cookie.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import logging
import math
import os
import time
from datetime import datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

from jupyterhub.services.auth import (
    HubOAuthCallbackHandler,
)
from jupyterhub.utils import url_path_join
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tornado import web

from shangzhuang.apps.hub_api import HubAPI
from shangzhuang.i18n import request_language
from shangzhuang.quota import open_ledger, refusals
from shangzhuang.quota.alerts import Alerts, run_alerts
from shangzhuang.quota.api_client import HUB_CLIENT
from shangzhuang.quota.consumers import Consumer
from shangzhuang.quota.ledger import Ledger, QuotaError, rates_of
from shangzhuang.quota.meter import Meter, stops_in
from shangzhuang.quota.openapi import (
    BALANCE,
    BALANCE_PAGE,
    AccountRequest,
    CloseRequest,
    GrantRequest,
    OpenRequest,
    RatesRequest,
    RefusalRequest,
    UsageQuery,
    UsersQuery,
    document,
    operation,
    route,
)
from shangzhuang.quota.periods import iso
from shangzhuang.quota.reclaim import Reclaim
from shangzhuang.quota.sources import sources_for
from shangzhuang.services import APIHandler as JSONHandler
from shangzhuang.services import is_admin, run_service
from shangzhuang.settings import RESOURCES, Settings, load_settings

log = logging.getLogger("shangzhuang.quota")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.remaining = Gauge(
            "shangzhuang_quota_account_remaining_hours",
            "Hours left in each account's pool this period",
            ["account", "resource"], registry=self.registry,
        )  # fmt: skip
        self.charges = Counter(
            "shangzhuang_quota_charges_total", "Charge rows written by the meter",
            registry=self.registry,
        )  # fmt: skip
        self.stops = Counter(
            "shangzhuang_quota_enforced_stops_total", "Consumers stopped at zero quota",
            registry=self.registry,
        )  # fmt: skip
        self.tick = Histogram(
            "shangzhuang_quota_meter_tick_seconds", "Duration of one meter tick",
            registry=self.registry,
        )  # fmt: skip
        self.idle_gpu_hours = Counter(
            "shangzhuang_quota_idle_gpu_hours",
            "GPU-hours read under 10% utilisation, per account (quota/utilisation.py)",
            ["account"], registry=self.registry,
        )  # fmt: skip


class APIHandler(JSONHandler):
    """JSON in, JSON out; errors as services.Error; no anonymous access."""

    @property
    def ledger(self) -> Ledger:
        return self.settings["ledger"]

    @property
    def site(self) -> Settings:
        return self.settings["site"]

    def is_admin(self, model: dict) -> bool:
        return is_admin(model)

    def balance(self, user: str) -> dict:
        """The user's balance; each running consumer says when the meter stops it at zero
        (`stops_in_seconds`, null: it does not), by the meter's own rule, and a session
        its `server` and `started_ms` (so nobody parses consumer ids)."""
        now = time.time()
        balance = self.ledger.balance(user, now)
        answer = balance.as_dict()
        for entry in answer["running"]:
            consumer = Consumer.parse(entry["consumer"])
            if consumer.source != "job":  # a session: which server, started when (ms)
                entry.update(server=consumer.server, started_ms=consumer.started_ms)
            entry["stops_in_seconds"] = stops_in(
                balance, entry.get("cost_per_hour") or {}, self.site.quota.grace_seconds, now
            )
        # Idle GPU reclaim (quota/reclaim.py): a warned session says when and why.
        tz = self.ledger.tz
        warnings = self.settings["reclaim"].warnings(user)
        answer["reclaimed"] = [  # stopped for idle GPUs (the last day): why, for the home page
            {"server": w.server, "stopped_at": iso(w.stopped_at, tz),
             "idle_since": iso(w.idle_since, tz),
             "threshold_percent": self.site.quota.reclaim.idle_threshold_percent}
            for w in sorted(warnings.values(), key=lambda w: w.stopped_at or 0)
            if w.stopped_at is not None
        ]  # fmt: skip
        for entry in answer["running"]:
            warning = warnings.get(entry["consumer"])
            entry["reclaim"] = None
            if warning is not None and warning.stopped_at is None:
                entry["server"] = warning.server  # a Slurm Lab session's job: its server
                entry["reclaim"] = warning.as_dict(
                    self.site.quota.reclaim, now, lambda t: iso(t, self.ledger.tz)
                )
                entry["reclaim"]["continue_url"] = (
                    f"{self.settings['prefix']}continue-on-cpu?server={quote(entry['server'])}"
                )
        return answer

    def is_hub(self, model: dict) -> bool:
        """Is the caller the hub itself (its token-only service, api_client.HUB_CLIENT)?"""
        return model.get("kind") == "service" and model.get("name") == HUB_CLIENT

    def hub_only(self) -> dict:
        me = self.caller()
        if not self.is_hub(me):
            raise web.HTTPError(403, "only the hub may do this")
        return me

    def self_or_admin(self, name: str) -> dict:
        me = self.caller()
        if me.get("name") != name and not (self.is_admin(me) or self.is_hub(me)):
            raise web.HTTPError(403, f"you may read your own quota, not {name}'s")
        return me

    def admin(self) -> dict:
        me = self.caller()
        if not self.is_admin(me):
            raise web.HTTPError(403, "only admins may do this")
        return me

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise web.HTTPError(400, f"{name} must be an integer, not {raw!r}") from None
        if not lo <= value <= hi:
            raise web.HTTPError(400, f"{name} must be between {lo} and {hi}")
        return value

    def time_arg(self, name: str, raw: str | None = None) -> float | None:
        """The query's NAME (or RAW, its value already read) as a timestamp."""
        raw = self.get_argument(name, None) if raw is None else raw
        if raw is None or raw == "":
            return None
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise web.HTTPError(
                400, f"{name} must be an ISO 8601 date or time, such as 2026-11-01, not {raw!r}"
            ) from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=ZoneInfo(self.site.site.timezone))
        return t.timestamp()


class MeHandler(APIHandler):
    @operation("My balance", answer=BALANCE)
    def get(self):
        me = self.caller()
        self.write_json(self.balance(me["name"]))


class UserHandler(APIHandler):
    @operation("A user's balance (self or admin)", answer=BALANCE)
    def get(self, name):
        self.self_or_admin(name)
        self.write_json(self.balance(name))


class UserAccountHandler(APIHandler):
    @operation("Set a user's account from their groups (the hub, at login and spawn)",
               body=AccountRequest)  # fmt: skip
    def post(self, name, body: AccountRequest):
        self.hub_only()
        account = self.ledger.account_for(name, body.groups)
        self.ledger.set_account(name, account)
        self.write_json({"user": name, "account": account})


class AffordableHandler(APIHandler):
    @operation("Which profiles a user can start now (self, admin or the hub)")
    def get(self, name):
        self.self_or_admin(name)
        self.write_json(affordable(self.ledger, self.site, name))

    @operation("Can the balance pay for units of work at these rates, and how many (self, "
               "admin or the hub)", body=RatesRequest)  # fmt: skip
    def post(self, name, body: RatesRequest):
        self.self_or_admin(name)
        self.write_json(affords_rates(self.ledger, name, body.rates))


def affords_rates(ledger: Ledger, user: str, rates: dict[str, float]) -> dict:
    """The spawn rule for any work (a cluster's worker jobs): what one unit at `rates`
    lacks for `min_minutes_to_spawn`, and how many units the balance pays for (null: not
    limited)."""
    minutes = ledger.policy.min_minutes_to_spawn
    balance = ledger.balance(user)
    short = balance.can_afford(rates, minutes / 60)
    units = [
        max(0.0, left) / per_unit
        for r, rate in rates.items()
        if (per_unit := rate * minutes / 60) > 0 and (left := balance.remaining(r)) is not None
    ]
    # A rate so small that the balance pays for more units than a float holds limits nothing.
    fits = [math.floor(n) for n in units if math.isfinite(n)]
    return {
        "user": user, "account": balance.account, "min_minutes": minutes,
        "affordable": not short, "short": {r: balance.remaining(r) for r in short},
        "fits": min(fits) if fits else None,
        "resets_at": balance.as_dict()["period"]["resets_at"],
    }  # fmt: skip


def affordable(ledger: Ledger, site: Settings, user: str) -> dict:
    """The spawn rule, in one place: a profile starts only when the balance pays for it
    for `quota.min_minutes_to_spawn`; else a message that says what is left, what it
    costs and when the quota resets (the hub's words, hub.form.quota_refusal: English in
    this JSON, the reader's language where the hub shows it)."""
    from shangzhuang.hub.form import quota_refusal

    minutes = ledger.policy.min_minutes_to_spawn
    balance = ledger.balance(user)
    reply = {"user": user, "account": balance.account, "min_minutes": minutes,
             "resets_at": balance.as_dict()["period"]["resets_at"], "profiles": {}}  # fmt: skip
    for profile in site.profiles:
        short = balance.can_afford(rates_of(profile), minutes / 60)
        terms = {"affordable": not short, "short": {r: balance.remaining(r) for r in short},
                 "message": ""}  # fmt: skip
        reply["profiles"][profile.name] = terms
        if short:  # the Message's own value is its English text
            terms["message"] = str.__str__(quota_refusal(profile, reply))
    return reply


class SetApartHandler(APIHandler):
    @operation("Keep a deleted user's record apart under a tombstone name (the hub)")
    def post(self, name):
        self.hub_only()
        self.write_json({"user": name, "tombstone": self.ledger.set_apart(name)})


class ConsumersHandler(APIHandler):
    @operation("Start metering a session (the hub, at spawn)", body=OpenRequest, status=201)
    def post(self, body: OpenRequest):
        self.hub_only()
        consumer = self.consumer(body.consumer)
        try:
            profile = self.site.profile(body.profile)
        except KeyError as e:
            raise web.HTTPError(400, f"profile: {e.args[0]}") from None
        account = self.ledger.account_of(body.user)
        opened = self.ledger.open(
            str(consumer), user=body.user, account=account, source=consumer.source,
            started=body.started, rates=rates_of(profile), profile=profile.name,
        )  # fmt: skip
        self.write_json(
            {"consumer": str(consumer), "account": account, "opened": opened}, status=201
        )

    def consumer(self, text: str) -> Consumer:
        try:
            return Consumer.parse(text)
        except ValueError as e:
            raise web.HTTPError(400, f"consumer: {e}") from None


class CloseHandler(ConsumersHandler):
    @operation("Stop metering a session (the hub, at stop)", body=CloseRequest)
    def post(self, body: CloseRequest):
        self.hub_only()
        consumer = str(self.consumer(body.consumer))
        self.ledger.close(consumer, body.end)
        self.write_json({"consumer": consumer, "closed": True})


class RefusalsHandler(APIHandler):
    @operation("Record a start the hub refused, for the estate's counts (the hub)",
               body=RefusalRequest, status=201)  # fmt: skip
    def post(self, body: RefusalRequest):
        self.hub_only()  # a user posting these would flood the counts or frame another
        now = time.time()
        if body.at is not None and not now - refusals.LATE_SECONDS <= body.at <= now + 60:
            raise web.HTTPError(400, "at: not within the last day")
        refusals.record(self.ledger, body.user, body.reason, body.profile, body.resources,
                        now=body.at, once=body.at is not None)  # fmt: skip
        self.write_json({"user": body.user, "reason": body.reason}, status=201)


class UsersHandler(APIHandler):
    @operation("Every user's balance (admin), a page at a time", query=UsersQuery,
               answer=BALANCE_PAGE)  # fmt: skip
    def get(self, query: UsersQuery):
        self.admin()
        offset, limit = query.offset, query.limit
        names = self.ledger.users()
        page = names[offset : offset + limit]
        balances = self.ledger.balances(page)
        self.write_json(
            {
                "items": [balances[n].as_dict() for n in page],
                "total": len(names),
                "offset": offset,
                "limit": limit,
            }
        )


class AccountHandler(APIHandler):
    @operation("An account's pool (its members or admin)")
    def get(self, name):
        me = self.caller()
        if name not in self.site.quota.accounts:
            raise web.HTTPError(404, f"no account {name!r}")
        if not self.is_admin(me) and self.ledger.account_of(me["name"]) != name:
            raise web.HTTPError(403, f"you are not a member of {name}")
        self.write_json(self.ledger.account_pool(name))


class GrantsHandler(APIHandler):
    @operation("Grants of this period and later (admin)", answer={"type": "array"})
    def get(self):
        self.admin()
        period = self.ledger.period()
        self.write_json([_grant_dict(g, self.ledger.tz) for g in self.ledger.grants(period.start)])

    @operation("Top up an account or a user's personal cap (admin)", body=GrantRequest,
               status=201)  # fmt: skip
    def post(self, body: GrantRequest):
        me = self.admin()
        try:
            grant = self.ledger.grant(
                by=me["name"], resource=body.resource, amount=body.amount, reason=body.reason,
                user=body.user, account=body.account,
            )  # fmt: skip
        except QuotaError as e:
            raise web.HTTPError(400, str(e)) from None
        self.write_json(grant, status=201)


class UsageHandler(APIHandler):
    COLUMNS = ("consumer", "user", "account", "resource", "source", "start", "end", "amount")

    @operation("Charged intervals (own, or anyone's for admins), JSON or CSV",
               query=UsageQuery, csv=True)  # fmt: skip
    def get(self, query: UsageQuery):
        me = self.caller()
        user = query.user
        if user is None:
            user = None if self.is_admin(me) else me["name"]
        elif user != me["name"] and not self.is_admin(me):
            raise web.HTTPError(403, f"you may read your own usage, not {user}'s")
        since, until = self.time_arg("since", query.since), self.time_arg("until", query.until)
        rows = self.ledger.usage(
            user=user, since=since, until=until, limit=query.limit,
            newest_first=query.order == "newest",
        )  # fmt: skip
        tz = self.ledger.tz
        records = [
            {
                "consumer": r.consumer, "user": r.user, "account": r.account,
                "resource": r.resource, "source": r.source, "start": iso(r.start, tz),
                "end": iso(r.end, tz), "amount": round(r.amount, 9),
            }
            for r in rows
        ]  # fmt: skip
        if query.format == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.COLUMNS)
            w.writeheader()
            w.writerows(records)
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", 'attachment; filename="usage.csv"')
            self.finish(buf.getvalue())
        else:
            self.write_json({"user": user, "records": records})


class OpenAPIHandler(APIHandler):
    @operation("This document")
    def get(self):
        # The usage page's API and "continue on CPU" are documented here too.
        from shangzhuang.quota import continue_on_cpu, pages

        self.write_json(document(self.settings["prefix"], API + pages.API + continue_on_cpu.API))


class MetricsHandler(APIHandler):
    def get(self):
        me = self.caller()
        if not self.is_admin(me) and "read:metrics" not in me.get("scopes", ()):
            raise web.HTTPError(403, "metrics need an admin token or the read:metrics scope")
        metrics: Metrics = self.settings["metrics"]
        for account, pool in self.ledger.accounts_pool().items():
            for resource, limit in pool.items():
                metrics.remaining.labels(account, resource).set(limit["remaining"])
            metrics.idle_gpu_hours.labels(account)  # at 0 until its first idle reading
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(generate_latest(metrics.registry))


def _grant_dict(g, tz: str) -> dict:
    return {
        "id": g.id, "at": iso(g.at, tz), "by": g.by, g.kind: g.name, "resource": g.resource,
        "amount": g.amount, "reason": g.reason,
    }  # fmt: skip


# API v1: each path (as its OpenAPI document names it) and its handler.
API = [
    ("/me", MeHandler),
    ("/users", UsersHandler),
    ("/users/{name}", UserHandler),
    ("/users/{name}/account", UserAccountHandler),
    ("/users/{name}/affordable", AffordableHandler),
    ("/users/{name}/set-apart", SetApartHandler),
    ("/consumers", ConsumersHandler),
    ("/consumers/close", CloseHandler),
    ("/refusals", RefusalsHandler),
    ("/accounts/{name}", AccountHandler),
    ("/grants", GrantsHandler),
    ("/usage", UsageHandler),
    ("/openapi.json", OpenAPIHandler),
]


def make_app(
    settings: Settings,
    ledger: Ledger,
    prefix: str,
    metrics: Metrics,
    hub: HubAPI | None = None,
    sources: list | None = None,
) -> web.Application:
    """HUB: the hub's API with this service's token ("continue on CPU" restarts sessions).
    SOURCES: the meter's, whose queue the estate shows (refusals.waiting_now)."""
    from shangzhuang.quota import continue_on_cpu, pages  # they build on APIHandler
    from shangzhuang.quota.figures import RefusalsCollector, UsedHoursCollector

    # used hours and refusals, read from the ledger at each scrape
    metrics.registry.register(UsedHoursCollector(ledger))
    metrics.registry.register(RefusalsCollector(ledger))
    api = url_path_join(prefix, "api/v1")
    return web.Application(
        [
            *pages.handlers(prefix),
            *continue_on_cpu.handlers(prefix),
            *((api + route(path), handler) for path, handler in API + continue_on_cpu.API),
            (url_path_join(prefix, "metrics"), MetricsHandler),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        ledger=ledger,
        site=settings,
        prefix=prefix,
        metrics=metrics,
        reclaim=Reclaim(ledger, settings),
        hub_api=hub,
        sources=sources or [],
        cookie_secret=os.urandom(32),
        xsrf_cookies=False,
        # Each request's language (cookie on the hub's host, Accept-Language): i18n.
        transforms=[request_language(settings.site.language, settings.site.timezone)],
    )


async def run_meter(meter: Meter, every: float, metrics: Metrics) -> None:
    while True:
        started = time.monotonic()
        try:
            report = await meter.tick()
            metrics.tick.observe(report.seconds)
            metrics.charges.inc(report.charged)
            metrics.stops.inc(len(report.stopped))
            for account, hours in report.idle_gpu_hours.items():
                metrics.idle_gpu_hours.labels(account).inc(hours)
            # Between ticks and off the loop: the journal's next slice posted, old GPU
            # readings merged, and the WAL the tick wrote (~2,000 pages at 1,000 GPU
            # sessions) copied to the database file, not in the next tick's commit.
            await asyncio.to_thread(meter.between_ticks, report)
        except Exception:
            log.exception("meter tick failed")
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


async def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s quota] %(message)s"
    )
    settings = load_settings()
    ledger = open_ledger(settings)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/quota/")
    metrics = Metrics()
    hub = HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"], timeout=30)
    sources = sources_for(
        settings, os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"], ledger
    )
    app = make_app(settings, ledger, prefix, metrics, hub, sources)
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", f"http://127.0.0.1:{settings.quota.port}")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    app.listen(port, address="127.0.0.1")
    log.info("quota service on %s%s (meter every %ss)", url, prefix, settings.quota.sample_seconds)
    meter = Meter(
        ledger, sources, settings.quota.grace_seconds,
        sample_seconds=settings.quota.sample_seconds,
        reclaim=Reclaim(ledger, settings),  # watches nothing unless the site turns it on
    )  # fmt: skip
    alerts = Alerts(ledger, settings.quota.alerts)
    if alerts.enabled:  # beside the meter: a slow SMTP server never delays a tick
        # (the task is held by this frame, which lives as long as the service)
        _alerting = asyncio.ensure_future(run_alerts(alerts, settings.quota.sample_seconds))
    # What start-up made lives as long as the service: out of the collector's full passes,
    # which walked it every few ticks at 1,000 GPU sessions (40-60 ms CPU each time).
    gc.freeze()
    await run_meter(meter, settings.quota.sample_seconds, metrics)


if __name__ == "__main__":
    run_service(main, "quota")


__all__ = ["make_app", "RESOURCES"]
