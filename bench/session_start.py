"""Where a Lab session's start goes: the workbench's against plain JupyterHub's.

    .venv/bin/python bench/session_start.py [--starts 5] [--no-hubs] [--no-write]

Two measurements, each repeated --starts times (the sides alternate, so background load
hits them alike), reported as medians with the machine's load average:

1. Through the hubs: seconds from POST /hub/api/users/NAME/server to the hub listing the
   server as ready, and the CPU seconds its Lab process used until then. Workbench:
   `shangzhuang up` (bench/spawn.py's Workbench: as root, the user's own Unix account,
   a cgroup, the dashboard ports' iptables rule, the quota service's checks, session.py);
   plain: JupyterHub with SimpleLocalProcessSpawner (bench/spawn.py's PlainHub). Both
   run the same .venv, so the same JupyterLab and server extensions.
2. The Lab process alone, started with the command and environment its hub gives it,
   against a stand-in for the hub's API that answers its version check and activity
   posts (the Lab waits on the first at start): seconds until it accepts connections, and
   the CPU seconds it (and the children it ran) used until then. Variants: plain
   (jupyterhub-singleuser), workbench (session.py, which becomes jupyterhub-singleuser),
   and the workbench without each server extension in turn (what each one costs), and
   with none of those (what a hub with only JupyterLab would start).

CPU seconds are the steadier figure on a shared machine: wall times grow with the load.
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import machine, write_section  # noqa: E402

HEADING = "## Lab session start: where it goes (bench/session_start.py)"
SESSION = ROOT / "src" / "shangzhuang" / "session.py"
SINGLEUSER = Path(sys.prefix) / "bin" / "jupyterhub-singleuser"
# The server extensions the workbench adds to a JupyterLab (all enabled in its .venv).
EXTRAS = [
    "dask_labextension", "voila.server_extension", "jupyter_server_proxy",
    "jupyter_resource_usage", "nbgitpuller", "shangzhuang_lab", "jupyter_lsp",
]  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def waited_seconds(p: psutil.Process) -> float:
    """Seconds the process's threads (those alive) spent runnable but waiting for a CPU
    (/proc/PID/task/TID/schedstat, 2nd field): what a cgroup's low weight costs it."""
    total = 0
    for task in Path(f"/proc/{p.pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def cpu_seconds(p: psutil.Process) -> float:
    """CPU seconds of a process, its reaped children and its live ones."""
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in p.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


# --- 2. the Lab process alone ----------------------------------------------------------
class HubStandIn(http.server.BaseHTTPRequestHandler):
    """Answers what a starting jupyterhub-singleuser asks of its hub: GET /hub/api (the
    version check it awaits) and POST .../activity."""

    def _answer(self) -> None:
        import jupyterhub

        body = json.dumps({"version": jupyterhub.__version__}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", jupyterhub.__version__)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(hub_api: str, port: int, home: str, workbench: bool) -> dict[str, str]:
    """What a hub's spawner hands its Lab (JupyterHub 6.1.1's get_env, plus the workbench's
    own variables, hub_config's sessions())."""
    user, prefix = "bench", "/user/bench/"
    env = {
        "PATH": os.pathsep.join([f"{sys.prefix}/bin", "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": home, "LANG": "C.UTF-8", "USER": "bench", "SHELL": "/bin/bash",
        "TMPDIR": home,  # session.py's runtime folder: removed with the home
        "JUPYTERHUB_API_TOKEN": "bench-token", "JPY_API_TOKEN": "bench-token",
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}", "JUPYTERHUB_USER": user,
        "JUPYTERHUB_SERVER_NAME": "", "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_API_URL": f"{hub_api}/hub/api",
        "JUPYTERHUB_ACTIVITY_URL": f"{hub_api}/hub/api/users/{user}/activity",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}{prefix}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_SCOPES": json.dumps([f"access:servers!server={user}/"]),
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps([f"access:servers!server={user}/"]),
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": "[]",
        "JUPYTERHUB_DEFAULT_URL": "/lab",
    }  # fmt: skip
    if workbench:
        env.update({
            "JUPYTERHUB_DISABLE_USER_CONFIG": "1", "VIRTUAL_ENV": sys.prefix,
            "SHANGZHUANG_LANGUAGE": "en", "SHANGZHUANG_PROFILE": "cpu",
            "SHANGZHUANG_BACKEND": "local", "SHANGZHUANG_GPUS": "", "CUDA_VISIBLE_DEVICES": "",
            "SHANGZHUANG_QUOTA_URL": f"{hub_api}/services/quota/",
            "DASK_LABEXTENSION__FACTORY__MODULE": "shangzhuang.cluster",
            "DASK_LABEXTENSION__FACTORY__CLASS": "cluster",
            "DASK_LABEXTENSION__FACTORY__KWARGS": "{'workers': 0}",
            "CPU_LIMIT": "2.0", "MEM_LIMIT": str(4 * 2**30),
        })  # fmt: skip
    return env


def lab_alone(hub_api: str, workbench: bool, without: list[str]) -> tuple[float, float]:
    """Start one Lab; (seconds until it accepts connections, its CPU seconds by then)."""
    home = tempfile.mkdtemp(prefix="sz-bench-home-")
    port = free_port()
    env = lab_env(hub_api, port, home, workbench)
    args = ["--allow-root"] if os.geteuid() == 0 else []
    args += [f"--ServerApp.jpserver_extensions={name}=False" for name in without]
    # Plain JupyterHub runs jupyterhub-singleuser as it is; the workbench runs session.py.
    cmd = [str(SINGLEUSER), *args] if not workbench else [sys.executable, str(SESSION), *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        process = psutil.Process(proc.pid)
        while proc.poll() is None and time.monotonic() - t0 < 120:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        wall = time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[-1]} exited ({proc.returncode}) before listening")
        return wall, cpu_seconds(process)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def labs_alone(starts: int) -> list[tuple[str, list[tuple[float, float]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub_api = f"http://127.0.0.1:{server.server_address[1]}"
    variants = [
        ("plain JupyterHub (jupyterhub-singleuser)", False, []),
        ("workbench (session.py)", True, []),
        *[(f"workbench without {name}", True, [name]) for name in EXTRAS],
        ("workbench without any of these (JupyterLab alone)", True, EXTRAS),
    ]
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
    try:
        for i in range(starts):
            for label, workbench, without in variants:
                results[label].append(lab_alone(hub_api, workbench, without))
                log(f"start {i + 1}/{starts}: {label}: {results[label][-1]}")
    finally:
        server.shutdown()
    return list(results.items())


# --- 1. through the hubs ------------------------------------------------------------------
def through_hubs(starts: int, at_once: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per side, `starts` rounds of `at_once` users spawning together: each user's
    (seconds to ready, its Lab's CPU seconds, its Lab's seconds waiting for a CPU)."""
    from spawn import PlainHub, Workbench, lab_servers

    names = [f"sessbench{i}" for i in range(at_once)]
    sides = [Workbench(names), PlainHub(names)]
    results: dict[str, list[tuple[float, float, float]]] = {s.label: [] for s in sides}

    def ready(side, name: str, t0: float, walls: dict[str, float]) -> None:
        body = {"profile": "cpu"} if side.label == "workbench" else None
        side.api("POST", f"/users/{name}/server", json=body, ok=(201, 202))
        while time.monotonic() < t0 + 240:
            server = side.api("GET", f"/users/{name}").json()["servers"].get("")
            if server and server["ready"]:
                walls[name] = time.monotonic() - t0
                return
            time.sleep(0.05)
        log(f"{side.label}: {name} not ready in 240 s")

    try:
        for side in sides:
            side.start()
        for name in names:  # a NativeAuthenticator user exists once signed in
            sides[0].hub.login(name, sides[0].password(name))
        for i in range(starts):
            for side in sides:
                t0, walls = time.monotonic(), {}
                threads = [threading.Thread(target=ready, args=(side, n, t0, walls)) for n in names]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if len(walls) < len(names):
                    raise RuntimeError(f"{side.label}: {len(walls)} of {len(names)} ready")
                labs = lab_servers(side.sampler)
                for wall, lab in zip(sorted(walls.values()), labs, strict=False):
                    results[side.label].append((wall, cpu_seconds(lab), waited_seconds(lab)))
                log(f"round {i + 1}/{starts}: {side.label}: {results[side.label][-len(labs) :]}")
                side.stop_all()
    finally:
        for side in sides:
            side.cleanup()
    return results


# --- the report ---------------------------------------------------------------------------
def med(runs: list[tuple[float, ...]], i: int) -> float:
    return statistics.median(r[i] for r in runs)


def section(hubs, alone, starts: int, at_once: int, loads: list[str], elapsed: float) -> str:
    import jupyterhub
    import jupyterlab

    lines = [HEADING, "", __doc__.split("\n\n", 2)[2].split("\nCPU seconds")[0].strip(), ""]
    versions = f"jupyterhub {jupyterhub.__version__}", f"jupyterlab {jupyterlab.__version__}"
    lines += [
        f"Measured {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} at commit {commit()} on "
        f"{machine(*versions)}; "
        f"median over {starts} rounds each; the run took {elapsed / 60:.1f} min. "
        f"`uptime` before: `{loads[0]}`; after: `{loads[-1]}`.",
        "",
    ]
    base = None
    if hubs:
        lines += [
            f"| through the hub, {at_once} user(s) at once | spawn POST to ready s "
            "| Lab CPU s until ready "
            "| Lab s waiting for a CPU | each start (s / CPU s / waiting s) |",
            "|---|---:|---:|---:|---|",
        ]
        for label, runs in hubs.items():
            each = ", ".join(f"{w:.1f}/{c:.2f}/{q:.1f}" for w, c, q in runs)
            lines.append(
                f"| {label} | {med(runs, 0):.2f} | {med(runs, 1):.2f} | {med(runs, 2):.2f} "
                f"| {each} |"
            )
        lines.append("")
    if alone:
        lines += [
            "| the Lab process alone | s until listening | CPU s until listening "
            "| CPU s vs workbench |",
            "|---|---:|---:|---:|",
        ]
    for label, runs in alone:
        base = med(runs, 1) if label.startswith("workbench (") else base
    for label, runs in alone:
        delta = f"{med(runs, 1) - base:+.2f}" if base is not None else ""
        lines.append(f"| {label} | {med(runs, 0):.2f} | {med(runs, 1):.2f} | {delta} |")
    return "\n".join(lines) + "\n"


def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or "?"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=5, help="starts per variant (default 5)")
    ap.add_argument("--no-hubs", action="store_true", help="only the Lab process alone")
    ap.add_argument("--no-alone", action="store_true", help="only through the hubs")
    ap.add_argument("--at-once", type=int, default=1, help="users spawning together (default 1)")
    ap.add_argument("--no-write", action="store_true", help="don't update docs/benchmarks.md")
    ap.add_argument("--notes", type=Path, help="what the figures mean (markdown), after them")
    args = ap.parse_args(argv)

    def interrupted(signum, frame):  # unwind like Ctrl-C, so every hub and Lab is stopped
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    t0, loads = time.monotonic(), [uptime()]
    hubs = {} if args.no_hubs else through_hubs(args.starts, args.at_once)
    loads.append(uptime())
    alone = [] if args.no_alone else labs_alone(args.starts)
    loads.append(uptime())
    text = section(hubs, alone, args.starts, args.at_once, loads, time.monotonic() - t0)
    if args.notes:
        text += "\n" + args.notes.read_text().strip() + "\n"
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
