"""The installed site's TLS front end and separate proxy: what TLS costs a proxied request,
and what a hub restart costs an open websocket.

    .venv/bin/python bench/tls.py [--requests 300] [--restarts 3] [--no-write]

The site is tests/integration/test_install.py's InstalledHub (root): the wheel in a fresh
venv, `shangzhuang install` with a test CA's wildcard certificate, the proxy's and hub's
ExecStart lines run as systemd would. A user's Lab is spawned.

- Request overhead: GET /user/ann/api/status on ann's server (ann.hub.localhost), through
  the installed proxy (https, the certificate verified) and through a second
  configurable-http-proxy on plain http given the same routes (copied through both proxies'
  REST API), so both paths reach the same server and differ only by TLS. Rounds alternate;
  p50 and p95 with one kept-alive connection, and p50 with a new connection per request
  (TCP + TLS handshake).
- Hub restart: a kernel websocket through the proxy runs `print(i)` back to back while the
  hub is stopped (SIGTERM, as the unit's KillMode=process) and started again; counted: the
  executions that failed or were dropped (goal: zero) and the longest round trip; and new
  requests to the server, 10 a second, that failed (goal: zero). The same with
  `shangzhuang up`'s arrangement (RunningHub: the proxy is the hub's child, stopped with
  it), side by side.

Prints a markdown table and writes docs/benchmarks.md's section
"## TLS front end and hub restarts (bench/tls.py)"; other sections are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import machine, write_section  # noqa: E402
from tests.integration.hub import RunningHub, execute_request, workdir  # noqa: E402
from tests.integration.test_install import PROXY, InstalledHub, platform_account  # noqa: E402
from tests.ports import free_port  # noqa: E402

HEADING = "## TLS front end and hub restarts (bench/tls.py)"


def chp_version() -> str:
    package = PROXY.resolve().parents[1] / "package.json"
    return json.loads(package.read_text())["version"]


def plain_proxy(site: InstalledHub) -> tuple[subprocess.Popen, str]:
    """A second configurable-http-proxy on plain http with the installed proxy's routes."""
    port, api = free_port(), free_port()
    token = site.unit_env["CONFIGPROXY_AUTH_TOKEN"]
    proc = subprocess.Popen(
        [str(PROXY), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
         "--api-port", str(api), "--host-routing", "--log-level", "warn"],
        env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token}, start_new_session=True,
    )  # fmt: skip
    argv = shlex.split(site.proxy_unit["ExecStart"])
    installed_api = f"http://127.0.0.1:{argv[argv.index('--api-port') + 1]}/api/routes"
    auth = {"Authorization": f"token {token}"}
    routes = requests.get(installed_api, headers=auth, timeout=30).json()
    deadline = time.monotonic() + 30
    while True:
        try:
            for path, route in routes.items():
                requests.post(
                    f"http://127.0.0.1:{api}/api/routes{path}", headers=auth,
                    json={"target": route["target"]}, timeout=30,
                ).raise_for_status()  # fmt: skip
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return proc, f"http://ann.hub.localhost:{port}/user/ann/api/status"


def timings(url: str, headers: dict, n: int, keep_alive: bool) -> list[float]:
    s = requests.Session()
    out = []
    for _ in range(n):
        if not keep_alive:
            s.close()
            s = requests.Session()
        t = time.perf_counter()
        r = s.get(url, headers=headers, timeout=30)
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def restart_gap(site: InstalledHub, token: str, restarts: int) -> dict:
    kernel = site._new_kernel("ann", token)
    ws = websocket.create_connection(
        f"{site.user_url('ann').replace('http', 'ws', 1)}api/kernels/{kernel}/channels",
        header=[f"Authorization: token {token}"], timeout=30,
    )  # fmt: skip
    stop, result = threading.Event(), {"sent": 0, "failed": 0, "longest_ms": 0.0}

    def loop():
        i = 0
        while not stop.is_set():
            i += 1
            msg_id = uuid.uuid4().hex
            t = time.perf_counter()
            try:
                ws.send(json.dumps(execute_request(msg_id, f"print({i})")))
                while True:
                    msg = json.loads(ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") == msg_id and (
                        msg["msg_type"] == "stream"
                    ):
                        assert msg["content"]["text"].strip() == str(i)
                        break
            except Exception:
                result["failed"] += 1
                return
            result["sent"] += 1
            result["longest_ms"] = max(result["longest_ms"], (time.perf_counter() - t) * 1000)

    requests_ok = requests_failed = 0

    def poll():  # new requests (new connections) to the server, 10 a second
        nonlocal requests_ok, requests_failed
        while not stop.is_set():
            try:
                r = requests.get(
                    f"{site.user_url('ann')}api/status",
                    headers={"Authorization": f"token {token}", "Connection": "close"},
                    timeout=10,
                )  # fmt: skip
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            requests_ok, requests_failed = requests_ok + ok, requests_failed + (not ok)
            time.sleep(0.1)

    thread, poller = threading.Thread(target=loop), threading.Thread(target=poll)
    thread.start()
    poller.start()
    took = []
    for _ in range(restarts):
        time.sleep(1)
        t = time.monotonic()
        site.stop()
        site.start()
        took.append(time.monotonic() - t)
    time.sleep(1)
    stop.set()
    thread.join(60)
    poller.join(60)
    ws.close()
    result["restart_s"] = statistics.median(took)
    result["requests_ok"], result["requests_failed"] = requests_ok, requests_failed
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/tls.py runs as root (the hub makes Unix accounts)")

    with platform_account() as account:
        rows, gaps = measure(args, InstalledHub(workdir(), account))
    # The same restarts with `make up`'s arrangement: the proxy is the hub's child.
    with RunningHub(workdir(), gpus=0) as hub:
        hub.new_user("ann")
        hub.spawn("ann", "cpu")
        hub.wait_ready("ann")
        gaps["`shangzhuang up`: the hub's child"] = restart_gap(
            hub, hub.token_for("ann"), args.restarts
        )
    report(args, rows, gaps)


def measure(args, site: InstalledHub) -> tuple[dict, dict]:
    """Request timings (https vs http) and restart gaps on the installed site."""
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["WEBSOCKET_CLIENT_CA_BUNDLE"] = str(site.ca)
    plain = None
    try:
        site.start()
        site.new_user("ann")
        site.spawn("ann", "cpu")
        site.wait_ready("ann")
        token = site.token_for("ann")
        headers = {"Authorization": f"token {token}"}
        plain, plain_url = plain_proxy(site)
        tls_url = f"{site.user_url('ann')}api/status"
        rows = {}
        for name, keep in (("kept-alive connection", True), ("new connection each", False)):
            tls, http = [], []
            for _ in range(args.requests // 50):  # alternate in blocks of 50
                http += timings(plain_url, headers, 50, keep)
                tls += timings(tls_url, headers, 50, keep)
            rows[name] = (http, tls)
        gaps = {"installed: the proxy's own unit": restart_gap(site, token, args.restarts)}
    finally:
        if plain:
            os.killpg(plain.pid, signal.SIGTERM)
        site.cleanup()
    return rows, gaps


def report(args, rows: dict, gaps: dict) -> None:
    def p(xs, q):
        return statistics.quantiles(xs, n=100)[q - 1] if q != 50 else statistics.median(xs)

    lines = [
        HEADING, "",
        f"Machine: {machine(f'configurable-http-proxy {chp_version()}')}. "
        f"{args.requests} requests per row, alternating in blocks of 50.", "",
        "GET /user/ann/api/status on ann's server through configurable-http-proxy:", "",
        "| connection | http p50 | https p50 | https/http p50 | http p95 | https p95 |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, (http, tls) in rows.items():
        lines.append(
            f"| {name} | {p(http, 50):.2f} ms | {p(tls, 50):.2f} ms | "
            f"{p(tls, 50) / p(http, 50):.2f}x | {p(http, 95):.2f} ms | {p(tls, 95):.2f} ms |"
        )
    lines += [
        "",
        f"{args.restarts} hub restarts (stop, then start) while a kernel websocket through the "
        "proxy runs `print(i)` back to back (the count stops at its first failure) and new "
        "requests to the server, a new connection each, go 10 a second:",
        "",
        "| proxy | restart (median) | executions | websocket dropped | longest round trip "
        "| requests answered | requests failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in gaps.items():
        lines.append(
            f"| {name} | {g['restart_s']:.1f} s | {g['sent']} | {g['failed']} | "
            f"{g['longest_ms']:.0f} ms | {g['requests_ok']} | {g['requests_failed']} |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        write_section(HEADING, section)


if __name__ == "__main__":
    main()
