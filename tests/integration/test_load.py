"""Ten people at once on a real workbench while its quota service is killed (issue 16's
CI-sized load run; bench/load.py is the fifty-user bench with every fault).

Each user walks tests/journey.py's journey in a thread of their own (plain threads, not
locust: locust's gevent monkey-patching would reach every other test in this pytest
process): log in, spawn "cpu", open Lab, run a cell over the kernel websocket, idle
polling the quota API and the Lab extension (every second here; the pages' 30 s would
not fit CI), check the session answers, stop. Once every user has run their cell, the
quota service gets kill -9; JupyterHub starts a managed service again when its poll sees
it gone. Then:
- every journey completes, and a request fails only while the quota service is down
  (polls of the quota API and of the Lab extension, which asks it), never after;
- each session's charge equals its true running time (the hub's `started` to the moment
  it was gone) within the meter's resolution (`sample_seconds`), no stretch charged twice;
- every session answered its owner after the restart.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.journey import Journey, charged_vs_ran

from .hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

USERS = 10
PASSWORD = "load-horse-42"
SAMPLE_SECONDS = 2
CORES = 2  # profile "cpu"
QUOTA = f"""
sample_seconds = {SAMPLE_SECONDS}
[quota.accounts.default]
cpu_hours = 100000
"""
POLLS_AFTER = 3  # polls every user makes after the quota service answers again
RESTART_WITHIN = 45  # JupyterHub polls a managed service every 30 s (Spawner.poll_interval)


def quota_service(hub: RunningHub) -> psutil.Process:
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        if "shangzhuang.quota.service" in " ".join(p.cmdline()):
            return p
    raise AssertionError("no quota service under the hub")


def test_ten_users_while_the_quota_service_is_killed():
    with RunningHub(workdir(), quota=QUOTA) as hub:
        names = [f"load{i}" for i in range(USERS)]
        admin_session = hub.login(ADMIN, hub.password_of_admin())
        for name in names:
            hub.signup(name, PASSWORD)  # and approved, as the admin on /hub/authorize
            r = hub.form(admin_session, f"/hub/authorize/{name}", {}, allow_redirects=False)
            assert r.status_code == 302, r.status_code
        admin = {"Authorization": f"token {hub.admin_token()}"}

        def quota_answers() -> bool:
            try:
                r = requests.get(f"{hub.url}/services/quota/api/v1/me", headers=admin, timeout=5)
                return r.status_code == 200
            except requests.RequestException:
                return False

        # (when the request was sent, when it was answered, user, kind, error)
        records: list[tuple[float, float, str, str, str | None]] = []
        results: dict[str, dict] = {}
        back = threading.Event()  # the quota service answers again after the kill
        polls_after: dict[str, int] = dict.fromkeys(names, 0)

        def walk(name: str) -> None:
            def record(kind: str, seconds: float, error: str | None) -> None:
                now = time.time()
                records.append((now - seconds, now, name, kind, error))
                if kind == "quota API" and back.is_set() and not error:
                    polls_after[name] += 1

            results[name] = Journey(
                hub.url, name, PASSWORD, profile="cpu", extras=True, record=record, poll=1,
                idle=lambda: polls_after[name] >= POLLS_AFTER,
            ).run()  # fmt: skip

        threads = [threading.Thread(target=walk, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()

        def all_cells_ran() -> bool:
            done = {u for _, _, u, kind, err in records if kind == "kernel cell" and not err}
            failed = [r for r in results.values() if r["error"]]
            assert not failed, f"{failed}\n{hub.tail(80)}"  # broke before the fault
            return done == set(names)

        hub.wait(all_cells_ran, timeout=300, what="every user's cell run")
        killed = time.time()
        quota_service(hub).kill()
        hub.wait(lambda: not quota_answers(), timeout=10, what="the quota service down")
        hub.wait(quota_answers, timeout=RESTART_WITHIN, what="the quota service back")
        answered = time.time()
        back.set()
        for t in threads:
            t.join(300)
        print(f"quota service down for {answered - killed:.1f} s")

        errors = {n: r["error"] for n, r in results.items() if r["error"]}
        assert not errors, f"{errors}\n{hub.tail(80)}"
        failed = [r for r in records if r[4]]
        print(f"{len(records)} requests, {len(failed)} failed")
        for sent, answer, user, kind, error in failed:
            # Only what asks the quota service, and only while it was down (sent before it
            # answered again, answered after the kill: one in flight at the kill counts).
            assert kind in ("quota API", "Lab extension"), (user, kind, error)
            assert sent <= answered and answer >= killed, (user, kind, error, sent - answered)
        # Every session answered its owner after the restart.
        for name in names:
            assert any(
                u == name and k == "session reachable" and not e and sent > answered
                for sent, _, u, k, e in records
            ), name
        # The ledger against the true running times.
        for name, r in results.items():
            usage = requests.get(
                f"{hub.url}/services/quota/api/v1/usage", params={"user": name},
                headers=admin, timeout=30,
            ).json()["records"]  # fmt: skip
            usage = [x for x in usage if x["resource"] == "cpu_hours"]
            check = charged_vs_ran(usage, r["started"], r["stopped"], CORES)
            assert check["overlaps"] == 0, (name, usage)
            # Never more than it ran (a second of slack for the clocks of the hub's
            # `started` and this process); less by at most one meter tick.
            assert -SAMPLE_SECONDS - 1 <= check["diff"] <= 1, (name, check, usage)


def test_a_spawn_that_times_out_leaves_the_hub_running():
    """Fifty arrivals on two cores: some Labs miss Spawner.start_timeout. JupyterHub then
    stops the server; our spawner had already cleared its pid, and JupyterHub 6.1.1's stop
    sent SIGINT to pid 0, the hub's own process group: the hub shut down (bench/load.py,
    50 users). Here the Lab is a process that never listens, start_timeout is 5 s, and
    no cgroup kills the Lab when its state is cleared (under load, that kill had not landed
    yet when JupyterHub looked)."""
    base = workdir()
    default = Path(__file__).parents[2] / "hub_config" / "jupyterhub_config.py"
    never = [sys.executable, "-c", "import time; time.sleep(600)"]  # JupyterHub's args ignored
    (base / "jupyterhub_config.py").write_text(
        default.read_text() + f"\nc.Spawner.start_timeout = 5\nc.Spawner.cmd = {never!r}\n"
    )
    with RunningHub(base, extra_toml='[backend.local.containment]\ncgroups = "off"\n') as hub:
        hub.new_user("tardy", PASSWORD)
        hub.spawn("tardy", "cpu", ok=None)  # 500 or 202: the start failed, or still fails
        hub.wait(lambda: not hub.api("GET", "/users/tardy").json()["servers"], timeout=60,
                 what="the timed-out server gone")  # fmt: skip
        assert hub.proc.poll() is None, hub.tail()
        assert requests.get(f"{hub.url}/hub/api", timeout=10).status_code == 200
        assert "Received signal SIGINT" not in hub.log.read_text()
        # And its Lab did not outlive the failed start.
        account = f"{hub.prefix}tardy"
        hub.wait(lambda: subprocess.run(["pgrep", "-u", account], capture_output=True)
                 .returncode == 1, timeout=30, what="no process of tardy left")  # fmt: skip
