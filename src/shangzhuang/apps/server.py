"""The app server: standalone Voila on an app's snapshot, as a named server of its owner.

Started by the hub (`python -m shangzhuang.apps.server`, see `spawn.py`) as the owner's
Unix account. It serves one notebook and nothing else: no contents API, no terminals, no
other notebooks, and the kernel websocket passes only widget (comm) and kernel-info
messages, so a viewer can move sliders but never run code of their own.

- `--auth hub`: viewers sign in through the hub's OAuth (jupyterhub's identity provider and
  authorizer for Jupyter Server 2, which Voila 0.5 uses); only holders of
  `access:servers!server=OWNER/SERVER` (the owner, admins, those it is shared with) pass.
  An open page's kernel websocket is rechecked with the hub every `--auth-cache` seconds,
  so a revoked viewer loses it within that time.
- `--auth public`: no sign-in (the site allows public links and the owner asked for one).

The server's hub token is taken out of the environment before any kernel starts: the app's
code (and so its viewers) never sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import os
import sys
import time
from collections import deque
from datetime import UTC, datetime
from urllib.parse import urlparse

from jupyter_server.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import default
from traitlets.config import Config
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler
from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler

log = logging.getLogger("shangzhuang.apps.server")
# Widgets and kernel info only: an execute_request from a browser is dropped.
ALLOWED_MESSAGES = [
    "comm_open", "comm_close", "comm_msg", "comm_info_request", "kernel_info_request",
    "shutdown_request",
]  # fmt: skip


class Activity:
    """When a viewer last did something (a request, a widget message)."""

    last: float = 0.0

    @classmethod
    def touch(cls) -> None:
        cls.last = time.time()


def log_request(handler) -> None:
    """Tornado's request log, and every request counts as activity."""
    Activity.touch()
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    log.log(level, "%d %s %s %.1fms", status, handler.request.method,
            handler.request.path, 1000 * handler.request.request_time())  # fmt: skip


class Visits:
    """Page loads per address in the last minute (a public app's rate limit)."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute  # 0: no limit
        self.clock = clock
        self.seen: dict[str, deque[float]] = {}

    def wait_seconds(self, address: str) -> int:
        """0 and the visit counted, or how long this address must wait."""
        if not self.per_minute:
            return 0
        now = self.clock()
        if len(self.seen) > 10_000:  # forget addresses that have been quiet a minute
            self.seen = {a: q for a, q in self.seen.items() if q and q[-1] > now - 60}
        recent = self.seen.setdefault(address, deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return int(recent[0] + 60 - now) + 1
        recent.append(now)
        return 0


def client_address(request) -> str:
    """The viewer's address: the last X-Forwarded-For entry is the one the hub's proxy
    added (earlier entries come from the client and prove nothing)."""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
    return forwarded or request.remote_ip


def page_language(request) -> str:
    """The app page's `<html lang>`: the viewer's language (the language cookie, where the
    app shares the hub's host, else Accept-Language) as nbconvert's HTMLExporter.language_code
    takes it, an ISO 639-1 code: 'zh' or 'en' (it would replace 'zh-CN' with 'en')."""
    from shangzhuang import i18n

    cookie = request.cookies.get(i18n.COOKIE)
    chosen = i18n.negotiate(request.headers.get("Accept-Language"),
                            cookie.value if cookie else None, "auto")  # fmt: skip
    return "zh" if chosen == "zh_CN" else "en"


class AppPageHandler(TornadoVoilaHandler):
    """The app's page; the hub's readiness probe (no text/html) is answered without
    rendering, so a probe never starts a kernel. Each page load starts a kernel: at most
    `max_kernels` run at once, and `visits` limits loads per address."""

    max_kernels = 20
    visits = Visits(0)
    loading = 0  # page loads in progress (their kernels may not be listed yet)

    async def get(self, path=None):
        if not path and "text/html" not in self.request.headers.get("Accept", ""):
            self.set_status(204)
            self.finish()
            return
        if not path and self.current_user:  # not yet signed in: the hub's login comes first
            wait = self.visits.wait_seconds(client_address(self.request))
            if wait:
                self.refuse(429, wait, f"Too many visits to this app from your address: at "
                            f"most {self.visits.per_minute} a minute. Try again in {wait} "
                            "seconds.")  # fmt: skip
                return
            # Loads still starting count too, so a burst can't start more than the cap.
            running = len(self.kernel_manager.list_kernel_ids()) - self.pool_size
            if running + AppPageHandler.loading >= self.max_kernels:
                self.refuse(503, 60, f"This app is serving as many viewers as it can "
                            f"({self.max_kernels}). Try again in a few minutes.")  # fmt: skip
                return
            AppPageHandler.loading += 1
            # This request's own copy of the config (each request has its own handler):
            # the page declares its viewer's language, not nbconvert's default "en".
            config = Config()
            config.merge(self.traitlet_config or Config())
            config.HTMLExporter.language_code = page_language(self.request)
            self.traitlet_config = config
            try:
                return await super().get(path)
            finally:
                AppPageHandler.loading -= 1
        return await super().get(path)

    @property
    def pool_size(self) -> int:
        """Kernels kept ready ahead of viewers (--preheat) don't count against the cap."""
        return self.voila_configuration.default_pool_size if (
            self.voila_configuration.preheat_kernel
        ) else 0  # fmt: skip

    def refuse(self, status: int, retry_after: int, message: str) -> None:
        log.warning("%d for %s: %s", status, client_address(self.request), message)
        self.set_status(status)
        self.set_header("Retry-After", str(retry_after))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Not now</title></head>"
            f"<body><p>{html.escape(message)}</p></body></html>"
        )


class AppKernelWebsocket(VoilaKernelWebsocketHandler):
    """The kernel websocket; with hub sign-in, the viewer's access is rechecked with the hub
    at least every `recheck_seconds`, and the socket (and its kernel) closed once it's gone."""

    recheck_seconds = 0.0
    _recheck: PeriodicCallback | None = None

    async def open(self, kernel_id):
        result = await super().open(kernel_id)
        if self.recheck_seconds and getattr(self.identity_provider, "hub_auth", None):
            self._recheck = PeriodicCallback(self._check_access, self.recheck_seconds * 1000)
            self._recheck.start()
        return result

    async def _check_access(self) -> None:
        hub_auth = self.identity_provider.hub_auth
        token = hub_auth.get_token(self)
        user = None
        try:
            if token:
                user = await hub_auth.user_for_token(token, use_cache=False, sync=False)
        except Exception as e:  # the hub away for a moment is not a revocation
            log.warning("could not recheck a viewer with the hub: %s", e)
            return
        if user and hub_auth.check_scopes(hub_auth.access_scopes, user):
            return
        who = (user or {}).get("name", "a viewer")
        log.warning("access to this app is gone for %s: closing its kernel", who)
        self._stop_recheck()
        kernel_id = self.kernel_id
        self.close(4403, "access to this app was revoked")
        try:
            await self.kernel_manager.shutdown_kernel(kernel_id)
        except Exception:
            pass

    def _stop_recheck(self) -> None:
        if self._recheck is not None:
            self._recheck.stop()
            self._recheck = None

    def on_message(self, message):
        Activity.touch()
        return super().on_message(message)

    def on_close(self):
        self._stop_recheck()
        return super().on_close()


class AppVoila(Voila):
    """Voila as an app server: our handlers, no config files read from the owner's folders."""

    @default("config_file_paths")
    def _no_config_files(self):
        # voila.json / voila.py in the snapshot or in ~/.jupyter must not change how the app
        # is served (who may view it, what it exposes).
        return []

    def init_settings(self):
        settings = super().init_settings()
        self.kernel_manager.allowed_message_types = ALLOWED_MESSAGES
        settings["log_function"] = log_request
        return settings

    def init_handlers(self):
        handlers = []
        for spec in super().init_handlers():
            pattern, handler, *rest = spec
            if handler is VoilaKernelWebsocketHandler:
                handler = AppKernelWebsocket
            elif handler is TornadoVoilaHandler:
                handler = AppPageHandler
            if not pattern.startswith(self.server_url):
                # The identity provider's /oauth_callback and /logout: Voila 0.5.13 adds
                # them without the base URL (an endless redirect loop behind the hub).
                pattern = url_path_join(self.server_url, pattern)
            handlers.append((pattern, handler, *rest))
        return handlers


async def report_activity(url: str, token: str, server: str, every: float) -> None:
    """Tell the hub when viewers last used the app (the idle culler reads it)."""
    http, sent = AsyncHTTPClient(), 0.0
    while True:
        await asyncio.sleep(every)
        last = Activity.last
        if last <= sent:
            continue
        stamp = datetime.fromtimestamp(last, UTC).isoformat().replace("+00:00", "Z")
        body = {"servers": {server: {"last_activity": stamp}}, "last_activity": stamp}
        try:
            await http.fetch(HTTPRequest(
                url, method="POST", body=json.dumps(body), request_timeout=30,
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            ))  # fmt: skip
            sent = last
        except Exception as e:
            log.warning("could not report activity to the hub: %s", e)


def voila_config(args, token: str) -> Config:
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    c = Config()
    c.Voila.ip = url.hostname or "127.0.0.1"
    c.Voila.port = url.port
    c.Voila.port_retries = 0
    c.Voila.base_url = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    c.Voila.open_browser = False
    c.Voila.root_dir = args.root
    c.VoilaConfiguration.show_tracebacks = False
    # Kernels on IPC sockets in Voila's private (mkdtemp, 0700) connection folder, never on
    # TCP ports other users of the node could connect to (shangzhuang/session.py for Lab).
    c.KernelManager.transport = "ipc"
    c.VoilaConfiguration.strip_sources = True
    if args.preheat:
        c.VoilaConfiguration.preheat_kernel = True
        c.VoilaConfiguration.default_pool_size = args.preheat
    if args.kernel_idle:
        c.MappingKernelManager.cull_idle_timeout = args.kernel_idle
        c.MappingKernelManager.cull_interval = max(1, min(60, args.kernel_idle // 2))
        c.MappingKernelManager.cull_connected = True  # an open but untouched tab too
    if args.auth == "hub":
        from jupyterhub.singleuser.extension import (
            JupyterHubAuthorizer,
            JupyterHubIdentityProvider,
        )

        c.Voila.identity_provider_class = JupyterHubIdentityProvider
        # Voila passes token="" to its identity provider unless auto_token is set, and
        # JupyterHub's has a read-only token (the hub's API token).
        c.Voila.auto_token = True
        c.Voila.authorizer_class = JupyterHubAuthorizer
        c.HubOAuth.api_token = token
        c.HubOAuth.cache_max_age = args.auth_cache
    return c


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shangzhuang.apps.server", description=__doc__)
    p.add_argument("--notebook", required=True, help="the app's notebook, inside --root")
    p.add_argument("--root", required=True, help="the app's snapshot folder")
    p.add_argument("--auth", choices=["hub", "public"], default="hub")
    p.add_argument("--auth-cache", type=int, default=300, help="seconds; recheck open viewers")
    p.add_argument("--kernel-idle", type=int, default=600, help="cull idle kernels; 0: never")
    p.add_argument("--preheat", type=int, default=0, help="kernels executed ahead of viewers")
    p.add_argument("--activity-every", type=float, default=60, help="report activity (s)")
    p.add_argument("--max-kernels", type=int, default=20, help="viewers' kernels at once")
    p.add_argument("--visits-per-minute", type=int, default=0,
                   help="page loads a minute per address; 0: no limit")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s app] %(message)s")

    # The server's own hub token: for activity reports and OAuth, never for kernels.
    token = os.environ.pop("JUPYTERHUB_API_TOKEN", "")
    os.environ.pop("JPY_API_TOKEN", None)
    os.chdir(args.root)
    if args.auth == "hub":
        AppKernelWebsocket.recheck_seconds = float(args.auth_cache)
    AppPageHandler.max_kernels = args.max_kernels
    AppPageHandler.visits = Visits(args.visits_per_minute)
    app = AppVoila(config=voila_config(args, token))
    app.initialize([args.notebook])
    activity_url = os.environ.get("JUPYTERHUB_ACTIVITY_URL")
    Activity.touch()  # started for a visitor: idle from now, not from when the spawn began
    if activity_url and token:
        server = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
        IOLoop.current().spawn_callback(
            report_activity, activity_url, token, server, args.activity_every
        )
    app.start()


if __name__ == "__main__":
    main(sys.argv[1:])
