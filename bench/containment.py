"""Session containment (cgroups): what it costs a spawn, and what it spares a neighbour.

    .venv/bin/python bench/containment.py [--rounds 3] [--samples 15] [--no-write]

Runs as root (cgroups and Unix accounts). Two workbenches side by side (`shangzhuang up`
under temp folders, tests/integration/hub.py's RunningHub): one with the default
containment (`[backend.local.containment] cgroups = "auto"`: cgroup v1 here), one with
`cgroups = "off"` (today's Unix accounts only).

1. Login to Lab ready, contained vs not: bench/spawn.py's measurement (the login form
   POST, the spawn form, the progress stream, GET /user/NAME/lab until 200), one user,
   profile cpu; rounds alternate between the two hubs. Goal: ratio <= 1.05.
2. Noisy neighbour, on each hub: user B (profile cpu) alone, then while user A (profile
   small: 1 core, 512 MB) runs a CPU burner (4 busy processes) and a memory hog (allocates
   800 MB again and again), all detached from A's kernel. B's figures: GET /user/B/lab
   (the Lab page through the proxy) and a kernel round-trip (connect the websocket,
   execute `1+1`, read to idle), `--samples` each, sequential, the two phases alternating
   twice; medians. Goal (contained):
   B within 1.2x of alone. Peak memory: A's cgroup high-water mark (memory.max_usage_in_
   bytes) contained; uncontained, the highest RSS sum of A's processes sampled every 0.2 s.

Prints markdown tables and writes them to docs/benchmarks.md (section
"## Containment (bench/containment.py)"; other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.integration.hub import RunningHub, workdir  # noqa: E402

from report import write_section  # noqa: E402  (bench/ is on sys.path)
from spawn import PASSWORD, Workbench, lab_servers, machine, round_of  # noqa: E402

HEADING = "## Containment (bench/containment.py)"
SPAWN_GOAL, NEIGHBOUR_GOAL = 1.05, 1.2
PROFILES = """
[[profiles]]
name = "cpu"
cores = 2
memory = "4G"
[[profiles]]
name = "small"
cores = 1
memory = "512M"
"""
NOISE = """
import subprocess, sys
burn = 'while True: pass'
hog = 'import time\\nwhile True:\\n    b = b"x" * (800 * 2**20)\\n    del b\\n    time.sleep(0.2)'
loop = f'import subprocess, sys\\nwhile True: subprocess.run([sys.executable, "-c", {hog!r}])'
for code in [burn] * 4 + [loop]:
    subprocess.Popen([sys.executable, '-c', code], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("noise started")
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Site(Workbench):
    """bench/spawn.py's workbench side, with containment on or off."""

    def __init__(self, users: list[str], cgroups: str):
        self.label = "contained" if cgroups != "off" else "not contained"
        self.hub = RunningHub(
            workdir(),
            prefix=f"bench{uuid.uuid4().hex[:4]}-",
            gpus=0,
            profiles=PROFILES,
            extra_toml=f'[backend.local.containment]\ncgroups = "{cgroups}"\n',
        )
        self.users = users
        self.url = self.hub.url
        self.sampler = None


def neighbour(site: Site, samples: int, cycles: int = 2) -> dict:
    """B's Lab page and kernel round-trip, alone and beside A's noise (phases alternate,
    `cycles` times, so load from outside drifts into both alike); A's peak memory."""
    hub = site.hub
    hub.spawn("bee", "cpu")
    hub.wait_ready("bee")
    token = hub.token_for("bee")
    hub.run_code_keep("bee", "1+1", token)  # the kernel up before the clock
    figures = {"alone": ([], []), "noisy": ([], [])}

    def measure(phase: str) -> None:
        page, kernel = figures[phase]
        for _ in range(samples):
            t0 = time.perf_counter()
            r = requests.get(
                f"{hub.url}/user/bee/lab", headers={"Authorization": f"token {token}"},
                timeout=60,
            )  # fmt: skip
            r.raise_for_status()
            t1 = time.perf_counter()
            hub.run_code_keep("bee", "1+1", token)
            t2 = time.perf_counter()
            page.append(t1 - t0)
            kernel.append(t2 - t1)

    peak = 0
    for _ in range(cycles):
        measure("alone")
        hub.spawn("ant", "small")
        hub.wait_ready("ant")
        ant = site.hub.prefix + "ant"  # the Unix account of hub user ant
        ant_lab = next(p for p in lab_servers(site.sampler) if p.username() == ant)
        rss = PeakOf(ant_lab)
        assert "noise started" in hub.run_code("ant", NOISE)
        time.sleep(2)  # the noise at full strength
        measure("noisy")
        rss.close()
        peak = max(peak, cgroup_high_water(ant_lab.pid) or rss.peak)
        hub.stop_server("ant")  # also ends its detached noise where contained
        kill_leftovers(ant)
    hub.stop_server("bee")
    hub.__dict__.pop("_kernels", None)
    med = statistics.median
    return {k: (med(p), med(kn)) for k, (p, kn) in figures.items()} | {"peak": peak}


def cgroup_cost(runs: int = 20) -> tuple[float, float]:
    """Median ms of what containment adds to one session, measured in-process: make its
    cgroup with a profile's limits and start a process in it (preexec join), then kill
    and remove it (a process detached inside included)."""
    import asyncio

    from shangzhuang.hub.containment import SessionLimits, detect, session_cgroup

    made, removed = [], []
    for i in range(runs):
        cg = session_cgroup(detect(), f"shangzhuang-bench/{uuid.uuid4().hex[:8]}/s{i}.lab")
        t0 = time.perf_counter()
        cg.create(SessionLimits(cores=2, memory=4 * 2**30, pids=4096))
        proc = subprocess.Popen(["setsid", "-f", "sleep", "60"], preexec_fn=cg.join)
        t1 = time.perf_counter()
        proc.wait()
        t2 = time.perf_counter()
        asyncio.run(cg.remove())
        t3 = time.perf_counter()
        made.append(t1 - t0)
        removed.append(t3 - t2)
    bare = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(["setsid", "-f", "sleep", "0"])
        bare.append(time.perf_counter() - t0)
        proc.wait()
    for folder in Path("/sys/fs/cgroup").glob("*/shangzhuang-bench"):
        folder.rmdir()  # the runs' parent, empty by now
    med = statistics.median
    return (med(made) - med(bare)) * 1000, med(removed) * 1000


def firewall_cost(runs: int = 20) -> tuple[float, float]:
    """Median ms of a session's dashboard ports rule (containment.DashboardFirewall), in a
    chain of the bench's own: reserved at start (a block picked, the rule added), released
    at stop (the rule and, with it the last one, the chain dropped)."""
    from shangzhuang.hub.containment import DashboardFirewall, firewall_chain

    firewall = DashboardFirewall(firewall_chain(f"/nonexistent/bench-{uuid.uuid4().hex}"))
    kept, dropped = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        ports = firewall.reserve(os.getuid())
        t1 = time.perf_counter()
        firewall.release(ports, os.getuid())
        kept.append(t1 - t0)
        dropped.append(time.perf_counter() - t1)
    return statistics.median(kept) * 1000, statistics.median(dropped) * 1000


def kill_leftovers(unix_name: str) -> None:
    """Not contained, A's detached noise outlives its session: end it between phases."""
    subprocess.run(["pkill", "-KILL", "-u", unix_name], check=False)


class PeakOf:
    """Highest RSS sum of a session's processes: the Lab, its kernels, what they detached
    (same Unix user), sampled every 0.2 s."""

    def __init__(self, lab: psutil.Process):
        self.uid, self.peak, self._stop = lab.uids().real, 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for p in psutil.process_iter(["uids", "memory_info"]):
                if p.info["uids"] and p.info["uids"].real == self.uid and p.info["memory_info"]:
                    total += p.info["memory_info"].rss
            self.peak = max(self.peak, total)

    def close(self) -> None:
        self._stop.set()


def cgroup_high_water(pid: int) -> int:
    """A contained session's memory high-water mark (cgroup v1), else 0."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if "memory" in names.split(",") and path.rstrip("/").endswith(".lab"):
            f = Path("/sys/fs/cgroup/memory", path.lstrip("/"), "memory.max_usage_in_bytes")
            return int(f.read_text())
    return 0


def section(spawn_rows: list[tuple[str, list[float]]], nb: dict, cost: tuple[float, float],
            fw: tuple[float, float], rounds: int, samples: int, elapsed: float) -> str:  # fmt: skip
    (c_label, c_times), (n_label, n_times) = spawn_rows
    c, n = statistics.median(c_times), statistics.median(n_times)
    per_round = ", ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(c_times, n_times, strict=True))
    lines = [
        "| hub | B alone: Lab page ms | kernel ms | B beside A's noise: Lab page ms | kernel ms "
        "| ratio (page, kernel) | A's peak memory MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in nb.items():
        (pa, ka), (pn, kn) = r["alone"], r["noisy"]
        lines.append(
            f"| {label} | {pa * 1000:.0f} | {ka * 1000:.0f} | {pn * 1000:.0f} | {kn * 1000:.0f} "
            f"| {pn / pa:.2f}, {kn / ka:.2f} | {r['peak'] / 2**20:.0f} |"
        )
    return f"""{HEADING}

Goals: login to Lab ready with containment at most {SPAWN_GOAL:.2f}× without it; user B's
Lab page and kernel round-trip beside a noisy user A at most {NEIGHBOUR_GOAL:.1f}× B alone,
on the contained hub.

Measured {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} on {machine()}; the run took
{elapsed / 60:.1f} min. Both hubs as root (Unix account per user); contained = cgroup v1
(CPU quota, weight and cpuset, memory, pids, devices, freezer), not contained = `cgroups = "off"`.

Login to Lab ready (bench/spawn.py's measurement, 1 user, profile cpu, median of
{rounds} alternating rounds after one untimed round per hub that made the Unix account):
contained {c:.2f} s, not contained {n:.2f} s, ratio **{c / n:.2f}**.
Per round ({c_label} / {n_label}, s): {per_round}.

What containment itself adds to a session, measured in-process (20 runs, medians): its
cgroup made with a profile's limits and the process started in it, {cost[0]:.1f} ms more
than starting the process bare; at stop, killing and removing it, {cost[1]:.1f} ms. Its
Dask dashboard ports' iptables rule (both hubs have one: they run as root): {fw[0]:.1f} ms
to reserve at start, {fw[1]:.1f} ms to drop at stop. On a busy machine the spawn ratio
above mostly measures scheduling: a contained session competes as one group weighted by
its cores, while uncontained processes (the other work on the machine) each compete on
their own.

Noisy neighbour (B on profile cpu; A on profile small, 1 core and 512 MB, runs 4 busy
processes and a loop allocating 800 MB, detached from its kernel; B alone and B beside
the noise alternate twice, {samples} sequential samples each time; medians; a machine of 2
cores is shared by both users and the hub; not contained, the noise A left behind is
killed by the script between phases):

{chr(10).join(lines)}

A's peak memory: contained, the cgroup's high-water mark (the hog is OOM-killed at the
limit, again and again); not contained, the highest RSS sum of A's processes.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="spawn rounds per hub (default 3)")
    ap.add_argument("--samples", type=int, default=15, help="B's samples per phase (default 15)")
    ap.add_argument("--no-write", action="store_true", help="don't update docs/benchmarks.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("run as root: cgroups and Unix accounts need it")
    t0 = time.monotonic()
    sites = [Site(["u01", "ant", "bee"], "auto"), Site(["u01", "ant", "bee"], "off")]
    try:
        for site in sites:
            log(f"starting the {site.label} hub at {site.url}")
            site.start()
            for name in site.users:  # Workbench.start signed them up; PASSWORD is theirs
                site.hub.login(name, PASSWORD)
        for site in sites:  # not timed: makes u01's Unix account and warms the caches
            round_of(site, ["u01"])
        times: dict[str, list[float]] = {s.label: [] for s in sites}
        for i in range(args.rounds):
            for site in sites if i % 2 == 0 else reversed(sites):
                (t,) = round_of(site, ["u01"])
                times[site.label].append(t)
                log(f"spawn round {i + 1}, {site.label}: {t:.2f} s")
        nb = {}
        for site in sites:
            nb[site.label] = neighbour(site, args.samples)
            log(f"neighbour, {site.label}: {nb[site.label]}")
    finally:
        for site in sites:
            site.cleanup()
    cost = cgroup_cost()
    log(f"cgroup cost: made + joined {cost[0]:.1f} ms, emptied + removed {cost[1]:.1f} ms")
    fw = firewall_cost()
    log(f"dashboard rule: reserved {fw[0]:.1f} ms, dropped {fw[1]:.1f} ms")
    text = section(
        list(times.items()), nb, cost, fw, args.rounds, args.samples, time.monotonic() - t0
    )
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
