"""The hub's side of the quota service: every question the hub asks about quota, over the
service's API v1, asynchronously and with a timeout. The quota service is the only
process that opens the ledger; the hub never waits on the ledger's database.

What happens when the quota service does not answer (README, "Quota"):
- a spawn is refused (fail closed): "the quota service is not answering";
- starting and stopping a session's metering is delivered later (fail open, no charge
  lost): the calls wait in order in this process and are retried until answered; should
  the hub stop before that, the meter opens what runs from the hub's own start time and
  closes what vanished at its last mark (at most one sampling interval unbilled); a hub
  killed mid-stop (before its close was sent) leaves the stop's beginning in the spawner's
  state, and the restarted hub charges up to it (hub/spawners.py, close_consumer);
- a login goes ahead (the spawn sets the user's account again);
- deleting a user is refused, changing nothing, so a new user of the same name never
  inherits the old one's usage;
- a refused start's record (quota/refusals.py) is dropped after REFUSAL_TIMEOUT seconds,
  never retried: it is a count for the estate, and no spawn waits for it; a start refused
  *because* the service does not answer waits, with its time, with the metering calls
  (at most MAX_WAITING_REFUSALS of them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from functools import cache

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from shangzhuang.quota.consumers import Consumer

log = logging.getLogger("shangzhuang.quota.api_client")

# The hub's own token-only JupyterHub service: the quota service answers its hub-only
# endpoints (account, consumers, set-apart) to this caller alone.
HUB_CLIENT = "workbench-hub"
# How long a refusal's record may take before it is dropped (it runs beside the spawn).
REFUSAL_TIMEOUT = 2.0
# Starts refused while the quota service is down, kept to be counted once it answers: a
# bound, so a user clicking "start" over and over can't grow the hub's memory.
MAX_WAITING_REFUSALS = 200


class QuotaUnavailable(Exception):
    """The quota service did not answer in time, or answered with a server error."""


class QuotaRefused(Exception):
    """The quota service answered no (4xx); `message` is its reason, for people."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class QuotaAPI:
    """The quota service's API v1 as the hub calls it, with the hub's token."""

    def __init__(self, url: str, token: str, timeout: float = 5.0, retry_every: float = 5.0):
        self.url = url.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout
        self.retry_every = retry_every
        self.undelivered: list[_Call] = []  # opens and closes, oldest first
        self._delivering: asyncio.Task | None = None
        self._recording: set[asyncio.Task] = set()  # refusals being posted (kept referenced)

    async def call(
        self, method: str, path: str, body: dict | None = None, timeout: float | None = None
    ) -> dict:
        timeout = self.timeout if timeout is None else timeout
        request = HTTPRequest(
            self.url + path, method=method,
            body=json.dumps(body) if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            connect_timeout=timeout, request_timeout=timeout, follow_redirects=False,
        )  # fmt: skip
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.response is None or e.code >= 500:
                raise QuotaUnavailable(f"the quota service answered {e.code}") from None
            raise QuotaRefused(e.code, _message(e.response.body) or str(e)) from None
        except (TimeoutError, OSError) as e:
            raise QuotaUnavailable(f"the quota service is not answering ({e})") from None
        return json.loads(response.body or b"{}")

    # --- questions (the caller decides what an unavailable service means) ---------------
    async def balance(self, user: str) -> dict:
        return await self.call("GET", f"/users/{_name(user)}")

    async def affordable(self, user: str) -> dict:
        """Each profile: can the user start it now, and if not, the message saying why."""
        return await self.call("GET", f"/users/{_name(user)}/affordable")

    async def set_account(self, user: str, groups: list[str]) -> str:
        """The user's account from their groups (a per-user account in [quota.users] wins)."""
        answer = await self.call("POST", f"/users/{_name(user)}/account", {"groups": groups})
        return answer["account"]

    async def set_apart(self, user: str) -> str:
        answer = await self.call("POST", f"/users/{_name(user)}/set-apart", {})
        return answer["tombstone"]

    # --- refusals: fire-and-forget -----------------------------------------------------
    def refused(self, user: str, reason: str, profile: str = "", resources=()) -> None:
        """Record that `user`'s start of `profile` was refused for `reason` (one of
        refusals.HUB_REASONS), in the background: the caller never waits for it."""
        body = {"user": user, "reason": reason, "profile": profile, "resources": list(resources)}
        if reason == "quota-unavailable":  # no use posting now: it waits for the service
            waiting = sum(c.path == "/refusals" for c in self.undelivered)
            if waiting < MAX_WAITING_REFUSALS:
                self.submit("/refusals", {**body, "at": time.time()})
            return
        task = asyncio.ensure_future(self._record_refusal(body))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_refusal(self, body: dict) -> None:
        try:
            await self.call("POST", "/refusals", body, timeout=REFUSAL_TIMEOUT)
        except (QuotaUnavailable, QuotaRefused) as e:
            log.warning("refusal of %s (%s) not recorded: %s", body["user"], body["reason"], e)

    # --- metering: delivered in order, retried until answered ---------------------------
    async def open(self, consumer: Consumer, user: str, profile: str, started: float) -> None:
        """Meter a session from `started` (returns once tried: delivered, or queued)."""
        body = {"consumer": str(consumer), "user": user, "profile": profile, "started": started}
        await self.submit("/consumers", body).wait()

    def close(self, consumer: Consumer, end: float | None) -> asyncio.Event:
        """Stop metering a session (at `end`; None: at the meter's last mark). Callable
        from JupyterHub's synchronous clear_state: the returned event is set once tried."""
        return self.submit("/consumers/close", {"consumer": str(consumer), "end": end})

    def submit(self, path: str, body: dict) -> asyncio.Event:
        call = _Call(path, body)
        self.undelivered.append(call)
        if self._delivering is None:
            self._delivering = asyncio.ensure_future(self._deliver_all())
        return call.tried

    async def _deliver_all(self) -> None:
        try:
            while not await self._deliver_waiting():
                await asyncio.sleep(self.retry_every)
        finally:
            self._delivering = None

    async def _deliver_waiting(self) -> bool:
        """Deliver what waits, in order; False when the quota service stopped answering."""
        while self.undelivered:
            # Metering first (charges), then the refusals that wait (counts), each in order.
            call = min(self.undelivered, key=lambda c: c.path == "/refusals")
            try:
                await self.call("POST", call.path, call.body)
            except QuotaRefused as e:  # a bad call stays bad: log it, don't block the rest
                log.error("quota service refused %s %s: %s", call.path, call.body, e.message)
            except QuotaUnavailable as e:
                log.warning("%d call(s) wait for the quota service: %s",
                            len(self.undelivered), e)  # fmt: skip
                for waiting in self.undelivered:
                    waiting.tried.set()
                return False
            self.undelivered.remove(call)
            call.tried.set()
        return True


@dataclass
class _Call:
    path: str
    body: dict
    tried: asyncio.Event = field(default_factory=asyncio.Event)


@cache
def hub_quota(url: str, token: str) -> QuotaAPI:
    """The hub process's one client (one queue of undelivered metering calls)."""
    return QuotaAPI(url, token)


def _name(user: str) -> str:
    from urllib.parse import quote

    return quote(user, safe="")


def _message(body: bytes | None) -> str:
    try:
        return json.loads(body or b"{}").get("message", "")
    except (ValueError, AttributeError):
        return ""
