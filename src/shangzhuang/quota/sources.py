"""Where usage comes from: `UsageSource`s the meter polls.

- `LabSessions`: Lab servers as the hub API lists them (the `local` backend), through
  `HubAPI`, whose one listing per tick also serves `AppServers`.
- `AppServers`: published Voila apps' servers, the same way (source "app").
- `SlurmJobs`: every running Slurm job of a workbench user, as squeue lists them: Lab
  sessions on the `slurm` backend, and Dask workers however they were started.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from shangzhuang.apps import app_consumer, is_app_server
from shangzhuang.quota.ledger import rates_of
from shangzhuang.quota.meter import Running, UsageSource, job_consumer, lab_consumer
from shangzhuang.settings import Settings


class HubAPI:
    """The hub's REST API with the quota service's token.

    The lab and app sources both need the hub's list of running servers; the meter asks
    them together, and a listing asked for while one is under way shares it.
    """

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()
        self._listing: asyncio.Future | None = None

    async def request(self, method: str, path: str) -> dict | list | None:
        req = HTTPRequest(
            self.api_url + path,
            method=method,
            headers={
                "Authorization": f"token {self.token}",
                "Accept": "application/jupyterhub-pagination+json",
            },
            request_timeout=30,
        )
        resp = await self.http.fetch(req, raise_error=method == "GET")
        return json.loads(resp.body) if resp.body else None

    async def active_users(self) -> list[dict]:
        """Users with a server running or starting, with their servers (all pages)."""
        if self._listing is None:
            self._listing = asyncio.ensure_future(self._list_active_users())
            self._listing.add_done_callback(lambda _: setattr(self, "_listing", None))
        return await asyncio.shield(self._listing)

    async def _list_active_users(self) -> list[dict]:
        users, offset = [], 0
        while True:
            page = await self.request("GET", f"/users?state=active&offset={offset}&limit=200")
            users.extend(page["items"])
            nxt = page.get("_pagination", {}).get("next")
            if not nxt:
                return users
            offset = nxt["offset"]


class LabSessions:
    """Lab servers as the hub reports them: a `UsageSource` for the meter."""

    name = "lab"
    consumer_id = staticmethod(lab_consumer)

    def counts(self, server: str) -> bool:
        """Is this server one of this source's? (App servers are charged by `AppServers`.)"""
        apps = self.settings.apps
        return not (apps.enabled and is_app_server(server, apps.server_prefix))

    def profile_of(self, user: str, server: str, model: dict):
        return self.profile((model.get("user_options") or {}).get("profile"))

    def __init__(self, settings: Settings, hub: HubAPI):
        self.settings = settings
        self.hub = hub

    async def running(self) -> list[Running]:
        out = []
        for user in await self.hub.active_users():
            for server, s in (user.get("servers") or {}).items():
                if not s.get("started") or not self.counts(server):
                    continue
                started = datetime.fromisoformat(s["started"].replace("Z", "+00:00"))
                profile = self.profile_of(user["name"], server, s)
                out.append(
                    Running(
                        consumer=self.consumer_id(user["name"], server, started.timestamp()),
                        user=user["name"], source=self.name, started=started.timestamp(),
                        rates=rates_of(profile), profile=profile.name,
                        groups=tuple(user.get("groups") or ()),
                    )
                )  # fmt: skip
        return out

    def profile(self, name: str | None):
        for p in self.settings.profiles:
            if p.name == name:
                return p
        return self.settings.profiles[0]  # what the spawner starts when none was named

    async def stop(self, consumer: str, user: str, reason: str) -> None:
        server = consumer.split("/", 1)[1].rsplit("@", 1)[0]
        path = (
            f"/users/{quote(user)}/server"
            if not server
            else (f"/users/{quote(user)}/servers/{quote(server)}")
        )
        await self.hub.request("DELETE", path)


class AppServers(LabSessions):
    """Published Voila apps' servers: charged to their owners as source "app", at the
    profile the app was published with."""

    name = "app"
    consumer_id = staticmethod(app_consumer)

    def __init__(self, settings: Settings, hub: HubAPI):
        super().__init__(settings, hub)
        from shangzhuang.apps.registry import Registry

        self.registry = Registry(settings.apps_folder)

    def counts(self, server: str) -> bool:
        return not super().counts(server)

    def profile_of(self, user: str, server: str, model: dict):
        app = self.registry.get(user, server[len(self.settings.apps.server_prefix) :])
        return self.profile(app.profile if app else None)


class SlurmJobs:
    """Running Slurm jobs of workbench users (Unix accounts with the site's prefix)."""

    name = "job"
    FORMAT = "%i|%u|%S|%C|%b|%j"

    def __init__(self, settings: Settings):
        self.prefix = settings.backend.slurm.user_prefix
        conf = settings.backend.slurm.conf
        self.env = {**os.environ, **({"SLURM_CONF": str(conf)} if conf else {})}

    async def _run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]}: {err.decode().strip()}")
        return out.decode()

    async def running(self) -> list[Running]:
        out = await self._run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", self.FORMAT)
        jobs = []
        for line in out.splitlines():
            job_id, unix_user, start, cpus, gres, name = line.split("|", 5)
            if not unix_user.startswith(self.prefix):
                continue  # not a workbench user's job
            jobs.append(
                Running(
                    consumer=job_consumer(job_id),
                    user=unix_user[len(self.prefix) :],
                    source="job",
                    # squeue prints the controller's local time
                    started=datetime.fromisoformat(start).timestamp(),
                    rates={"gpu_hours": float(gpu_count(gres)), "cpu_hours": float(cpus)},
                    profile=name,
                )
            )
        return jobs

    async def stop(self, consumer: str, user: str, reason: str) -> None:
        await self._run("scancel", consumer.removeprefix("job:"))


def gpu_count(gres: str) -> int:
    """GPUs in squeue's %b: 'gres/gpu:2', 'gres:gpu:2', 'gpu:a100:2', 'N/A'."""
    total = 0
    for item in gres.split(","):
        parts = item.replace("gres/", "").replace("gres:", "").split(":")
        if parts[0] == "gpu":
            tail = parts[-1].split("(")[0]
            total += int(tail) if tail.isdigit() else 1
    return total


def sources_for(settings: Settings, api_url: str, token: str) -> list[UsageSource]:
    """What the meter polls on this site's backend."""
    if settings.backend.kind == "slurm":
        return [SlurmJobs(settings)]
    hub = HubAPI(api_url, token)
    sources: list[UsageSource] = [LabSessions(settings, hub)]
    if settings.apps.enabled:
        sources.append(AppServers(settings, hub))
    return sources
