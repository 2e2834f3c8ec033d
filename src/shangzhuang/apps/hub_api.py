"""The hub's REST API as our services call it, each with its own token: the one client.

The apps service holds `servers` (start an app's server for a viewer, remove it on
unpublish), `shares` with `read:users:name` and `read:groups:name` (grant and revoke
viewers, as JupyterHub's sharing API asks), and `read:users` (servers' state). The quota
service's meter lists active users' servers (`active_users`) and stops what can't pay.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


class HubError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class HubAPI:
    def __init__(self, api_url: str, token: str, timeout: float = 120):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = AsyncHTTPClient()
        self._listing: asyncio.Future | None = None

    async def call(self, method: str, path: str, body: dict | None = None, ok=(200,)):
        """One call; a status not in `ok` raises HubError with the hub's message."""
        req = HTTPRequest(
            self.api_url + path, method=method,
            body=json.dumps(body) if body is not None else (None if method == "GET" else ""),
            headers={
                "Authorization": f"token {self.token}", "Content-Type": "application/json",
                "Accept": "application/jupyterhub-pagination+json",
            },
            request_timeout=self.timeout, allow_nonstandard_methods=True,
        )  # fmt: skip
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code not in ok:
            try:
                message = json.loads(resp.body)["message"]
            except (ValueError, KeyError, TypeError):
                message = (resp.body or b"").decode(errors="replace")[:300] or str(resp.error)
            raise HubError(resp.code, message)
        return json.loads(resp.body) if resp.body else None

    async def active_users(self) -> list[dict]:
        """Users with a server running or starting, with their servers (all pages). The
        meter's lab and app sources ask together: a listing asked for while one is under
        way shares it."""
        if self._listing is None:
            self._listing = asyncio.ensure_future(self._list_active_users())
            self._listing.add_done_callback(lambda _: setattr(self, "_listing", None))
        return await asyncio.shield(self._listing)

    async def _list_active_users(self) -> list[dict]:
        users, offset = [], 0
        while True:
            page = await self.call("GET", f"/users?state=active&offset={offset}&limit=200")
            users.extend(page["items"])
            nxt = page.get("_pagination", {}).get("next")
            if not nxt:
                return users
            offset = nxt["offset"]

    @staticmethod
    def _server_path(owner: str, server: str) -> str:
        return f"/users/{quote(owner, safe='')}/servers/{quote(server, safe='')}"

    async def user(self, name: str) -> dict | None:
        try:
            return await self.call(
                "GET", f"/users/{quote(name, safe='')}?include_stopped_servers=1"
            )
        except HubError as e:
            if e.status == 404:
                return None
            raise

    async def server(self, owner: str, server: str) -> dict | None:
        """The server's model (stopped ones too), or None if it does not exist."""
        user = await self.user(owner)
        return (user or {}).get("servers", {}).get(server)

    async def start(self, owner: str, server: str, profile: str) -> None:
        """Start it (creating the named server if need be); HubError says why not."""
        await self.call(
            "POST", self._server_path(owner, server), {"profile": profile}, ok=(201, 202)
        )

    async def stop(self, owner: str, server: str) -> None:
        await self.call("DELETE", self._server_path(owner, server), ok=(202, 204, 404))

    async def remove(self, owner: str, server: str) -> None:
        """Stop it and delete the named server (its shares go with it)."""
        await self.call(
            "DELETE", self._server_path(owner, server), {"remove": True}, ok=(202, 204, 404)
        )

    async def wait(self, owner: str, server: str, timeout: float, ready: bool = True) -> bool:
        """Wait until the server is ready (or, ready=False, gone or stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            model = await self.server(owner, server)
            if ready and model and model.get("ready"):
                return True
            if not ready and (not model or (model.get("stopped") and not model.get("pending"))):
                return True
            if ready and model and not model.get("pending") and not model.get("ready"):
                return False  # not starting (failed, or stopped meanwhile)
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)

    async def shares(self, owner: str, server: str) -> list[tuple[str, str]]:
        """Who the server is shared with: ("user", name) and ("group", name) pairs."""
        path = f"/shares/{quote(owner, safe='')}/{quote(server, safe='')}"
        out, offset = [], 0
        while True:
            page = await self.call("GET", f"{path}?offset={offset}&limit=200")
            items = page["items"] if isinstance(page, dict) else page
            for s in items:
                kind = s["kind"]
                out.append((kind, s[kind]["name"]))
            nxt = (page.get("_pagination") or {}).get("next") if isinstance(page, dict) else None
            if not nxt:
                return out
            offset = nxt["offset"]

    async def grant(self, owner: str, server: str, kind: str, name: str) -> None:
        path = f"/shares/{quote(owner, safe='')}/{quote(server, safe='')}"
        await self.call("POST", path, {kind: name})

    async def revoke(self, owner: str, server: str, kind: str, name: str) -> None:
        path = f"/shares/{quote(owner, safe='')}/{quote(server, safe='')}"
        await self.call("PATCH", path, {kind: name})
