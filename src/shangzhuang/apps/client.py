"""The apps API from Python: what `shangzhuang apps ...` and the Lab extension's handler use.

Where: `apps_url` (the apps service, e.g. http://127.0.0.1:8000/services/apps/), inside a
session $SHANGZHUANG_APPS_URL. Who: a JupyterHub token, inside a session
$JUPYTERHUB_API_TOKEN (its scopes include servers!user, which publishing asks for).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from urllib.parse import quote, urljoin

from shangzhuang.apps.snapshot import Snapshot


class AppsAPIError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{message} (HTTP {status})" if status else message)


def parse_share(specs: list[str]) -> dict:
    """`alice`, `user:alice`, `group:physics`, `signed-in`, `public` (comma lists too)
    -> the API's viewers object."""
    viewers: dict = {"users": [], "groups": [], "signed_in": False, "public": False}
    for spec in specs:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            if item in ("signed-in", "signed_in", "all", "anyone-signed-in"):
                viewers["signed_in"] = True
            elif item == "public":
                viewers["public"] = True
            elif item.startswith("group:"):
                viewers["groups"].append(item[len("group:") :])
            else:
                viewers["users"].append(item.removeprefix("user:"))
    return viewers


class AppsClient:
    def __init__(self, apps_url: str | None = None, token: str | None = None, timeout=300):
        self.apps_url = (apps_url or os.environ.get("SHANGZHUANG_APPS_URL") or "").rstrip("/")
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not self.apps_url:
            raise AppsAPIError(
                0, "no apps service address: pass --hub-url (or set $SHANGZHUANG_APPS_URL)"
            )
        if not self.token:
            raise AppsAPIError(0, "no token: pass --token or set $JUPYTERHUB_API_TOKEN")
        self.timeout = timeout

    @classmethod
    def for_hub(cls, hub_url: str, token: str | None = None) -> AppsClient:
        return cls(urljoin(hub_url.rstrip("/") + "/", "services/apps/"), token)

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.apps_url}/api/{path}", data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:300] or e.reason
            raise AppsAPIError(e.code, message) from None
        except urllib.error.URLError as e:
            raise AppsAPIError(
                0, f"can't reach the apps service at {self.apps_url}: {e.reason}"
            ) from None
        return json.loads(raw) if raw else None

    def list(self, every: bool = False) -> dict:
        return self.call("GET", "apps?all=1" if every else "apps")

    def whoami(self) -> str:
        return self.list()["user"]

    def publish(
        self, name: str, snapshot: Snapshot, *, owner: str | None = None, description: str = "",
        viewers: dict | None = None, profile: str = "", always_on: bool | None = None,
    ) -> dict:  # fmt: skip
        owner = owner or self.whoami()
        body = {
            "notebook": snapshot.notebook, "files": snapshot.encoded(),
            "description": description, "viewers": viewers or {}, "profile": profile,
        }  # fmt: skip
        if always_on is not None:
            body["always_on"] = always_on
        return self.call("PUT", f"apps/{quote(owner, safe='')}/{quote(name, safe='')}", body)

    def update(self, name: str, owner: str | None = None, **fields) -> dict:
        owner = owner or self.whoami()
        return self.call("PATCH", f"apps/{quote(owner, safe='')}/{quote(name, safe='')}", fields)

    def unpublish(self, name: str, owner: str | None = None) -> None:
        owner = owner or self.whoami()
        self.call("DELETE", f"apps/{quote(owner, safe='')}/{quote(name, safe='')}")
