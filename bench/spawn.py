"""Login to Lab ready: this workbench against a plain JupyterHub on the same machine.

    .venv/bin/python bench/spawn.py [--rounds 3] [--users 10] [--no-write]

Both hubs run side by side on free ports, each in its own temp folder, and their
rounds alternate (workbench, plain, workbench, ...) so background load hits both alike:

- workbench: `shangzhuang up` with a temp site config (tests/integration/hub.py's
  RunningHub); users signed up and approved beforehand; profile "cpu". As root it makes
  one Unix account per user on their first spawn (prefix `bench<hex>-`, removed at the end).
- plain: `jupyterhub` with SimpleLocalProcessSpawner and SharedPasswordAuthenticator
  (allow_all), the same configurable-http-proxy and jupyterhub-singleuser, `--allow-root`
  as root; users created through the API beforehand.

One measurement, per user, in its own thread (all users start together behind a barrier):
the clock starts at POST /hub/login (the _xsrf cookie fetched before), then the spawn:
GET /hub/spawn (plain: this starts it; workbench: this renders the form, then POST it with
profile=cpu), following redirects; if that lands on the spawn-pending page, the progress
event stream (as the page's browser code reads it) until "ready"; the clock stops when
GET /user/NAME/lab, following redirects (the single-user OAuth dance), answers 200 at
that URL. Between rounds every server is stopped through the hub API (admin token) and
the script waits until the hub lists none and their processes are gone.

Peak memory: the sum of RSS over the hub, the proxy and every single-user server (all the
hub's descendants), sampled every 0.2 s, the highest sample per scenario. Shared pages
are counted once per process, so it overstates real use alike on both sides.

Prints a markdown table and writes it to docs/benchmarks.md (section
"## Spawn: login to Lab ready (bench/spawn.py)"; other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.hub import RunningHub, free_port, interruptible, workdir  # noqa: E402

from report import machine as report_machine  # noqa: E402  (bench/ is on sys.path)
from report import write_section  # noqa: E402

PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
SINGLEUSER = Path(sys.prefix) / "bin" / "jupyterhub-singleuser"
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Spawn: login to Lab ready (bench/spawn.py)"
GOAL = 1.10
PASSWORD = "bench-horse-42"  # the workbench users' own password
SHARED_PASSWORD = "bench-shared-password-1"  # the plain hub's shared one
TIMEOUT = 240  # seconds one user may take before the round counts as failed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- memory ---------------------------------------------------------------------------
class Sampler:
    """Sum of RSS of a process and all its descendants, every 0.2 s, in a thread.

    Also remembers every process it saw, so the end can kill whatever outlived its hub.
    """

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self.seen: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            self.seen.setdefault(p.pid, p)
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.rss())

    def reset(self) -> None:
        self.peak = self.rss()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def kill_leftovers(self) -> None:
        """SIGKILL every process seen that is still the same process (pid + start time)."""
        for p in self.seen.values():
            try:
                if p.is_running():
                    p.kill()
            except psutil.Error:
                pass


def lab_servers(sampler: Sampler) -> list[psutil.Process]:
    out = []
    for p in sampler.tree()[1:]:
        try:
            if any("jupyterhub-singleuser" in a for a in p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


# --- the two hubs -----------------------------------------------------------------------
class Side:
    """What the measurement needs of a hub: its URL, users, a spawn step, stop-all."""

    label: str
    url: str
    sampler: Sampler
    users: list[str]

    def password(self, name: str) -> str:
        raise NotImplementedError

    def spawn(self, s: requests.Session, name: str) -> requests.Response:
        raise NotImplementedError

    def api(self, method: str, path: str, **kw) -> requests.Response:
        raise NotImplementedError

    def stop_all(self, timeout: float = 120) -> None:
        """DELETE every running server and wait until none is listed or running."""
        for name in self.users:
            self.api("DELETE", f"/users/{name}/server", ok=(202, 204, 400, 404))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = any(u.get("servers") for u in self.api("GET", "/users").json())
            if not listed and not lab_servers(self.sampler):
                return
            time.sleep(0.3)
        raise TimeoutError(f"{self.label}: servers not stopped in {timeout}s")


class Workbench(Side):
    label = "workbench"

    def __init__(self, users: list[str]):
        self.hub = RunningHub(workdir(), prefix=f"bench{uuid.uuid4().hex[:4]}-")
        self.users = users
        self.url = self.hub.url
        self.sampler: Sampler | None = None

    def start(self) -> None:
        self.hub.start()
        self.sampler = Sampler(self.hub.proc.pid)
        for name in self.users:
            self.hub.signup(name, PASSWORD)
            self.hub.approve(name)

    def password(self, name: str) -> str:
        return PASSWORD

    def spawn(self, s: requests.Session, name: str) -> requests.Response:
        # As a browser: the spawn page renders the profile form, then it is submitted.
        return self.hub.form(s, "/hub/spawn", {"profile": "cpu"}, timeout=TIMEOUT)

    def api(self, method: str, path: str, ok=(200, 201, 202, 204), **kw) -> requests.Response:
        return self.hub.api(method, path, ok=ok, **kw)

    def cleanup(self) -> None:
        try:
            if self.hub.proc and self.hub.proc.poll() is None:
                try:
                    self.stop_all()
                except Exception as e:  # still stop the hub and remove the accounts
                    log(f"workbench: stopping servers: {e}")
            self.hub.stop()  # SIGINT, as Ctrl-C; stops any server still running
        finally:
            # With the hub stopped, RunningHub.cleanup skips its API calls and only removes
            # the Unix accounts (killing their processes first) and the temp folder.
            if self.sampler:
                self.sampler.close()
                self.sampler.kill_leftovers()
            self.hub.cleanup()
            shutil.rmtree(self.hub.base, ignore_errors=True)


class PlainHub(Side):
    label = "plain JupyterHub"

    def __init__(self, users: list[str]):
        self.base = workdir()
        self.users = users
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.log = self.base / "hub.log"
        self.proc: subprocess.Popen | None = None
        self.sampler: Sampler | None = None
        self.config = self.base / "jupyterhub_config.py"

    def write_config(self) -> None:
        homes = self.base / "home"
        homes.mkdir(mode=0o755)
        args = ["--allow-root"] if os.geteuid() == 0 else []
        state = self.base / "state"
        state.mkdir(mode=0o700)
        self.config.write_text(
            f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "{self.url}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]
c.ConfigurableHTTPProxy.pid_file = {str(state / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{state / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(state / "cookie_secret")!r}
c.JupyterHub.pid_file = {str(state / "hub.pid")!r}
c.JupyterHub.authenticator_class = "jupyterhub.authenticators.shared.SharedPasswordAuthenticator"
c.SharedPasswordAuthenticator.user_password = {SHARED_PASSWORD!r}
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {str(homes) + "/{username}"!r}
c.Spawner.cmd = [{str(SINGLEUSER)!r}]
c.Spawner.args = {args!r}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.JupyterHub.services = [{{"name": "bench", "api_token": {self.token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "list:users"],
}}]
"""
        )

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.config)],
                cwd=self.base / "state", stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=interruptible,
            )  # fmt: skip
        self.sampler = Sampler(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plain hub exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            raise TimeoutError(f"plain hub not up in {timeout}s:\n{self.tail()}")
        for name in self.users:
            self.api("POST", f"/users/{name}", ok=(201, 409))

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def password(self, name: str) -> str:
        return SHARED_PASSWORD

    def spawn(self, s: requests.Session, name: str) -> requests.Response:
        # No options form: visiting the spawn page starts the server.
        return s.get(f"{self.url}/hub/spawn", timeout=TIMEOUT)

    def api(self, method: str, path: str, ok=(200, 201, 202, 204), **kw) -> requests.Response:
        r = requests.request(
            method, f"{self.url}/hub/api{path}",
            headers={"Authorization": f"token {self.token}"}, timeout=30, **kw,
        )  # fmt: skip
        if ok and r.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r

    def cleanup(self) -> None:
        try:
            if self.proc and self.proc.poll() is None:
                try:
                    self.stop_all()
                except Exception as e:
                    log(f"plain: stopping servers: {e}")
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        finally:
            if self.sampler:
                self.sampler.close()
                self.sampler.kill_leftovers()
            shutil.rmtree(self.base, ignore_errors=True)


# --- one user's login to Lab ready ----------------------------------------------------
def wait_progress(side: Side, s: requests.Session, name: str) -> None:
    """Read the spawn progress event stream (what the spawn-pending page does) until ready."""
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf")
    with s.get(
        f"{side.url}/hub/api/users/{name}/server/progress",
        headers={"X-XSRFToken": xsrf, "Accept": "text/event-stream"},
        stream=True,
        timeout=TIMEOUT,
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{name}: progress {r.status_code} {r.text[:200]}")
        for line in r.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("ready"):
                return
            if event.get("failed"):
                raise RuntimeError(f"{name}: spawn failed: {event.get('message')}")
    raise RuntimeError(f"{name}: progress stream ended before ready")


def lab_ready(side: Side, name: str, start: threading.Barrier) -> tuple[float, dict]:
    """Seconds from the login POST to the Lab answering 200, and where they went."""
    s = requests.Session()
    s.get(f"{side.url}/hub/login", timeout=30)  # the _xsrf cookie, before the clock
    lab = f"/user/{name}/lab"
    start.wait()
    t0 = time.perf_counter()
    r = s.post(
        f"{side.url}/hub/login",
        data={"username": name, "password": side.password(name), "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    if r.status_code != 302:
        raise RuntimeError(f"{side.label} login {name}: {r.status_code} {r.text[-300:]}")
    t_login = time.perf_counter()
    r = side.spawn(s, name)
    t_spawn = time.perf_counter()
    pending = False
    if not (r.status_code == 200 and urlparse(r.url).path == lab):
        if "/spawn-pending/" not in r.url and urlparse(r.url).path != lab:
            raise RuntimeError(f"{side.label} spawn {name}: {r.status_code} at {r.url}")
        pending = "/spawn-pending/" in r.url
        wait_progress(side, s, name)
        deadline = time.monotonic() + TIMEOUT
        while True:
            r = s.get(f"{side.url}{lab}", timeout=TIMEOUT)
            if r.status_code == 200 and urlparse(r.url).path == lab:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{side.label} {name}: Lab not ready ({r.status_code} {r.url})")
            time.sleep(0.1)
    t1 = time.perf_counter()
    phases = {
        "login": t_login - t0,
        "spawn request": t_spawn - t_login,
        "then ready": t1 - t_spawn,
        "pending page": pending,
    }
    return t1 - t0, phases


PHASES = ("login", "spawn request", "then ready")


def round_of(side: Side, names: list[str], record: list[dict] | None = None) -> list[float]:
    """Every user logs in and opens their Lab at once; the seconds each took, sorted.

    Each user's split (login, spawn request, then ready) is appended to `record`.
    """
    barrier = threading.Barrier(len(names))
    times: dict[str, float] = {}
    phases: dict[str, dict] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            times[name], phases[name] = lab_ready(side, name, barrier)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
    finally:
        side.stop_all()
    if record is not None:
        record.extend(phases.values())
    split = ", ".join(f"{k} {median([ph[k] for ph in phases.values()]):.2f}" for k in PHASES)
    via = sum(ph["pending page"] for ph in phases.values())
    log(f"  {side.label} median phases (s): {split}; {via}/{len(names)} via spawn-pending")
    return sorted(times.values())


# --- report ---------------------------------------------------------------------------
def machine() -> str:
    import jupyterhub
    import jupyterlab

    return report_machine(
        f"jupyterhub {jupyterhub.__version__}", f"jupyterlab {jupyterlab.__version__}"
    )


def table(rows: list[tuple[str, float, float, float, float]]) -> str:
    lines = [
        "| scenario | workbench s | plain JupyterHub s | ratio (workbench/plain) "
        "| workbench peak MB | plain peak MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, w, p, wmem, pmem in rows:
        lines.append(
            f"| {scenario} | {w:.2f} | {p:.2f} | {w / p:.2f} | {wmem / 2**20:.0f} "
            f"| {pmem / 2**20:.0f} |"
        )
    return "\n".join(lines)


def breakdown(rows: list[tuple[str, str, list[dict]]]) -> str:
    """Median seconds of each step, over every user and round of a scenario."""
    lines = [
        "| scenario | hub | " + " | ".join(PHASES) + " | via spawn-pending |",
        "|---|---|" + "---:|" * (len(PHASES) + 1),
    ]
    for scenario, label, recs in rows:
        cells = " | ".join(f"{median([r[k] for r in recs]):.2f}" for k in PHASES)
        via = sum(r["pending page"] for r in recs)
        lines.append(f"| {scenario} | {label} | {cells} | {via}/{len(recs)} |")
    return "\n".join(lines)


def section(
    tbl: str,
    rounds: int,
    users: int,
    per_round: str,
    split: str,
    elapsed: float,
    load: tuple[float, float],
) -> str:
    return f"""{HEADING}

Goal: the workbench at most {GOAL:.2f}× plain JupyterHub (ratio ≤ {GOAL:.2f}).

Seconds from POSTing the login form to GET /user/NAME/lab answering 200 (after the
single-user OAuth redirects), with the spawn in between (plain: GET /hub/spawn; workbench:
the spawn form, POSTed with profile=cpu), one thread per user, all at once. Median of
{rounds} rounds (per round, the median and the last of the {users} users); all servers
stopped between rounds; both hubs' rounds alternate. Peak MB: highest sum of RSS of hub +
proxy + all single-user servers, sampled every 0.2 s. Plain JupyterHub:
SimpleLocalProcessSpawner + SharedPasswordAuthenticator, same proxy and
jupyterhub-singleuser. Workbench as root: one Unix account per user, made on the first
spawn (round 1).

Measured {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} on {machine()}.
The run took {elapsed / 60:.1f} min; 1-minute load average {load[0]:.2f} at its start,
{load[1]:.2f} at its end (anything above ~0.5 is other work on the machine, which makes
the 1-user numbers especially noisy).

{tbl}

Per round (workbench / plain, seconds):

{per_round}

Where the time goes (median seconds per step, over all users and rounds): login = the
login POST; spawn request = the spawn page (workbench: GET the form + POST it), which
JupyterHub answers after at most 1 s with a redirect to the spawn-pending page; then
ready = the progress event stream until "ready", then GET /user/NAME/lab to 200.

{split}
"""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    ap.add_argument("--users", type=int, default=10, help="users at once (default 10)")
    ap.add_argument("--no-write", action="store_true", help=f"don't update {DOC.name}")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.users < 1:
        ap.error("--rounds and --users must be at least 1")
    if not PROXY.exists():
        ap.error(f"missing {PROXY} (run `make install`)")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below stops everything.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    names = [f"u{i:02d}" for i in range(1, args.users + 1)]
    sides: list[Side] = []
    try:
        wb = Workbench(names)
        sides.append(wb)
        plain = PlainHub(names)
        sides.append(plain)
        for side in sides:
            log(f"starting {side.label} at {side.url}")
            side.start()

        scenarios: list[tuple[str, list[str]]] = [("1 user", names[:1])]
        if args.users > 1:
            scenarios.append((f"{args.users} users at once", names))
        results: dict[tuple[str, str], list[list[float]]] = {}
        peaks: dict[tuple[str, str], int] = {}
        records: dict[tuple[str, str], list[dict]] = {}
        for scenario, who in scenarios:
            for side in sides:
                side.sampler.reset()
            for i in range(args.rounds):
                for side in sides:
                    record = records.setdefault((scenario, side.label), [])
                    times = round_of(side, who, record)
                    results.setdefault((scenario, side.label), []).append(times)
                    log(
                        f"{scenario}, round {i + 1}, {side.label}: median {median(times):.2f} s,"
                        f" last {times[-1]:.2f} s"
                    )
            for side in sides:
                peaks[(scenario, side.label)] = side.sampler.peak

        rows, per_round = [], []
        for scenario, who in scenarios:
            w, p = results[(scenario, wb.label)], results[(scenario, plain.label)]
            wm, pm = peaks[(scenario, wb.label)], peaks[(scenario, plain.label)]
            if len(who) == 1:
                one = (median([r[0] for r in w]), median([r[0] for r in p]))
                rows.append((scenario, *one, wm, pm))
                per_round.append(
                    f"- {scenario}: "
                    + ", ".join(f"{a[0]:.2f} / {b[0]:.2f}" for a, b in zip(w, p, strict=True))
                )
            else:
                for label, pick in (("median user", median), ("last user", max)):
                    rows.append(
                        (
                            f"{scenario}, {label}",
                            median([pick(r) for r in w]),
                            median([pick(r) for r in p]),
                            wm,
                            pm,
                        )
                    )
                    per_round.append(
                        f"- {scenario}, {label}: "
                        + ", ".join(
                            f"{pick(a):.2f} / {pick(b):.2f}" for a, b in zip(w, p, strict=True)
                        )
                    )
        tbl = table(rows)
        split = breakdown(
            [(sc, side.label, records[(sc, side.label)]) for sc, _ in scenarios for side in sides]
        )
        print(tbl)
        print()
        print("\n".join(per_round))
        print()
        print(split)
    finally:
        for side in reversed(sides):
            log(f"stopping {side.label}")
            try:
                side.cleanup()
            except BaseException as e:  # keep going: the other side must stop too
                log(f"{side.label} cleanup: {e!r}")
    elapsed = time.monotonic() - t_start
    print(f"\n(run took {elapsed:.0f} s)")
    if not args.no_write:
        write_section(
            HEADING,
            section(
                tbl,
                args.rounds,
                args.users,
                "\n".join(per_round),
                split,
                elapsed,
                (load_start, os.getloadavg()[0]),
            ),
        )
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
