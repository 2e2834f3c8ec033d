"""The quota service as this session calls it: API v1 with the session's hub token."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .config import ShangzhuangLab
from .i18n import trans

# Ages (seconds) of the windows searched for the newest charges, narrowest first: the
# quota API lists charges oldest first, so a narrow window finds the newest cheaply.
WINDOWS = (900, 3600, 6 * 3600, 86400, 7 * 86400, 35 * 86400, 400 * 86400, 10 * 366 * 86400)
# Rows fetched per call while searching; more means the window is too wide.
PAGE = 2000


def not_configured() -> str:
    return trans.gettext(
        "this session was not given a quota service "
        "($SHANGZHUANG_QUOTA_URL, or c.ShangzhuangLab.quota_url): the site has no quotas"
    )


class QuotaUnavailable(Exception):
    """The quota service could not be asked, or did not answer well; `status` for our reply."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.message = message
        self.status = status


class QuotaService:
    """Calls to the quota service, each with a short timeout."""

    def __init__(self, config: ShangzhuangLab):
        self.config = config

    def url(self, path: str, **params) -> str:
        if not self.config.quota_url:
            raise QuotaUnavailable(not_configured())
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return (
            self.config.quota_url.rstrip("/") + "/api/v1/" + path + ("?" + query if query else "")
        )

    def request(self, path: str, timeout: float | None = None, **params) -> HTTPRequest:
        return HTTPRequest(
            self.url(path, **params),
            headers={
                "Authorization": f"token {self.config.api_token}",
                "Accept": "application/json",
            },
            connect_timeout=min(
                self.config.request_timeout, timeout or self.config.request_timeout
            ),
            request_timeout=timeout or self.config.request_timeout,
            follow_redirects=False,
        )

    async def fetch(self, req: HTTPRequest, **kw):
        """Fetch, turning every failure into a QuotaUnavailable that says what went wrong."""
        try:
            return await AsyncHTTPClient().fetch(req, **kw)
        except HTTPClientError as e:
            if e.code == 599:  # tornado's code for a timeout or a dropped connection
                message = trans.gettext("the quota service did not answer in {seconds} s")
                raise QuotaUnavailable(message.format(seconds=f"{req.request_timeout:g}")) from None
            raise QuotaUnavailable(
                upstream_message(e.code, e.response), status_for(e.code)
            ) from None
        except OSError as e:  # refused, unreachable, DNS
            message = trans.gettext("the quota service can't be reached ({error})")
            raise QuotaUnavailable(message.format(error=e.strerror or e)) from None

    async def get_json(self, path: str, **params) -> dict:
        resp = await self.fetch(self.request(path, **params))
        try:
            return json.loads(resp.body)
        except ValueError:
            message = trans.gettext("the quota service answered something that is not JSON")
            raise QuotaUnavailable(message, 502) from None

    async def me(self) -> dict:
        """GET me, plus what only this session knows: which running entry is this one,
        its profile and cost, and when it will be stopped at zero."""
        if not self.config.quota_url:  # a site without quotas: nothing to show, no polling
            return {"enabled": False, "message": not_configured()}
        me = await self.get_json("me")
        # where the panel's "Request more quota" leads (the usage page's form)
        usage = {"usage_url": self.config.usage_url}
        return {"enabled": True, **with_session(me, self.config), **usage}

    async def newest_charges(self, now: float | None = None) -> list[dict]:
        """The newest `charges_shown` charges of this session's user, newest first."""
        n = self.config.charges_shown
        now = time.time() if now is None else now

        async def window(age: float) -> list[dict]:
            since = datetime.fromtimestamp(now - age).astimezone().isoformat()
            page = await self.get_json(
                "usage", user=self.config.user or None, format="json", since=since, limit=PAGE
            )
            return page.get("records", [])

        records = await newest_in_windows(window, n)
        return list(reversed(records[-n:]))

    async def stream_csv(
        self, on_start: Callable[[], None], on_chunk: Callable[[bytes], None]
    ) -> None:
        """The user's full usage as CSV, passed on chunk by chunk (it can be long)."""
        status: dict[str, int] = {}
        error_body: list[bytes] = []

        def header(line: str) -> None:
            if line.startswith("HTTP/"):
                status["code"] = int(line.split()[1])

        def chunk(data: bytes) -> None:
            if status.get("code") != 200:
                error_body.append(data)
                return
            if not status.get("started"):
                status["started"] = 1
                on_start()
            on_chunk(data)

        req = self.request(
            "usage", timeout=self.config.csv_timeout, user=self.config.user or None, format="csv"
        )
        req.header_callback = header
        req.streaming_callback = chunk
        try:
            await self.fetch(req)
        except QuotaUnavailable as e:
            if error_body:
                raise QuotaUnavailable(
                    upstream_message(status.get("code", 502), b"".join(error_body)), e.status
                ) from None
            raise
        if not status.get("started"):
            on_start()  # an empty body is still a (header-less) CSV


async def newest_in_windows(window: Callable, n: int) -> list[dict]:
    """Search ever wider windows (then halve) until one holds at least n rows but not a
    full page; return its rows, oldest first."""
    narrower = 0.0  # the widest window known to hold fewer than n rows
    rows: list[dict] = []
    for age in WINDOWS:
        rows = await window(age)
        if len(rows) < n:
            narrower = age
            continue
        if len(rows) < PAGE:
            return rows
        lo, hi = narrower, age  # too many: bisect between the two windows
        for _ in range(30):
            mid = (lo + hi) / 2
            rows = await window(mid)
            if n <= len(rows) < PAGE:
                return rows
            lo, hi = (mid, hi) if len(rows) < n else (lo, mid)
        return rows if len(rows) >= n else await window(hi)
    return rows


def with_session(me: dict, config: ShangzhuangLab) -> dict:
    """Add this session's view to GET me's answer (pure, for tests)."""
    # GET me lists only this user's consumers; the service names each one's server. On
    # the slurm backend this session is its job (job:ID, or job:ID@START once requeued).
    job = f"job:{config.slurm_job_id}" if config.slurm_job_id else None
    mine = [r for r in me.get("running", [])
            if (r.get("source") == "lab" and r.get("server") == config.server_name)
            or (job and r.get("consumer", "").split("@")[0] == job)]  # fmt: skip
    entry = max(mine, key=lambda r: r.get("started_ms") or 0, default=None)
    cost = entry.get("cost_per_hour") if entry else None
    profile = (entry or {}).get("profile") or config.profile or None

    # When the meter stops this session at zero: the quota service says so, by the meter's
    # own rule (quota.meter.stops_in), for each running consumer.
    stops_in = (entry or {}).get("stops_in_seconds")
    stops = stops_in is not None
    if stops:
        stops_in = round(stops_in, 1)
    # Idle GPU reclaim: when this session stops and why, and the way on ("continue on
    # CPU": a page of the quota service, beside its usage page on the hub's origin).
    reclaim = (entry or {}).get("reclaim")
    if reclaim:
        page = f"continue-on-cpu?server={quote(config.server_name)}"
        reclaim = {**reclaim, "continue_url": config.usage_url + page}
    return {
        **me,
        "session": {"consumer": entry["consumer"] if entry else None, "profile": profile,
                    "cost_per_hour": cost},
        "grace_seconds": config.grace_seconds,
        "session_stops": stops,
        "stops_in_seconds": stops_in,
        "reclaim": reclaim or None,
    }  # fmt: skip


def status_for(code: int) -> int:
    """Our status for the quota service's: it being down or broken is a 503 to the frontend;
    it refusing this session (401/403/4xx) is a 502 with its message."""
    return 503 if code >= 500 else 502


def upstream_message(code: int, response) -> str:
    body = getattr(response, "body", response) or b""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    if message:
        return trans.gettext("the quota service answered {code}: {message}").format(
            code=code, message=message
        )
    return trans.gettext("the quota service answered {code}").format(code=code)
