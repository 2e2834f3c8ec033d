"""What the hub does for app servers: named servers `{apps.server_prefix}{name}`.

`AppServers` is the Spawner's `pre_spawn_hook` (JupyterHub calls it before every start):
for an app server it looks the app up in the registry (a server of that name that is not a
published app is refused), and turns the Lab spawn into an app spawn: the app's profile
(whatever options the request carried), our Voila launcher instead of jupyterhub-singleuser,
metering as source "app", and read access for the owner's Unix account to the snapshot.
Every other server passes through untouched.
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import quote

from jupyterhub.spawner import SpawnException

from shangzhuang.apps import is_app_server
from shangzhuang.apps.registry import Registry
from shangzhuang.settings import Settings

# An app server's own hub token: report activity and identify viewers, nothing more (its
# notebook never sees it, but the least a token can do is the least it can leak).
APP_TOKEN_SCOPES = ["users:activity!user", "access:servers!server"]


def activity_every(settings: Settings) -> float:
    """How often app servers report viewers' activity: well inside the idle stop."""
    idle = settings.apps.idle_stop_seconds
    return float(max(1, min(60, idle // 3))) if idle else 60.0


class AppServers:
    """The pre-spawn hook and token scopes for app servers (one per hub)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.prefix = settings.apps.server_prefix
        self.registry = Registry(settings.apps_folder)

    def no_confirm(self, service_clients: set[str]) -> NoConfirmClients:
        return NoConfirmClients(service_clients, self.registry, self.prefix)

    def token_scopes(self, lab_scopes: list[str]):
        """Spawner.server_token_scopes: Lab sessions get `lab_scopes`, app servers the least."""

        def scopes(spawner) -> list[str]:
            return APP_TOKEN_SCOPES if is_app_server(spawner.name, self.prefix) else lab_scopes

        return scopes

    async def __call__(self, spawner) -> None:
        if not is_app_server(spawner.name, self.prefix):
            return
        apps = self.settings.apps
        owner, name = spawner.user.name, spawner.name[len(self.prefix) :]
        app = self.registry.get(owner, name)
        if app is None:
            raise SpawnException(
                f"{spawner.name} is not a published app: server names starting with "
                f"{self.prefix!r} are kept for apps (publish one with `shangzhuang apps "
                "publish` or from JupyterLab)",
                reason="not-an-app",
                status_code=404,
            )
        spawner.usage_source = "app"
        spawner.user_options = {"profile": app.profile}
        spawner.default_url = ""
        files = self.registry.files_dir(owner, name)
        public = app.viewers.public and apps.public_links
        spawner.cmd = [sys.executable, "-m", "shangzhuang.apps.server"]
        spawner.args = [
            f"--notebook={app.notebook}", f"--root={files}",
            f"--auth={'public' if public else 'hub'}",
            f"--auth-cache={apps.auth_cache_seconds}",
            f"--kernel-idle={apps.kernel_idle_seconds}",
            f"--preheat={apps.preheat_kernels}",
            f"--activity-every={activity_every(self.settings)}",
            f"--max-kernels={apps.max_kernels_per_app}",
            f"--visits-per-minute={apps.public_visits_per_minute if public else 0}",
        ]  # fmt: skip
        if os.geteuid() == 0 and getattr(spawner, "isolated", False):
            account = await spawner.unix_account()
            # Every file of the app (a model can be thousands): off the hub's event loop.
            await asyncio.to_thread(self.registry.let_read, owner, name, account.pw_gid)


class NoConfirmClients(set):
    """JupyterHub's `oauth_no_confirm_list` (services that skip the "authorize" page), plus
    every published app's server.

    A viewer of a shared server is asked once to let it know who they are, and again after
    every stop (stopping a server deletes its OAuth client and tokens): for apps, which stop
    when idle, that is a question on most visits. An app server only ever gets the
    viewer's name and groups and access to itself, and the platform published it."""

    def __init__(self, client_ids, registry: Registry, prefix: str):
        super().__init__(client_ids)
        self.registry = registry
        self.prefix = prefix

    def __deepcopy__(self, memo) -> NoConfirmClients:
        return self  # traitlets deep-copies config values; this one is the hub's, shared

    def __contains__(self, client_id: object) -> bool:
        if super().__contains__(client_id):
            return True
        head = "jupyterhub-user-"
        if not isinstance(client_id, str) or not client_id.startswith(head):
            return False
        rest, marker = client_id[len(head) :], "-" + self.prefix
        at = rest.find(marker)
        while at > 0:  # the user name may itself contain the marker: try each split
            owner, name = rest[:at], rest[at + len(marker) :]
            app = self.registry.get(_unquote(owner), name)
            if app is not None and quote(app.owner) == owner:
                return True
            at = rest.find(marker, at + 1)
        return False


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)
