"""One person's visit to the hub, as their browser makes it: the journey bench/load.py
drives for many users at once (with locust) and tests/integration/test_load.py for ten.

    log in (the form, with its _xsrf) -> spawn (the workbench: the profile form, "cpu";
    plain JupyterHub: no form) -> wait for ready (the spawn-pending page's event stream)
    -> open Lab (GET /user/NAME/lab, through the single-user OAuth dance) -> start a kernel
    and run a cell over the websocket (Jupyter's kernel protocol, as Lab does) -> idle,
    polling at the real rates -> check the session still answers -> stop (the home page's
    Stop button: DELETE with the hub's _xsrf) and wait until the hub lists no server.

While idle, the workbench's journey polls what a workbench page polls: the Lab extension's
endpoint (GET /user/NAME/shangzhuang/quota, every 30 s: `refreshSeconds` in the
extension's schema/plugin.json, as src/model.ts schedules it) and the quota API
(GET /services/quota/api/v1/me with the user's own API token, every 30 s, as a notebook
or script watching its balance would). A plain hub has neither; its journey idles
without them. Failed polls are retried at the next tick, as the Lab extension does.

Every request is reported to `record(kind, seconds, error)`; `Journey.run()` returns a
summary with the server's start (the hub's `started`) and the moment it was gone, which
the ledger check compares with what was charged.

Run by locust (bench/load_locust.py, gevent) or by plain threads (the CI test): nothing
here is locust-specific. `poll` shortens the 30 s for a test that can't wait that long.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlparse

import requests
import websocket
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool

POLL_SECONDS = 30  # the Lab extension's refreshSeconds default (schema/plugin.json)
TIMEOUT = 300  # one request, or one spawn, on a busy 2-core machine

Record = Callable[[str, float, "str | None"], None]


class Failed(Exception):
    """A step of the journey that answered wrong (the message says which and how)."""


# --- connections, kept as a browser keeps them -------------------------------------------
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 9.2.2


class WatchedPool(HTTPConnectionPool):
    """urllib3's pool of one host's connections, noting when each went idle, so a request
    knows whether it goes out on a reused connection and how long that one had been idle.
    `seen` (set per adapter) gets ("dropped", idle s) for each kept connection found closed
    by the server before reuse (urllib3 then opens a new one)."""

    seen: list

    def _put_conn(self, conn) -> None:
        if conn is not None:
            conn.idle_since = time.monotonic() if conn.sock is not None else None
        super()._put_conn(conn)

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)  # a kept one closed meanwhile comes back closed
        since = getattr(conn, "idle_since", None)
        if conn.sock is None and since is not None:
            self.seen.append(("dropped", time.monotonic() - since))
            conn.idle_since = None
        return conn

    def _make_request(self, conn, method, url, *args, **kw):
        since = getattr(conn, "idle_since", None)
        idle = time.monotonic() - since if conn.sock is not None and since else None
        try:
            return super()._make_request(conn, method, url, *args, **kw)
        except (ConnectionResetError, BrokenPipeError) as e:  # RemoteDisconnected is one
            e.reused_idle = idle  # None: a new connection
            raise


def closed_unanswered(error: BaseException) -> tuple[bool, float | None] | None:
    """For requests' ConnectionError of a connection the server closed before any answer:
    (reused, seconds it had been idle); None for any other error."""
    seen: set[int] = set()
    stack = [error]
    while stack:  # the cause sits in exceptions' args (urllib3's ProtocolError) or chains
        e = stack.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, (ConnectionResetError, BrokenPipeError)) and hasattr(e, "reused_idle"):
            return e.reused_idle is not None, e.reused_idle
        stack += [*e.args, e.__cause__, e.__context__, getattr(e, "reason", None)]
    return None


class BrowserAdapter(HTTPAdapter):
    """requests' adapter doing what a browser does on a kept-alive connection the server
    closed just as a request went out on it (no answer at all): an idempotent request is
    sent once more, on a new connection (Chromium's HttpNetworkTransaction and Firefox
    resend on a reused connection closed before any answer). Anything else fails as
    before. `resent` and `seen` let a run count how often that happened."""

    def __init__(self, resend: bool = True):
        self.resend = resend
        self.resent: list[tuple[str, float | None]] = []  # (method path, idle s)
        self.seen: list[tuple[str, float]] = []
        super().__init__()

    def init_poolmanager(self, *args, **kw) -> None:
        super().init_poolmanager(*args, **kw)
        pool = type("Pool", (WatchedPool,), {"seen": self.seen})  # this adapter's journal
        self.poolmanager.pool_classes_by_scheme = {
            **self.poolmanager.pool_classes_by_scheme, "http": pool,
        }  # fmt: skip

    def send(self, request, *args, **kw):
        try:
            return super().send(request, *args, **kw)
        except requests.ConnectionError as e:
            closed = closed_unanswered(e)
            if not (self.resend and closed and closed[0] and request.method in IDEMPOTENT):
                raise
            self.resent.append((f"{request.method} {urlparse(request.url).path}", closed[1]))
            return super().send(request, *args, **kw)


def describe(error: BaseException) -> str:
    """The error as the journey records it; a connection closed unanswered says whether it
    was reused and after how long idle (the proxy closes idle ones: docs/benchmarks.md)."""
    text = f"{type(error).__name__}: {error}"
    closed = closed_unanswered(error)
    if closed:
        reused, idle = closed
        text += f" [reused connection, idle {idle:.2f} s]" if reused else " [new connection]"
    return text


class Journey:
    def __init__(
        self,
        url: str,
        name: str,
        password: str,
        *,
        profile: str | None,  # None: plain JupyterHub (no options form)
        extras: bool,  # the workbench's quota API and Lab extension polls
        idle: float | Callable[[], bool],  # seconds, or until this says so
        record: Record,
        poll: float = POLL_SECONDS,
        resend: bool = True,  # as a browser (BrowserAdapter); False: as requests alone
    ):
        self.url = url
        self.name = name
        self.password = password
        self.profile = profile
        self.extras = extras
        self.idle = idle
        self.record = record
        self.poll = poll
        self.s = requests.Session()
        self.adapter = BrowserAdapter(resend)
        self.s.mount("http://", self.adapter)
        self.lab_base = ""  # http://HOST/user/NAME/ once Lab has opened
        self.token = ""

    # --- plumbing -------------------------------------------------------------------
    def timed(self, kind: str, fn: Callable[[], requests.Response], ok=(200,)):
        """Run one request (or a step of several); record its time and how it failed."""
        t0 = time.perf_counter()
        try:
            r = fn()
            if isinstance(r, requests.Response) and r.status_code not in ok:
                raise Failed(f"{kind}: {r.status_code} at {r.url}: {r.text[-200:]!r}")
        except Exception as e:
            self.record(kind, time.perf_counter() - t0, describe(e))
            raise
        self.record(kind, time.perf_counter() - t0, None)
        return r

    def xsrf(self, host: str, path: str) -> str:
        """The _xsrf cookie the page at HOST/PATH... set (the hub's, or the Lab's)."""
        for c in self.s.cookies:
            if c.name == "_xsrf" and c.domain.lstrip(".") == host and path.startswith(c.path):
                return c.value
        raise Failed(f"no _xsrf cookie for {host}{path}")

    def hub(self, method: str, path: str, **kw) -> requests.Response:
        """A hub API call from the hub's pages (cookie + the hub's _xsrf), as its JS does."""
        host = urlparse(self.url).hostname
        headers = {"X-XSRFToken": self.xsrf(host, "/hub/")}
        return self.s.request(method, f"{self.url}/hub/api{path}", headers=headers,
                              timeout=TIMEOUT, **kw)  # fmt: skip

    # --- the steps --------------------------------------------------------------------
    def login(self) -> None:
        self.timed("login page", lambda: self.s.get(f"{self.url}/hub/login", timeout=TIMEOUT))
        data = {"username": self.name, "password": self.password,
                "_xsrf": self.xsrf(urlparse(self.url).hostname, "/hub/")}  # fmt: skip
        self.timed(
            "login",
            lambda: self.s.post(f"{self.url}/hub/login", data=data, allow_redirects=False,
                                timeout=TIMEOUT),  # fmt: skip
            ok=(302,),
        )

    def spawn(self) -> None:
        """From the spawn request to Lab answering 200 at /user/NAME/lab."""

        def steps() -> requests.Response:
            if self.profile is None:
                r = self.s.get(f"{self.url}/hub/spawn", timeout=TIMEOUT)
            else:
                self.s.get(f"{self.url}/hub/spawn", timeout=TIMEOUT)  # the form, its _xsrf
                data = {"profile": self.profile,
                        "_xsrf": self.xsrf(urlparse(self.url).hostname, "/hub/")}  # fmt: skip
                r = self.s.post(f"{self.url}/hub/spawn", data=data, timeout=TIMEOUT)
            if "/spawn-pending/" in r.url:
                self.wait_ready()
                r = self.s.get(f"{self.url}/user/{self.name}/lab", timeout=TIMEOUT)
            return r

        r = self.timed("spawn to Lab", steps)
        if not urlparse(r.url).path.endswith(f"/user/{self.name}/lab"):
            raise Failed(f"spawn: landed on {r.url}")
        self.lab_base = r.url[: r.url.index(f"/user/{self.name}/") + len(f"/user/{self.name}/")]

    def wait_ready(self) -> None:
        """Read the progress event stream, as the spawn-pending page does, until ready."""
        with self.hub("GET", f"/users/{self.name}/server/progress", stream=True) as r:
            if r.status_code != 200:
                raise Failed(f"progress: {r.status_code}")
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        return
                    if event.get("failed"):
                        raise Failed(f"spawn failed: {event.get('message')}")
        raise Failed("progress stream ended before ready")

    def server(self) -> dict | None:
        """The user's default server as the hub lists it (their own model), or None.
        Asked after the spawn and every 0.2 s while a stop completes: only a failure is
        recorded (as "own model"), so the counts of the timed steps stay comparable."""
        t0 = time.perf_counter()
        try:
            r = self.hub("GET", f"/users/{self.name}")
            if r.status_code != 200:
                raise Failed(f"own model: {r.status_code}")
        except Exception as e:
            self.record("own model", time.perf_counter() - t0, describe(e))
            raise
        return r.json()["servers"].get("")

    def open_lab(self) -> None:
        self.timed("open Lab", lambda: self.s.get(f"{self.lab_base}lab", timeout=TIMEOUT))

    def run_cell(self) -> None:
        """POST api/kernels, then an execute_request over the channels websocket."""
        lab = urlparse(self.lab_base)
        headers = {"X-XSRFToken": self.xsrf(lab.hostname, lab.path)}

        def cell() -> requests.Response:
            r = self.s.post(f"{self.lab_base}api/kernels", json={"name": "python3"},
                            headers=headers, timeout=TIMEOUT)  # fmt: skip
            if r.status_code != 201:
                return r
            kid = r.json()["id"]
            cookies = "; ".join(f"{c.name}={c.value}" for c in self.s.cookies
                                if c.domain.lstrip(".") == lab.hostname)  # fmt: skip
            ws = websocket.create_connection(
                f"ws://{lab.netloc}{lab.path}api/kernels/{kid}/channels",
                cookie=cookies, origin=f"{lab.scheme}://{lab.netloc}", timeout=TIMEOUT,
            )  # fmt: skip
            try:
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps(execute_request(msg_id, "print(6 * 7)")))
                out = ""
                while True:
                    msg = json.loads(ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    if msg["msg_type"] == "stream":
                        out += msg["content"]["text"]
                    elif msg["msg_type"] == "status":
                        if msg["content"]["execution_state"] == "idle":
                            break
            finally:
                ws.close()
            if out.strip() != "42":
                raise Failed(f"cell printed {out!r}")
            return self.s.delete(f"{self.lab_base}api/kernels/{kid}", headers=headers,
                                 timeout=TIMEOUT)  # fmt: skip

        self.timed("kernel cell", cell, ok=(204,))

    def own_token(self) -> None:
        """An API token of the user's own (the hub's token page does this POST)."""
        r = self.timed("token", lambda: self.hub("POST", f"/users/{self.name}/tokens",
                                                 json={"note": "load"}), ok=(200, 201))  # fmt: skip
        self.token = r.json()["token"]

    def poll_once(self) -> None:
        """One tick of what the workbench's pages poll; a failure is retried next tick."""
        auth = {"Authorization": f"token {self.token}"}
        for kind, fn in (
            ("quota API", lambda: requests.get(f"{self.url}/services/quota/api/v1/me",
                                               headers=auth, timeout=TIMEOUT)),
            ("Lab extension", lambda: self.s.get(f"{self.lab_base}shangzhuang/quota",
                                                 timeout=TIMEOUT)),
        ):  # fmt: skip
            try:
                self.timed(kind, fn)
            except Exception:  # recorded; the page shows it and tries again
                pass

    def idle_and_poll(self) -> None:
        """Idle for `idle` seconds (or until `idle()` is true), polling as the pages do."""
        over = self.idle if callable(self.idle) else lambda: False
        end = time.monotonic() + (TIMEOUT if callable(self.idle) else self.idle)
        while True:
            if self.extras:
                self.poll_once()
            left = end - time.monotonic()
            if left <= 0 or over():
                return
            time.sleep(min(self.poll, left))

    def again(self, kind: str, fn: Callable[[], requests.Response], ok=(200,), within=120):
        """As a person would: try again each second (every failure is recorded) for a while."""
        deadline = time.monotonic() + within
        while True:
            try:
                return self.timed(kind, fn, ok)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def still_reachable(self) -> None:
        """After the idle (and any fault in it): the session still answers its owner."""
        self.again("session reachable", lambda: self.s.get(f"{self.lab_base}api/status",
                                                           timeout=TIMEOUT))  # fmt: skip

    def stop(self) -> float:
        """The Stop button; the moment the hub no longer lists the server."""
        self.again("stop", lambda: self.hub("DELETE", f"/users/{self.name}/server"),
                   ok=(202, 204))  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while self.server() is not None:
            if time.monotonic() > deadline:
                raise Failed("server still listed after stop")
            time.sleep(0.2)
        return time.time()

    def run(self) -> dict:
        """The whole journey; what the ledger check needs, and where it failed if it did."""
        out: dict = {"name": self.name, "started": None, "stopped": None, "error": None}
        try:
            self.login()
            if self.extras:
                self.own_token()
            self.spawn()
            started = (self.server() or {}).get("started")
            out["started"] = started and datetime.fromisoformat(
                started.replace("Z", "+00:00")
            ).timestamp()
            self.open_lab()
            self.run_cell()
            self.idle_and_poll()
            self.still_reachable()
            out["stopped"] = self.stop()
        except Exception as e:
            out["error"] = describe(e)
        # Connections the server closed under this user: found closed before reuse, and
        # requests sent again (BrowserAdapter).
        out["dropped"] = [round(idle, 2) for _, idle in self.adapter.seen]
        out["resent"] = self.adapter.resent
        return out


def execute_request(msg_id: str, code: str) -> dict:
    return {
        "header": {"msg_id": msg_id, "username": "", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False},
    }  # fmt: skip



def charged_vs_ran(usage: list[dict], started: float, stopped: float, cores: float) -> dict:
    """One session's cpu_hours charges (the quota API's usage records) against its true
    running time: charged seconds minus (stopped - started), and how many of its charges
    overlap another of the same consumer (a stretch counted twice)."""
    charged = sum(r["amount"] for r in usage) / cores * 3600
    spans = sorted((r["consumer"], r["start"], r["end"]) for r in usage)
    overlaps = sum(
        a[0] == b[0] and b[1] < a[2] for a, b in zip(spans, spans[1:], strict=False)
    )
    return {"diff": charged - (stopped - started), "overlaps": overlaps}
