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
import json
import logging
import os
import sys
import time
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


class AppPageHandler(TornadoVoilaHandler):
    """The app's page; the hub's readiness probe (no text/html) is answered without
    rendering, so a probe never starts a kernel."""

    async def get(self, path=None):
        if not path and "text/html" not in self.request.headers.get("Accept", ""):
            self.set_status(204)
            self.finish()
            return
        return await super().get(path)


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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s app] %(message)s")

    # The server's own hub token: for activity reports and OAuth, never for kernels.
    token = os.environ.pop("JUPYTERHUB_API_TOKEN", "")
    os.environ.pop("JPY_API_TOKEN", None)
    os.chdir(args.root)
    if args.auth == "hub":
        AppKernelWebsocket.recheck_seconds = float(args.auth_cache)
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
