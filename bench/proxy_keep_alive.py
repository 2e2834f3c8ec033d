"""The proxy's keep-alive race, reproduced: a client that sends a request on a kept-alive
connection just as configurable-http-proxy closes it gets no answer at all
(`RemoteDisconnected`), the failure bench/load.py saw under load.

    .venv/bin/python bench/proxy_keep_alive.py [--stall 0.2] [--repeat 3]

Starts the real proxy (node_modules/.bin/configurable-http-proxy) in front of a small
HTTP/1.1 server, twice: with Node's default keep-alive timeout (5 s: the proxy closes an
idle connection 5 s + Node's 1 s margin after its last answer) and with the workbench's
options (hub/config.py proxy_options, as `make up` and shangzhuang-proxy.service start it).
For each: when it closes an idle connection (a raw socket read until EOF), and the load
client's own session (tests/journey.py BrowserAdapter, without and with its resend) sending
a second GET on its kept connection IDLE s after the first answer, having lost the CPU for
STALL s between urllib3's check that the kept connection is still open and the send, as a
client on a busy machine does. A request fails exactly when the proxy's close falls inside
that stall.
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.journey import BrowserAdapter, WatchedPool, describe  # noqa: E402
from tests.ports import free_port  # noqa: E402

PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
IDLES = (4.0, 5.7, 5.8, 5.85, 5.9, 5.95, 6.0, 6.05, 6.1, 6.5, 8.0)


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections, as the hub and Labs (tornado) do

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class StalledPool(WatchedPool):
    """A pool whose requests go out `stall` s after urllib3 found the kept connection open."""

    stall = 0.0

    def _make_request(self, conn, *args, **kw):
        time.sleep(self.stall)
        return super()._make_request(conn, *args, **kw)


class StalledClient(BrowserAdapter):
    def __init__(self, stall: float, resend: bool):
        self.stall = stall
        super().__init__(resend=resend)

    def init_poolmanager(self, *args, **kw) -> None:
        super().init_poolmanager(*args, **kw)
        pool = type("Pool", (StalledPool,), {"seen": self.seen, "stall": self.stall})
        self.poolmanager.pool_classes_by_scheme = {
            **self.poolmanager.pool_classes_by_scheme, "http": pool,
        }  # fmt: skip


def start_proxy(options: list[str], target: int) -> tuple[subprocess.Popen, int]:
    port, api = free_port(), free_port()
    proc = subprocess.Popen(
        [str(PROXY), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
         "--api-port", str(api), "--default-target", f"http://127.0.0.1:{target}",
         "--log-level", "warn", *options],
        env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": "bench"},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=1).ok:
                return proc, port
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the proxy did not answer within 30 s")
        time.sleep(0.2)


def closes_after(port: int, wait: float) -> float | None:
    """Seconds from the end of an answer to the proxy's close of the idle connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: hub.localhost\r\n\r\n")
        got = b""
        while not got.endswith(b"ok\n"):
            got += s.recv(4096)
        t0 = time.monotonic()
        s.settimeout(wait)
        try:
            while s.recv(4096):
                pass
        except TimeoutError:
            return None
        return time.monotonic() - t0


def second_request(port: int, idle: float, stall: float, resend: bool) -> str:
    """'ok', or the error, of a GET sent on a connection kept `idle` s (+ the stall)."""
    s = requests.Session()
    s.mount("http://", StalledClient(stall, resend))
    url = f"http://127.0.0.1:{port}/"
    s.get(url, timeout=10)
    time.sleep(idle)
    try:
        s.get(url, timeout=10)
        return "ok"
    except requests.ConnectionError as e:
        return describe(e)


def measure(label: str, options: list[str], target: int, args) -> list[str]:
    proc, port = start_proxy(options, target)
    try:
        closed: list[float | None] = []
        results: dict[tuple[float, int, bool], str] = {}
        threads = [threading.Thread(target=lambda: closed.append(closes_after(port, 15)))]
        for idle in IDLES:
            for i in range(args.repeat):
                for resend in (False, True):

                    def one(idle=idle, i=i, resend=resend):
                        results[idle, i, resend] = second_request(port, idle, args.stall, resend)

                    threads.append(threading.Thread(target=one))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait(10)
    close = f"{closed[0]:.2f} s" if closed and closed[0] is not None else "not within 15 s"
    lines = [f"{label} ({' '.join(options) or 'no options'}): closes an idle connection "
             f"after {close}", ""]  # fmt: skip
    lines += [f"| idle before the check s | then sent after s | failed of {args.repeat} "
              "| error | failed, sent again as a browser would |",
              "|---:|---:|---:|---|---:|"]  # fmt: skip
    for idle in IDLES:
        bad = [results[idle, i, False] for i in range(args.repeat)]
        bad = [g for g in bad if g != "ok"]
        again = sum(results[idle, i, True] != "ok" for i in range(args.repeat))
        lines.append(f"| {idle:.2f} | {idle + args.stall:.2f} | {len(bad)} | "
                     f"{('`' + bad[0][:150] + '`') if bad else '-'} | {again} |")  # fmt: skip
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stall", type=float, default=0.2, help="s between check and send")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from shangzhuang.hub.config import proxy_options
    from shangzhuang.settings import load_settings

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = server.server_address[1]
    ours = proxy_options(load_settings(ROOT / "hub_config" / "shangzhuang.toml"))
    out = []
    for label, options in (("Node's default", []), ("the workbench's", ours)):
        out += measure(label, options, target, args) + [""]
    print(f"configurable-http-proxy {PROXY.resolve().parent.parent.name}, node "
          f"{subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}"
          f", stall {args.stall} s\n")  # fmt: skip
    print("\n".join(out))
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
