"""The hub's list of running servers, as the meter's lab and app sources read it: one real
HTTP server stands in for the hub's REST API (paginated like JupyterHub's), and counts the
requests it gets."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from shangzhuang.apps.hub_api import HubAPI
from shangzhuang.quota.sources import AppServers, LabSessions, SlurmJobs
from shangzhuang.settings import parse_settings

TOKEN = "quota-service-token"
STARTED = "2026-11-30T01:00:00.000000Z"
USERS = [
    {"name": f"u{i}", "groups": ["physics"],
     "servers": {"": {"started": STARTED, "user_options": {"profile": "gpu-1"}}}}
    for i in range(3)
] + [{"name": "ann", "groups": [], "servers": {
    "app-demo": {"started": STARTED, "user_options": {}},
    "": {"started": None},  # still starting: nothing to charge yet
}}]  # fmt: skip


class Users(web.RequestHandler):
    def get(self):
        assert self.request.headers["Authorization"] == f"token {TOKEN}"
        self.application.settings["calls"].append(self.request.uri)
        offset, limit = int(self.get_argument("offset")), int(self.get_argument("limit"))
        limit = min(limit, 2)  # like the hub's own page cap, smaller: two pages here
        nxt = {"offset": offset + limit} if offset + limit < len(USERS) else None
        self.finish(json.dumps({"items": USERS[offset : offset + limit],
                                "_pagination": {"next": nxt}}))  # fmt: skip


class User(web.RequestHandler):
    def get(self, name):
        assert self.get_argument("include_stopped_servers") == "1"
        user = next((u for u in USERS if u["name"] == name), None)
        if user is None:
            raise web.HTTPError(404)
        self.finish(json.dumps(user))


class Server(web.RequestHandler):
    def delete(self, user, server=""):
        self.application.settings["deleted"].append((user, server))
        self.set_status(204)


@pytest.fixture
def hub():
    """(api url, calls, deleted) of a stand-in hub API on a free port."""
    calls, deleted = [], []
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = web.Application(
        [(r"/hub/api/users", Users), (r"/hub/api/users/([^/]+)", User),
         (r"/hub/api/users/([^/]+)/server", Server),
         (r"/hub/api/users/([^/]+)/servers/([^/]*)", Server)],
        calls=calls, deleted=deleted,
    )  # fmt: skip
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield loop, f"http://127.0.0.1:{port}/hub/api", calls, deleted
    server.stop()
    loop.close()
    asyncio.set_event_loop(None)


def site(tmp_path):
    return parse_settings(
        {
            "hub": {"state_dir": str(tmp_path / "state")},
            "profiles": [
                {"name": "cpu", "cores": 2, "memory": "4G"},
                {"name": "gpu-1", "cores": 4, "memory": "16G", "gpus": 1},
            ],
        },
        tmp_path / "site.toml",
    )


def test_one_listing_serves_the_lab_and_app_sources_of_a_tick(hub, tmp_path):
    """The meter asks its sources together: they share one listing of the hub's users;
    asked again later, the hub is asked again (nothing stale is handed out)."""
    loop, url, calls, deleted = hub
    api = HubAPI(url, TOKEN)
    settings = site(tmp_path)
    lab, apps = LabSessions(settings, api), AppServers(settings, api)

    async def together():
        return await asyncio.gather(lab.running(), apps.running())

    labs, served = loop.run_until_complete(together())
    assert len(calls) == 2  # both pages, once, for both sources
    assert sorted(r.user for r in labs) == ["u0", "u1", "u2"]
    assert {(r.source, r.profile, r.rates["gpu_hours"]) for r in labs} == {("lab", "gpu-1", 1.0)}
    assert [(r.user, r.source, r.consumer.split("@")[0]) for r in served] == [
        ("ann", "app", "app:ann/app-demo")
    ]

    loop.run_until_complete(lab.running())  # the next tick lists again
    assert len(calls) == 4

    loop.run_until_complete(lab.stop(labs[0].consumer, "u0", "quota exhausted"))
    loop.run_until_complete(apps.stop(served[0].consumer, "ann", "quota exhausted"))
    assert deleted == [("u0", ""), ("ann", "app-demo")]


class SlurmAnswers(SlurmJobs):
    """The real Slurm source; its Slurm commands answered here (squeue) and recorded."""

    def __init__(self, settings, hub, squeue: str):
        super().__init__(settings, None, hub)
        self.squeue, self.ran = squeue, []

    async def _run(self, *args: str, strict: bool = True) -> str:
        self.ran.append(args)
        return self.squeue if args[0] == "squeue" else ""


def test_slurm_jobs_that_run_lab_sessions_are_known_by_the_spawners_state(
    hub, tmp_path, monkeypatch
):
    """Which Slurm jobs are Lab sessions: those whose id the hub's spawner recorded in its
    state (batchspawner's job_id), for that user, never anything a job's owner sets. The
    hub stops those (its spawner cancels the job); other jobs are cancelled with scancel,
    and all of them when the hub is down (charged all the same)."""
    loop, url, calls, deleted = hub
    monkeypatch.setattr(sys.modules[__name__], "USERS", [
        {"name": "ida", "servers": {"": {"started": STARTED, "user_options": {"profile": "gpu-1"},
                                         "state": {"job_id": "101", "consumer": "job:101"}}}},
        # ivo's Lab has not started running yet: its job is not his sbatch job 104
        {"name": "ivo", "servers": {"": {"started": None, "user_options": {"profile": "gpu-1"},
                                         "state": {"job_id": "102"}}}},
    ])  # fmt: skip
    settings = site(tmp_path)
    prefix = settings.backend.slurm.user_prefix
    tres = "cpu=1,mem=1G,node=1,billing=1,gres/gpu=1|1|1|N/A|N/A|N/A|0|"
    squeue = "".join(
        f"{job}|{prefix}{user}|1764464400|{tres}\n"
        for job, user in (("101", "ida"), ("103", "ida"), ("104", "ivo"))
    )
    source = SlurmAnswers(settings, HubAPI(url, TOKEN), squeue)
    jobs = {r.consumer: r for r in loop.run_until_complete(source.running())}
    assert {c: (r.lab_server, r.profile) for c, r in jobs.items()} == {
        "job:101": ("", "gpu-1"), "job:103": (None, ""), "job:104": (None, "")
    }  # fmt: skip

    loop.run_until_complete(source.stop("job:101", "ida", "GPUs idle"))
    loop.run_until_complete(source.stop("job:103", "ida", "quota exhausted"))
    assert deleted == [("ida", "")]
    assert [a for a in source.ran if a[0] == "scancel"] == [("scancel", "103")]

    down = SlurmAnswers(settings, HubAPI("http://127.0.0.1:9/hub/api", TOKEN), squeue)
    jobs = loop.run_until_complete(down.running())
    assert len(jobs) == 3 and all(r.lab_server is None for r in jobs)
    loop.run_until_complete(down.stop("job:101", "ida", "quota exhausted"))
    assert down.ran[-1] == ("scancel", "101")


def test_a_stop_decided_for_one_run_never_stops_the_next_run_of_the_same_server(
    hub, tmp_path, monkeypatch
):
    """The meter decides to stop a run (quota at zero, or reclaim's grace over) from the
    tick's listing, and stops it a moment later; the hub stops servers by name. If the user
    stopped that run and started the same server again meanwhile, the new run is not
    stopped: the stop targets the consumer (the run's start time; on Slurm its job). Seen
    red before the change: u0's new run was deleted, and ida's new job's server stopped."""
    loop, url, calls, deleted = hub
    settings = site(tmp_path)
    lab = LabSessions(settings, HubAPI(url, TOKEN))
    decided = loop.run_until_complete(lab.running())
    old = next(r.consumer for r in decided if r.user == "u0")
    again = "2026-11-30T01:00:07.250000Z"  # stopped and started again since the listing
    monkeypatch.setitem(USERS[0]["servers"], "", {**USERS[0]["servers"][""], "started": again})
    loop.run_until_complete(lab.stop(old, "u0", "quota exhausted"))
    assert deleted == []
    new = next(r.consumer for r in loop.run_until_complete(lab.running()) if r.user == "u0")
    assert new != old
    loop.run_until_complete(lab.stop(new, "u0", "quota exhausted"))  # the run decided on
    assert deleted == [("u0", "")]
    monkeypatch.setitem(USERS[0]["servers"], "", {"started": None})  # stopped meanwhile
    loop.run_until_complete(lab.stop(new, "u0", "quota exhausted"))
    assert deleted == [("u0", "")]

    # On Slurm: ida's Lab was job 101 when the tick listed it, and is job 105 now.
    ida = {"name": "ida", "servers": {"": {"started": STARTED, "user_options": {"profile": "gpu-1"},
                                           "state": {"job_id": "101"}}}}  # fmt: skip
    monkeypatch.setattr(sys.modules[__name__], "USERS", [ida])
    prefix = settings.backend.slurm.user_prefix
    tres = "cpu=1,mem=1G,node=1,billing=1,gres/gpu=1|1|1|N/A|N/A|N/A|0|"
    source = SlurmAnswers(settings, HubAPI(url, TOKEN), f"101|{prefix}ida|1764464400|{tres}\n")
    loop.run_until_complete(source.running())
    ida["servers"][""]["state"] = {"job_id": "105"}
    loop.run_until_complete(source.stop("job:101", "ida", "GPUs idle"))
    assert deleted == [("u0", "")]  # the hub stopped nothing
    assert [a for a in source.ran if a[0] == "scancel"] == [("scancel", "101")]  # job 101 only
