"""Fifty people at once, and faults: locust walks the JupyterHub user journey on this
workbench and on plain JupyterHub, then on the workbench with one fault at a time.

    .venv/bin/python bench/load.py [--users 50] [--rate 0.5] [--idle 60]
                                   [--faults quota,hub,proxy,sqlite-lock,postgres]
                                   [--fault-users 10] [--no-plain] [--no-write]
                                   [--no-resend]

Each user walks tests/journey.py's journey once (log in, spawn, Lab, a kernel cell
over the websocket, idle while polling the quota API and the Lab extension every 30 s,
check the session answers, stop); locust (bench/load_locust.py, its own process) starts
them at --rate users per second. Each user's client keeps connections alive and, as a
browser does, sends an idempotent request once more when the server closed its kept
connection just as it went out (tests/journey.py BrowserAdapter; --no-resend: never). The
run counts those resends and the kept connections found closed before reuse.
The workbench: `shangzhuang up` (tests/integration/hub.py's
RunningHub) as root, users signed up with their own passwords and approved beforehand,
profile "cpu" (the site's smallest, 2 cores), the quota service metering every 15 s (the
site default). Plain JupyterHub: bench/spawn.py's PlainHub (SimpleLocalProcessSpawner,
shared password, no quota service, no extension polls).

Measured, per run: failed requests; spawn (request to Lab 200) and API p50/p99; the hub's
event-loop lag p99 from JupyterHub's own histogram (/hub/metrics,
jupyterhub_event_loop_interval_seconds: the delay past its 50 ms tick, so 0.05 is "no
lag") over the arrival burst and over the whole run; peak RSS of the hub, the proxy, the
quota service and the sessions summed (every process each hub ever started, also after
it was re-parented); with --profile-hub, py-spy samples the hub during the arrival burst
(--nonblocking: py-spy's default pauses the hub at each sample, and on a busy machine a
paused hub waits for py-spy to be scheduled again, which the loop lag then counts).

Faults (one fresh workbench and --fault-users users each), injected once every user has
run their cell and idles: kill -9 of the quota service (JupyterHub restarts a managed
service when its poll sees it gone), of the proxy (JupyterHub's proxy check restarts it),
of the hub (nothing restarts it: this script starts it again at once, as a service
manager with Restart=always would), the quota ledger (SQLite) locked by a `BEGIN
IMMEDIATE` held 20 s, and PostgreSQL (the ledger's database, tests/postgres.py) restarted.
A prober asks the hub (/hub/health) and the quota API (/me) every 0.25 s: how long each
was down. Afterwards the ledger is checked against the sessions' true running times:
each user's charged cpu_hours (usage API) against 2 cores x (the end of the session's Lab
process, seen by this script every 0.2 s - the hub's `started`), and no two charges of
one session overlap (counted twice).

Prints the tables and writes them to docs/benchmarks.md (section
"## Load: fifty users at once, and faults (bench/load.py)"; other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from tests.integration.hub import ADMIN, RunningHub, workdir  # noqa: E402
from tests.journey import charged_vs_ran  # noqa: E402

from report import machine as report_machine  # noqa: E402
from report import write_section  # noqa: E402
from spawn import PROXY, SHARED_PASSWORD, PlainHub  # noqa: E402

HEADING = "## Load: fifty users at once, and faults (bench/load.py)"
PASSWORD = "load-horse-42"
CORES = 2  # profile "cpu": what one session is charged per hour, in cpu_hours
QUOTA = """
sample_seconds = 15
[quota.accounts.default]
cpu_hours = 100000
"""
FAULTS = ("quota", "proxy", "hub", "sqlite-lock", "postgres")
LOCK_SECONDS = 20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- memory, per process role --------------------------------------------------------
def role(p: psutil.Process, hub_pid: int) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    if p.pid == hub_pid or "-m jupyterhub" in cmd or "shangzhuang.cli up" in cmd:
        return "hub"
    if "configurable-http-proxy" in cmd:
        return "proxy"
    if "shangzhuang.quota.service" in cmd:
        return "quota service"
    if "shangzhuang.apps.service" in cmd or "idle_culler" in cmd:
        return "other services"
    return "sessions"


class Memory:
    """Peak summed RSS per role, every 0.5 s, over every process the hub ever started
    (a process re-parented when its hub died is still counted)."""

    def __init__(self, hub_pid):
        self.hub_pid = hub_pid  # a callable: the hub's pid now (it changes on a restart)
        self.seen: dict[int, psutil.Process] = {}
        self.peak: dict[str, int] = defaultdict(int)
        self.cpu_seen: dict[int, tuple[str, float]] = {}  # pid: (role, CPU s at last look)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pid = self.hub_pid()
            try:  # (psutil.Process(None) would be this very process)
                hub = psutil.Process(pid) if pid else None
                for p in [hub, *hub.children(recursive=True)] if hub else []:
                    self.seen.setdefault(p.pid, p)
            except psutil.Error:
                pass
            now: dict[str, int] = defaultdict(int)
            for p in list(self.seen.values()):
                try:
                    if p.is_running() and (what := role(p, pid or 0)) != "gone":
                        now[what] += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu_seen[p.pid] = (what, t.user + t.system)
                except psutil.Error:
                    pass
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def cpu(self) -> dict[str, float]:
        """CPU seconds per role, each process's at its last look (every 0.5 s)."""
        total: dict[str, float] = defaultdict(float)
        for what, seconds in self.cpu_seen.values():
            total[what] += seconds
        return dict(total)

    def kill_leftovers(self) -> None:
        for p in self.seen.values():
            try:
                if p.is_running():
                    p.kill()
            except psutil.Error:
                pass


class LabLifetimes:
    """When each user's Lab process ran (the one the hub's spawner started: a child of the
    hub running src/shangzhuang/session.py, which execs jupyterhub-singleuser), seen from
    this process every 0.2 s, also after a hub's restart re-parented it: the sessions'
    true running times for the ledger check, whatever the load client's stalls.
    `last_alive` never comes after the process's end and `gone` never before it (a late
    look only widens that bracket); a zombie (dead, not yet reaped) counts as gone."""

    EVERY = 0.2

    def __init__(self, hub_pid):
        self.hub_pid = hub_pid  # a callable, as Memory's
        self.labs: dict[str, dict] = {}  # user: {pid, last_alive, gone}
        self._procs: dict[str, psutil.Process] = {}
        self._others: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.EVERY):
            pid = self.hub_pid()
            try:
                children = psutil.Process(pid).children() if pid else []
            except psutil.Error:
                children = []
            known = {q.pid for q in self._procs.values()} | self._others
            for p in children:
                if p.pid in known:
                    continue
                try:
                    cmd = " ".join(p.cmdline())  # session.py execs the Lab: same pid
                    if "session.py" not in cmd and "jupyterhub-singleuser" not in cmd:
                        if role(p, 0) not in ("sessions", "hub"):  # (a forked Lab: not
                            self._others.add(p.pid)  # yet exec'd) the proxy, the services
                        continue
                    user = p.environ().get("JUPYTERHUB_USER")
                except psutil.Error:
                    continue
                if user and user not in self._procs:  # one Lab per user's journey
                    self._procs[user] = p
                    self.labs[user] = {"pid": p.pid, "last_alive": None, "gone": None}
            for user, p in list(self._procs.items()):
                lab = self.labs[user]
                if lab["gone"] is not None:
                    continue
                before = time.time()  # alive at the look: alive then; dead: dead after it
                try:
                    alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                except psutil.Error:
                    alive = False
                if alive:
                    lab["last_alive"] = before
                elif lab["last_alive"] is not None:
                    lab["gone"] = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


# --- the hub's event loop lag ----------------------------------------------------------
def loop_histogram(url: str, token: str | None) -> dict[float, float]:
    """Cumulative bucket counts of jupyterhub_event_loop_interval_seconds, by upper bound."""
    headers = {"Authorization": f"token {token}"} if token else {}
    text = requests.get(f"{url}/hub/metrics", headers=headers, timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("jupyterhub_event_loop_interval_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    if not out:
        raise RuntimeError("no jupyterhub_event_loop_interval_seconds in /hub/metrics")
    return out


def late_ticks(
    before: dict[float, float], after: dict[float, float], bound: float = 0.1
) -> tuple[int, int]:
    """(ticks more than `bound` s late, all ticks) between two scrapes: finer than the p99's
    bucket. The goal's p99 under 100 ms holds when under 1% of the ticks are late."""
    total = after[float("inf")] - before.get(float("inf"), 0)
    on_time = after[bound] - before.get(bound, 0)
    return int(total - on_time), int(total)


def lag_p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The p99 of the ticks between two scrapes, as the bucket's upper bound."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for b, c in zip(bounds, counts, strict=True):
        if c >= 0.99 * counts[-1]:
            return b
    return bounds[-1]


# --- a prober: how long was each part down -------------------------------------------
class Prober:
    """Asks each check every 0.25 s: the spans it failed, and its slowest good answer."""

    def __init__(self, checks: dict[str, callable]):
        self.checks = checks
        self.down: dict[str, list[tuple[float, float]]] = defaultdict(list)  # name: spans
        self.slowest: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        since: dict[str, float | None] = dict.fromkeys(self.checks)
        while not self._stop.wait(0.25):
            for name, check in self.checks.items():
                t0 = time.time()
                try:
                    ok = check()
                except Exception:
                    ok = False
                now = time.time()
                if ok:
                    self.slowest[name] = max(self.slowest[name], now - t0)
                if not ok and since[name] is None:
                    since[name] = now
                elif ok and since[name] is not None:
                    self.down[name].append((since[name], now))
                    since[name] = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest(self, name: str) -> float:
        return max((b - a for a, b in self.down[name]), default=0.0)


# --- the two hubs -----------------------------------------------------------------------
class Workbench:
    label = "workbench"

    def __init__(self, quota: str = QUOTA, keep_alive: int | None = None):
        self.hub = RunningHub(workdir(), prefix=f"load{uuid.uuid4().hex[:4]}-", quota=quota)
        if keep_alive:  # the proxy's keep-alive timeout, for a comparison (Node's: 5)
            text = self.hub.config.read_text()
            self.hub.config.write_text(
                text.replace("[hub]\n", f"[hub]\nproxy_keep_alive_seconds = {keep_alive}\n", 1)
            )
        self.url = self.hub.url
        self.memory: Memory | None = None
        self.labs: LabLifetimes | None = None

    def pid(self) -> int | None:
        return self.hub.proc.pid if self.hub.proc else None

    def start(self, names: list[str]) -> None:
        self.hub.start()
        self.memory = Memory(self.pid)
        self.labs = LabLifetimes(self.pid)
        admin = self.hub.login(ADMIN, self.hub.password_of_admin())
        for name in names:  # signed up, and approved by the admin on /hub/authorize
            self.hub.signup(name, PASSWORD)
            self.hub.form(admin, f"/hub/authorize/{name}", {}, allow_redirects=False)

    def token(self) -> str:
        return self.hub.admin_token()

    def child(self, what: str) -> psutil.Process:
        for p in psutil.Process(self.pid()).children(recursive=True):
            if role(p, 0) == what:
                return p
        raise RuntimeError(f"no {what} under the hub")

    def quota_ok(self) -> bool:
        r = requests.get(f"{self.url}/services/quota/api/v1/me", timeout=5,
                         headers={"Authorization": f"token {self.token()}"})  # fmt: skip
        return r.status_code == 200

    def hub_ok(self) -> bool:
        return requests.get(f"{self.url}/hub/health", timeout=5).status_code == 200

    def usage(self, name: str) -> list[dict]:
        r = requests.get(
            f"{self.url}/services/quota/api/v1/usage", params={"user": name, "limit": 1000},
            headers={"Authorization": f"token {self.token()}"}, timeout=30,
        )  # fmt: skip
        r.raise_for_status()
        return [x for x in r.json()["records"] if x["resource"] == "cpu_hours"]

    def cleanup(self) -> None:
        if self.hub.log.exists():  # kept: what went wrong, when something did
            kept = Path(tempfile.gettempdir()) / f"load-hub-{self.hub.port}.log"
            shutil.copy(self.hub.log, kept)
            log(f"  the hub's log: {kept}")
        try:
            if self.hub.proc and self.hub.proc.poll() is None:
                try:
                    self.hub.cleanup()  # stops every server, the hub, removes accounts
                except Exception as e:
                    log(f"workbench cleanup: {e}")
        finally:
            if self.labs:
                self.labs.close()
            if self.memory:
                self.memory.close()
                self.memory.kill_leftovers()
            self.hub.proc = None
            self.hub.cleanup()


class Plain:
    label = "plain JupyterHub"

    def __init__(self):
        self.side = PlainHub([])
        self.url = self.side.url
        self.memory: Memory | None = None

    def start(self, names: list[str]) -> None:
        self.side.users = names
        write = self.side.write_config

        def write_config():  # the same, with /hub/metrics readable without a token
            write()
            with open(self.side.config, "a") as f:
                f.write("c.JupyterHub.authenticate_prometheus = False\n")

        self.side.write_config = write_config
        self.side.start()
        self.memory = Memory(self.pid)

    def pid(self) -> int | None:
        return self.side.proc.pid if self.side.proc else None

    def token(self) -> None:
        return None

    def hub_ok(self) -> bool:
        return requests.get(f"{self.url}/hub/health", timeout=5).status_code == 200

    def cleanup(self) -> None:
        try:
            self.side.cleanup()
        finally:
            if self.memory:
                self.memory.close()
                self.memory.kill_leftovers()


# --- faults -------------------------------------------------------------------------------
def inject(fault: str, wb: Workbench, pg) -> str:
    """Do it; return who brought the part back."""
    if fault in ("quota", "proxy"):
        wb.child("quota service" if fault == "quota" else "proxy").kill()
        return "JupyterHub" if fault == "quota" else "JupyterHub (proxy check)"
    if fault == "hub":
        os.kill(wb.pid(), signal.SIGKILL)
        wb.hub.proc.wait()
        wb.hub.start(timeout=120)  # as systemd's Restart=always would, at once
        return "this script, at once (as a service manager)"
    if fault == "sqlite-lock":
        from shangzhuang.quota import ledger_file
        from shangzhuang.settings import load_settings

        ledger = ledger_file(load_settings(wb.hub.config))
        db = sqlite3.connect(ledger, isolation_level=None, timeout=60)
        db.execute("BEGIN IMMEDIATE")
        time.sleep(LOCK_SECONDS)
        db.execute("COMMIT")
        db.close()
        return f"the lock's holder, after {LOCK_SECONDS} s"
    if fault == "postgres":
        # -l: without it the restarted server writes to pg_ctl's stdout, which tests/
        # postgres.py captures, and pg_ctl's caller waits for that pipe to close forever.
        pg.pg_ctl("-m", "fast", "-w", "-l", str(pg.log), "restart")
        return "pg_ctl restart"
    raise ValueError(fault)


# --- one run ------------------------------------------------------------------------------
def run(side, names: list[str], *, rate: float, idle: float, extras: bool,
        fault: str | None = None, pg=None, profile_hub: bool = False,
        resend: bool = True) -> dict:  # fmt: skip
    """Locust walks every user's journey once on a started hub; the figures of the run."""
    base = Path(workdir())
    out = Path(tempfile.gettempdir()) / f"load-requests-{uuid.uuid4().hex[:6]}.jsonl"  # kept
    log(f"  requests: {out}")
    config = base / "load.json"
    config.write_text(json.dumps({
        "url": side.url, "names": names, "rate": rate, "idle": idle, "extras": extras,
        "password": PASSWORD if extras else SHARED_PASSWORD,
        "profile": "cpu" if extras else None, "out": str(out), "resend": resend,
    }))  # fmt: skip
    token = side.token()
    checks = {"hub": side.hub_ok}
    if extras:
        checks["quota API"] = side.quota_ok
    prober = Prober(checks)
    hist0 = loop_histogram(side.url, token)
    uptime0 = os.getloadavg()
    t0 = time.time()
    locust = subprocess.Popen([sys.executable, str(Path(__file__).parent / "load_locust.py"),
                               str(config)], cwd=ROOT)  # fmt: skip
    spy = None
    if profile_hub:
        spy_out = base / "hub.pyspy"
        spy_seconds = int(len(names) / rate) + 10
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(side.pid()),
             "-f", "raw", "-o", str(spy_out), "--threads", "--nonblocking",
             "-d", str(spy_seconds), "-r", "50"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def records() -> list[dict]:
        return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

    # The arrival burst: until every user has a Lab open (or failed).
    hist_burst = None
    fault_note = None
    fault_at = None
    fault_seconds = 0.0  # how long the fault itself took (the hub's start, the lock, pg_ctl)
    while locust.poll() is None:
        rs = records()
        opened = {r["user"] for r in rs if r.get("kind") == "open Lab"} | {
            r["journey"]["name"] for r in rs if "journey" in r
        }
        if hist_burst is None and len(opened) >= len(names):
            hist_burst = loop_histogram(side.url, token)
            t_burst = time.time() - t0
            log(f"  {side.label}: all {len(names)} Labs open after {t_burst:.0f} s")
        cells = {r["user"] for r in rs if r.get("kind") == "kernel cell"}
        if fault and fault_at is None and len(cells) >= len(names):
            fault_at = time.time()
            log(f"  injecting {fault}")
            fault_note = inject(fault, side, pg)
            fault_seconds = time.time() - fault_at
            if fault == "hub":
                token = side.token()
        time.sleep(0.5)
    hist1 = loop_histogram(side.url, token)
    elapsed = time.time() - t0
    uptime1 = os.getloadavg()
    prober.close()
    spy_summary = ""
    if spy:
        spy.wait(120)
        spy_summary = summarise_pyspy(base / "hub.pyspy", spy_seconds)

    rs = records()
    reqs = [r for r in rs if "kind" in r]
    journeys = [r["journey"] for r in rs if "journey" in r]
    failed = [r for r in reqs if r["error"]]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in reqs:
        if not r["error"]:
            by_kind[r["kind"]].append(r["seconds"])
    result = {
        "side": side.label, "users": len(names), "elapsed": elapsed,
        "load": (uptime0[0], uptime1[0]), "requests": len(reqs), "failed": len(failed),
        "failed kinds": dict(Counter(r["kind"] for r in failed)),
        "failed span": (max(r["t"] for r in failed) - min(r["t"] for r in failed))
        if failed else 0.0,
        "journeys ok": sum(not j["error"] for j in journeys),
        "errors": [j["error"] for j in journeys if j["error"]][:5],
        # Kept connections the server closed under the client: found closed before reuse
        # (idle s), and requests sent again after one closed as they went out.
        "dropped": sorted(x for j in journeys for x in j.get("dropped", [])),
        "resent": [r for j in journeys for r in j.get("resent", [])],
        "failed detail": [f"{r['kind']}: {r['error']}" for r in failed][:10],
        "resend": resend,
        "client lag": next((r["client lag"] for r in rs if "client lag" in r), None),
        "spawn": by_kind["spawn to Lab"],
        "api": by_kind["quota API"] + by_kind["Lab extension"],
        "by kind": {k: pct(v) for k, v in by_kind.items()},
        "lag burst": lag_p99(hist0, hist_burst) if hist_burst else None,
        "lag run": lag_p99(hist0, hist1),
        "late burst": late_ticks(hist0, hist_burst) if hist_burst else None,
        "late run": late_ticks(hist0, hist1),
        "memory": dict(side.memory.peak),
        "cpu": side.memory.cpu(),
        "down": {k: prober.longest(k) for k in checks},
        "slowest": dict(prober.slowest),
        "restarted by": fault_note,
        "fault seconds": fault_seconds,
        "pyspy": spy_summary,
    }  # fmt: skip
    if extras:
        result["ledger"] = ledger_check(side, journeys)
        result["ledger sessions"] = result["ledger"].pop("per session")  # kept with --save
    long = ("spawn", "api", "pyspy", "ledger sessions")
    log(f"  {side.label}: {json.dumps({k: v for k, v in result.items() if k not in long})}")
    return result


def pct(xs: list[float], q: float | None = None) -> tuple[float, float] | float:
    """(p50, p99) of xs, or one quantile; NaN when empty."""
    if not xs:
        return (float("nan"), float("nan")) if q is None else float("nan")
    s = sorted(xs)

    def at(p: float) -> float:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    return (at(0.5), at(0.99)) if q is None else at(q)


def ledger_check(wb: Workbench, journeys: list[dict]) -> dict:
    """Each finished session's charged cpu_hours against 2 cores x its true running time:
    from the hub's `started` (where its metering starts, README "Quota") to the end of
    its Lab process (LabLifetimes), which lies between the last look that saw it alive
    and the first that saw it gone. Per session, charged - ran is then within
    [charged - (gone - started), charged - (last alive - started)]: `most under` is the
    lowest upper end (below 0: charge lost for certain, at least that much), `most over`
    the highest lower end (above 0: charged for time after the process's end, at least
    that much). The load client's own stop time is kept beside, as before."""
    deadline = time.time() + 5  # the last stops' processes: one more look or two
    while time.time() < deadline and any(
        lab["gone"] is None for lab in wb.labs.labs.values()
    ):  # fmt: skip
        time.sleep(0.2)
    under, over, client, brackets, overlaps, missing = [], [], [], [], 0, 0
    per_session = {}
    for j in journeys:
        lab = wb.labs.labs.get(j["name"])
        if not (j["started"] and lab and lab["last_alive"] and lab["gone"]):
            missing += 1
            continue
        usage = wb.usage(j["name"])
        hi = charged_vs_ran(usage, j["started"], lab["last_alive"], CORES)
        lo = charged_vs_ran(usage, j["started"], lab["gone"], CORES)
        under.append(hi["diff"])
        over.append(lo["diff"])
        brackets.append(lab["gone"] - lab["last_alive"])
        overlaps += hi["overlaps"]
        if j["stopped"]:
            client.append(charged_vs_ran(usage, j["started"], j["stopped"], CORES)["diff"])
        per_session[j["name"]] = {
            "started": j["started"], "last alive": lab["last_alive"], "gone": lab["gone"],
            "client stop": j["stopped"], "charges": usage,
        }  # fmt: skip
    return {
        "sessions": len(under), "unchecked": missing, "overlapping charges": overlaps,
        "most under s": min(under, default=0.0), "most over s": max(over, default=0.0),
        "bracket s": max(brackets, default=0.0),
        "client min diff s": min(client, default=0.0),
        "client max diff s": max(client, default=0.0),
        "per session": per_session,
    }  # fmt: skip


def summarise_pyspy(path: Path, seconds: float, top: int = 8) -> str:
    """Where the hub's event loop goes: its main thread's samples (raw collapsed stacks,
    one thread per line with --threads).

    py-spy leaves out idle samples (waiting in epoll), so the main thread's samples are the
    loop's busy ones (running, or runnable and waiting for a CPU). Other threads (asyncio's
    pool, pycares' and SQLAlchemy's) are counted apart: their samples include waits in C
    calls py-spy can't tell from work, and they do not hold up the loop."""
    if not path.exists():
        return "(py-spy wrote nothing)"
    self_time: Counter = Counter()
    inclusive: Counter = Counter()
    main = others = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        thread, *frames = stack.split(";")
        if not frames:  # --nonblocking: a sample taken while the stack was changing
            continue
        if "MainThread" not in thread:
            others += int(n)
            continue
        main += int(n)
        self_time[frames[-1]] += int(n)
        for f in set(frames):
            if "jupyterhub/" in f or "shangzhuang/" in f or "sqlalchemy/" in f:
                inclusive[f] += int(n)
    ticks = int(seconds * 50)
    lines = [f"The main thread (the event loop) was busy in {main} of {ticks} samples "
             f"({100 * main / ticks:.0f}%; 50 Hz for {seconds:.0f} s); other threads: "
             f"{others} samples. The main thread's top frames by own time:", ""]  # fmt: skip
    if not main:
        return lines[0]
    lines += [f"- {100 * n / main:.0f}% `{f}`" for f, n in self_time.most_common(top)]
    lines += ["", "JupyterHub's, SQLAlchemy's and our frames by the main thread's time in or "
              "under them:", ""]  # fmt: skip
    lines += [f"- {100 * n / main:.0f}% `{f}`" for f, n in inclusive.most_common(3 * top)]
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------
def mb(b: int) -> str:
    return f"{b / 2**20:.0f}"


def fmt(x: float | None, unit: str = "s") -> str:
    return "n/a" if x is None or x != x else f"{x:.2f}"


def late(ticks) -> str:
    """'12 of 1400 (0.9%)': the event loop's ticks more than 100 ms late, of all."""
    if not ticks:
        return "n/a"
    n, total = ticks
    return f"{n} of {total} ({100 * n / max(1, total):.1f}%)"


def connections(r: dict) -> str:
    """What the server's keep-alive did to the load client's kept connections."""
    dropped, resent = r.get("dropped", []), r.get("resent", [])
    text = (f"{r['side']}, kept connections: {len(dropped)} found closed by the server "
            "before reuse")  # fmt: skip
    if dropped:
        text += f" (idle {min(dropped):.1f}-{max(dropped):.1f} s)"
    text += f"; {len(resent)} requests sent again, as a browser would"
    if resent:
        text += " (" + ", ".join(f"{what} after {idle:.2f} s idle" for what, idle in resent) + ")"
    if not r.get("resend", True):
        text += " (--no-resend: none sent again)"
    if lag := r.get("client lag"):
        text += (f". The load client's own 0.1 s sleeps woke over 1 s late {lag['over 1 s']} "
                 f"times of {lag['ticks']}, at most {lag['max']:.1f} s late")  # fmt: skip
    return text


def side_table(results: list[dict]) -> str:
    lines = [
        "| hub | users | journeys complete | failed requests | spawn p50 / p99 s "
        "| API p50 / p99 s | loop lag p99, arrivals / run s | ticks > 100 ms late, "
        "arrivals / run | peak MB: hub / proxy / quota / sessions |",
        "|---|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in results:
        m = r["memory"]
        s50, s99 = pct(r["spawn"])
        a50, a99 = pct(r["api"])
        lines.append(
            f"| {r['side']} | {r['users']} | {r['journeys ok']} | {r['failed']} of "
            f"{r['requests']} | {fmt(s50)} / {fmt(s99)} | "
            + (f"{fmt(a50)} / {fmt(a99)}" if r["api"] else "(none)")
            + f" | {fmt(r['lag burst'])} / {fmt(r['lag run'])} | {late(r.get('late burst'))}"
            f" / {late(r.get('late run'))} | {mb(m.get('hub', 0))} / "
            f"{mb(m.get('proxy', 0))} / {mb(m.get('quota service', 0)) if 'quota service' in m else '-'}"  # noqa: E501
            f" / {mb(m.get('sessions', 0))} |"
        )
    return "\n".join(lines)


def fault_table(results: list[dict]) -> str:
    lines = [
        "| fault | brought back by (the fault's own s) | hub down s | quota API down s "
        "| slowest good answer s: hub / quota API | failed requests (kinds) over s "
        "| journeys complete "
        "| ledger: charged - ran, s: most under / most over (widest bracket; by the "
        "client's stop: min) | charges counted twice |",
        "|---|---|---:|---:|---|---|---:|---|---:|",
    ]
    for r in results:
        led = r["ledger"]
        kinds = ", ".join(f"{k} {n}" for k, n in r["failed kinds"].items()) or "-"
        lines.append(
            f"| {r['fault']} | {r['restarted by']} ({r['fault seconds']:.1f} s) | "
            f"{r['down'].get('hub', 0):.1f} | "
            f"{r['down'].get('quota API', 0):.1f} | {r['slowest'].get('hub', 0):.2f} / "
            f"{r['slowest'].get('quota API', 0):.2f} | {r['failed']} ({kinds}) over "
            f"{r['failed span']:.1f} | {r['journeys ok']}/{r['users']} | "
            + (
                f"{led['most under s']:+.1f} / {led['most over s']:+.1f} (bracket "
                f"{led['bracket s']:.1f}; client's stop: {led['client min diff s']:+.1f})"
                if "most under s" in led  # runs kept before the Labs were watched: the
                else f"client's stop: {led['min diff s']:+.1f} / {led['max diff s']:+.1f}"
            )  # client's stop alone
            + (f" ({led['unchecked']} unchecked)" if led["unchecked"] else "")
            + f" | {led['overlapping charges']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--rate", type=float, default=0.5, help="arrivals per second (0.5: 30/min)")
    ap.add_argument("--idle", type=float, default=60, help="seconds each user idles, polling")
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated; '' for none")
    ap.add_argument("--fault-users", type=int, default=10)
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--faults-only", action="store_true", help="skip the side-by-side runs")
    ap.add_argument("--plain-only", action="store_true", help="only plain JupyterHub's run")
    ap.add_argument("--profile-hub", action="store_true", help="py-spy the workbench's hub")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-resend", action="store_true", help="the load client never sends "
                    "a request again (requests' own way), not even as a browser would")  # fmt: skip
    ap.add_argument("--proxy-keep-alive", type=int, metavar="SECONDS",
                    help="the workbench's proxy keeps idle connections this long (default: "
                    "hub.proxy_keep_alive_seconds; 5 is Node's own)")  # fmt: skip
    ap.add_argument("--save", type=Path, help="also keep this run's results in a JSON file")
    ap.add_argument("--report-from", type=Path, nargs="+", metavar="JSON",
                    help="run nothing: write the section from runs kept with --save")  # fmt: skip
    ap.add_argument("--notes", type=Path, help="with --report-from: what the figures mean, "
                    "in markdown, at the section's end")  # fmt: skip
    args = ap.parse_args(argv)
    if args.report_from:  # e.g. the faults and the fifty users, measured one after the other
        kept = [json.loads(f.read_text()) for f in args.report_from]
        text = report(argparse.Namespace(**kept[-1]["args"]),
                      [r for k in kept for r in k["sides"]],
                      [r for k in kept for r in k["faults"]],
                      kept[0]["uptime"], kept[-1]["uptime_end"],
                      sum(k["elapsed"] for k in kept))  # fmt: skip
        if args.notes:
            text = text.rstrip("\n") + "\n\n" + args.notes.read_text().strip() + "\n"
        print(text)
        if not args.no_write:
            write_section(HEADING, text)
        return 0
    faults = [f for f in args.faults.split(",") if f]
    if unknown := set(faults) - set(FAULTS):
        ap.error(f"--faults: unknown {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    if not PROXY.exists():
        ap.error(f"missing {PROXY} (run `make install`)")
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))

    started = time.time()
    args.commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
    names = [f"u{i:02d}" for i in range(1, args.users + 1)]
    kw = {"rate": args.rate, "idle": args.idle, "resend": not args.no_resend}
    sides: list[dict] = []
    faulted: list[dict] = []
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    makers = (Workbench, None if args.no_plain else Plain)
    if args.faults_only or args.plain_only:
        makers = (Plain,) if args.plain_only else ()
    for make in makers:
        if make is None:
            continue
        side = make(keep_alive=args.proxy_keep_alive) if make is Workbench else make()
        try:
            log(f"starting {side.label} at {side.url}, {len(names)} users")
            side.start(names)
            sides.append(run(side, names, extras=make is Workbench,
                             profile_hub=args.profile_hub and make is Workbench, **kw))  # fmt: skip
        finally:
            side.cleanup()
    for fault in faults:
        pg = None
        quota = QUOTA
        if fault == "postgres":
            from tests.postgres import start_postgres

            pg = start_postgres()
            quota = f'database_url = "{pg.create_database()}"\n' + QUOTA
        wb = Workbench(quota, keep_alive=args.proxy_keep_alive)
        try:
            fnames = names[: args.fault_users]
            log(f"fault {fault}: workbench at {wb.url}, {len(fnames)} users")
            wb.start(fnames)
            r = run(wb, fnames, extras=True, fault=fault, pg=pg, **kw)
            r["fault"] = fault
            faulted.append(r)
        finally:
            wb.cleanup()
            if pg:
                pg.stop()
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    elapsed = time.time() - started
    if args.save:
        args.save.write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k not in ("save", "report_from")},
            "sides": sides, "faults": faulted, "uptime": uptime, "uptime_end": uptime_end,
            "elapsed": elapsed,
        }))  # fmt: skip
    text = report(args, sides, faulted, uptime, uptime_end, elapsed)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    ok = all(r["failed"] == 0 for r in sides)
    return 0 if ok else 1


def report(args, sides, faulted, uptime, uptime_end, elapsed) -> str:
    from importlib.metadata import version

    import jupyterhub

    machine = report_machine(f"jupyterhub {jupyterhub.__version__}", f"locust {version('locust')}")
    commit = args.commit
    parts = [
        HEADING, "",
        "Goals: 0 failed requests; hub event-loop lag p99 under 100 ms, also while the users "
        "arrive; under a fault, no request fails for longer than the part's restart, no "
        "charge lost or counted twice, every session reachable after.", "",
        f"Each user: log in, spawn `cpu` (workbench) / the default (plain), open Lab, run a "
        f"cell over the kernel websocket, idle {args.idle:.0f} s polling the quota API and the "
        f"Lab extension every 30 s (workbench only), check the session answers, stop. "
        f"Arrivals: {args.rate:g} users/s (locust). Spawn = the spawn request to Lab 200 "
        "(via the spawn-pending page's event stream); API = the quota API's /me and the Lab "
        "extension's endpoint. Loop lag: p99 of jupyterhub_event_loop_interval_seconds "
        "(bucket bound; 0.05 = no lag) while the users arrive / over the run, and the ticks "
        "more than 100 ms late (the goal holds under 1%). Peak MB: "
        "summed RSS per role, sampled every 0.5 s.", "",
        f"Measured {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} at commit {commit} on "
        f"{machine}; the whole "
        f"bench took {elapsed / 60:.1f} min. `uptime` before: `{uptime}`; after: "
        f"`{uptime_end}`.", "",
    ]  # fmt: skip
    if sides:
        parts += [side_table(sides), ""]
        for r in sides:
            if r["errors"]:
                parts += [f"{r['side']}: failed journeys, first errors: "
                          + "; ".join(f"`{e[:200]}`" for e in r["errors"]), ""]  # fmt: skip
            parts += [f"{r['side']}, p50 / p99 s per step: " + ", ".join(
                f"{k} {fmt(v[0])} / {fmt(v[1])}" for k, v in r["by kind"].items()), ""]  # fmt: skip
            parts += [connections(r), ""]
        for r in sides:
            if r["pyspy"]:
                parts += [f"py-spy of the {r['side']}'s hub while the users arrive:", "",
                          r["pyspy"], ""]  # fmt: skip
    if faulted:
        parts += [
            f"### Faults ({args.fault_users} users, one fresh workbench per fault)", "",
            "Injected once every user has run their cell and idles. Down s: the longest "
            "span the prober (every 0.25 s, 5 s timeout) saw /hub/health or the quota API's "
            "/me fail; slowest: its slowest answer that came. "
            "Ledger: per session, charged cpu_hours / 2 cores x 3600 minus its true running "
            "time, in seconds: from the hub's `started` (where metering starts) to the end of "
            "its Lab process, which the bench saw every 0.2 s (between the last look that saw "
            "it alive and the first that saw it gone: the bracket). Most under: the lowest "
            "charged - (last alive - started), below 0 a charge lost for certain; most over: "
            "the highest charged - (gone - started), above 0 time charged after the Lab's end. "
            "Beside it, as measured before, against the load client's own stop time (late by "
            "the client's stalls). 'Counted twice': overlapping charges of one session.",
            "", fault_table(faulted), "",
        ]  # fmt: skip
        for r in faulted:
            if r["errors"]:
                parts += [f"{r['fault']}: failed journeys: "
                          + "; ".join(f"`{e[:200]}`" for e in r["errors"]), ""]  # fmt: skip
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
