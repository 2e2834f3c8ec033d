"""Attack: user B's session connects to user A's Dask scheduler and runs code as A.

A scheduler without authentication runs whatever a client sends (`client.run`,
`client.submit`) on A's workers, as A, with A's files and hub token. B finds the address
(127.0.0.1 ports in /proc/net/tcp, or the Slurm node's) and connects. With the session's
TLS credentials (shangzhuang/session.py) every scheduler wants a client certificate of A's
session: B's plain client and B's own session certificate are both refused. Seen red
before the fix: B's client ran `getpass.getuser()` on A's workers and got A's account.

On the real Slurm (tests/slurm.py) the same attack, and issue 13's cluster parts: no
folder named "~" beside the notebook, worker logs in the user's own log folder, and every
way a cluster grows past the balance refused (scale by cores or memory, adapt).
"""

from __future__ import annotations

import os

import pytest
import requests

from tests.integration.hub import RunningHub, workdir
from tests.slurm import LocalSlurm

pytestmark = pytest.mark.integration
root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="users get their own accounts only as root"
)

# A's notebook: a cluster, its scheduler's address.
MAKE_CLUSTER = """
from shangzhuang.cluster import cluster
c = cluster(workers=1)
client = c.get_client()
client.wait_for_workers(1, timeout=120)
print(c.scheduler_address)
"""

# B's notebook: connect to A's scheduler with B's session config (B's own certificate),
# and with a plain client (no TLS); run code on A's workers if it gets in.
ATTACK = """
import getpass
from distributed import Client
from distributed.security import Security
host_port = {address!r}.split("://")[1]
for how, address, security in [
    ("session", "tls://" + host_port, None),
    ("plain", "tcp://" + host_port, Security(require_encryption=False)),
]:
    try:
        client = Client(address, security=security, timeout=10)
        print(how, "RAN-AS", *set(client.run(getpass.getuser).values()))
        client.close()
    except Exception as e:
        print(how, "REFUSED", type(e).__name__)
"""


def attack(hub, attacker: str, address: str) -> dict[str, str]:
    out = hub.run_code(attacker, ATTACK.format(address=address))
    return {line.split()[0]: line for line in out.strip().splitlines()}


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), gpus=0) as h:
        for name in ("alice", "mallory"):
            h.new_user(name)
            h.spawn(name, "cpu")
        for name in ("alice", "mallory"):
            h.wait_ready(name)
        yield h


@root_only
def test_another_user_cannot_use_a_local_cluster(hub):
    alice = hub.token_for("alice")
    address = hub.run_code_keep("alice", MAKE_CLUSTER, alice).strip().splitlines()[-1]
    seen = attack(hub, "mallory", address)
    assert "REFUSED" in seen["session"] and "REFUSED" in seen["plain"], seen
    assert address.startswith("tls://127.0.0.1:"), address
    # The owner's session still connects from another kernel (its config has the certificate).
    mine = attack(hub, "alice", address)
    assert mine["session"].split()[1:] == ["RAN-AS", f"{hub.prefix}alice"], mine
    # The dashboard listens on 127.0.0.1 only, for jupyter-server-proxy; not on the network.
    dash = hub.run_code_keep(
        "alice", "print(c.scheduler.http_server.port, c.dashboard_link)", alice
    )
    port, link = dash.split()
    assert link.startswith(f"/user/alice/proxy/{port}/"), link
    listeners = hub.run_code_keep(
        "alice",
        "import psutil; print(sorted({x.laddr.ip for x in psutil.net_connections('tcp')"
        f" if x.status == 'LISTEN' and x.laddr.port == {port}}}))",
        alice,
    )
    assert listeners.strip() == "['127.0.0.1']", listeners
    hub.run_code_keep("alice", "client.close(); c.close()", alice)


# B reads A's dashboard: straight over TCP from a kernel, and through B's own
# jupyter-server-proxy (which connects as B). A dashboard shows A's task stream, code
# names, worker logs and call stacks.
READ_DASHBOARD = """
import urllib.request
try:
    page = urllib.request.urlopen("http://127.0.0.1:{port}/info/main/workers.html", timeout=10)
    print("READ", page.status, "Worker" in page.read().decode())
except OSError as e:
    print("REFUSED", type(e).__name__)
"""


READ_LAB = """
import os, urllib.request, urllib.error
for how, headers in [
    ("bare", {{}}),
    ("token", {{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}}),
]:
    try:
        print(how, urllib.request.urlopen(
            urllib.request.Request({url!r}, headers=headers), timeout=10).status)
    except urllib.error.HTTPError as e:
        print(how, e.code)
"""


@root_only
def test_another_user_cannot_read_a_dashboard(hub):
    alice = hub.token_for("alice")
    port = hub.run_code_keep(
        "alice",
        "from shangzhuang.cluster import cluster\n"
        "board = cluster(workers=0)\n"
        "print(board.scheduler.http_server.port)",
        alice,
    ).strip().splitlines()[-1]
    assert 61000 <= int(port) <= 65535, port  # in the block the hub keeps to alice
    # Mallory's kernel, over TCP on 127.0.0.1.
    out = hub.run_code("mallory", READ_DASHBOARD.format(port=port))
    assert out.split()[0] == "REFUSED", out
    # Mallory's own Lab proxy (it connects as mallory).
    mallory = hub.token_for("mallory")
    via_proxy = requests.get(
        f"{hub.user_url('mallory')}proxy/{port}/info/main/workers.html",
        headers={"Authorization": f"token {mallory}"}, timeout=60,
    )  # fmt: skip
    assert via_proxy.status_code >= 500 and "Worker" not in via_proxy.text, via_proxy.text[:300]
    # Alice reaches it under her own URL, through her session's jupyter-server-proxy.
    mine = requests.get(
        f"{hub.user_url('alice')}proxy/{port}/info/main/workers.html",
        headers={"Authorization": f"token {alice}"}, timeout=60,
    )  # fmt: skip
    assert mine.status_code == 200 and "Worker" in mine.text, mine.status_code
    # Alice's Lab listens on 127.0.0.1 too, but wants a token of hers from the hub:
    # mallory's kernel gets in neither bare nor with mallory's own session token.
    lab = hub.run_code_keep(
        "alice", "import os; print(os.environ['JUPYTERHUB_SERVICE_URL'])", alice
    ).strip()
    out = hub.run_code("mallory", READ_LAB.format(url=f"{lab}api/contents"))
    assert out.split() == ["bare", "403", "token", "403"], out
    hub.run_code_keep("alice", "board.close()", alice)


# --- the same on a real Slurm, and issue 13's cluster parts ------------------------------

SLURM_PROFILES = """
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
"""
SLURM_QUOTA = """
sample_seconds = 1
min_minutes_to_spawn = 0.05
[quota.accounts.default]
cpu_hours = 1000
[quota.users.paula]
cpu_hours = 0.05
"""
# max_workers far above what paula's balance pays for: the quota rule is what refuses.
SLURM_CLUSTER = """
[cluster]
worker_cores = 1
worker_memory = "1G"
worker_walltime = "00:10:00"
interface = "lo"
max_workers = 100000
"""


@pytest.fixture(scope="module")
def slurm_hub():
    slurm = LocalSlurm(dashboards=True)
    slurm.start()
    try:
        with RunningHub(
            workdir(), slurm_conf=slurm.conf, profiles=SLURM_PROFILES, quota=SLURM_QUOTA,
            extra_toml=SLURM_CLUSTER,
        ) as h:  # fmt: skip
            for name in ("alice", "mallory"):
                h.new_user(name)
                h.spawn(name, "cpu")
            for name in ("alice", "mallory"):
                h.wait_ready(name)
            yield h, slurm
    finally:
        slurm.stop()


@root_only
def test_another_user_cannot_use_a_slurm_cluster_and_logs_land_in_the_users_folder(slurm_hub):
    hub, slurm = slurm_hub
    alice = hub.token_for("alice")
    address = hub.run_code_keep("alice", MAKE_CLUSTER, alice).strip().splitlines()[-1]
    seen = attack(hub, "mallory", address)
    assert "REFUSED" in seen["session"] and "REFUSED" in seen["plain"], seen
    assert address.startswith("tls://"), address

    # Issue 13: the log folder reaches dask-jobqueue absolute; nothing named "~" appears.
    out = hub.run_code_keep(
        "alice",
        "import os; job = next(iter(c.workers.values()))\n"
        "print('LOGS', job.log_directory, job.job_id, os.path.exists(os.path.expanduser('~/~')),"
        " os.path.exists('~'))",
        alice,
    )
    line = next((ln for ln in out.splitlines() if ln.startswith("LOGS ")), out).split()
    assert len(line) == 5, out
    logs, job, tilde_home, tilde_here = line[1:]
    home = hub.homes / f"{hub.prefix}alice"
    assert logs == str(home / ".shangzhuang" / "dask-logs"), out
    assert tilde_home == tilde_here == "False", out
    assert (home / ".shangzhuang" / "dask-logs" / f"dask-worker-{job}.err").exists()
    hub.run_code_keep("alice", "client.close(); c.close()", alice)


GROW = """
from shangzhuang.cluster import QuotaExceeded, WorkbenchCluster
c = WorkbenchCluster()
for name, grow in [
    ("cores", lambda: c.scale(cores=200)),
    ("memory", lambda: c.scale(memory="200GiB")),
    ("adapt", lambda: c.adapt(minimum=0, maximum=200)),
    ("adapt-jobs", lambda: c.adapt(maximum_jobs=200)),
]:
    try:
        grow()
        print(name, "GREW", len(c.worker_spec))
    except QuotaExceeded as e:
        print(name, "REFUSED", str(e).split(":")[0])
a = c.adapt()  # no maximum: capped at what the balance pays for now
print("open-adapt", a.maximum)
c.close()
"""


@root_only
def test_growing_a_slurm_cluster_past_the_balance_is_refused_every_way(slurm_hub):
    hub, slurm = slurm_hub
    hub.new_user("paula")  # 0.05 cpu_hours: one 1-core job costs 0.05/60 for 3 s: ~60 jobs
    hub.spawn("paula", "cpu")
    hub.wait_ready("paula")
    out = hub.run_code("paula", GROW)
    seen = {line.split()[0]: line for line in out.strip().splitlines() if line.strip()}
    for way in ("cores", "memory", "adapt", "adapt-jobs"):
        assert seen.get(way) == f"{way} REFUSED Not enough quota to add 200 worker job(s)", out
    assert 0 < int(seen["open-adapt"].split()[1]) < 200, out
    assert not [j for j in slurm.jobs() if j["user"] == f"{hub.prefix}paula"
                and j["name"] != "shangzhuang-lab"]  # fmt: skip
    hub.stop_server("paula")


@root_only
def test_another_user_cannot_read_a_slurm_sessions_dashboard(slurm_hub):
    """The Slurm Prolog/Epilog the site ships (hub_config/examples/dashboard-*.sh, set in
    tests/slurm.py's slurm.conf) keeps a Lab job's block of ports to its owner. Both
    virtual nodes are this host, so mallory's job shares alice's node's loopback."""
    hub, slurm = slurm_hub
    alice = hub.token_for("alice")
    port = hub.run_code_keep(
        "alice",
        "from shangzhuang.cluster import cluster\n"
        "board = cluster(workers=0)\n"
        "print(board.scheduler.http_server.port)",
        alice,
    ).strip().splitlines()[-1]
    # Mallory's Lab job, over TCP on the node's 127.0.0.1.
    out = hub.run_code("mallory", READ_DASHBOARD.format(port=port))
    assert out.split()[0] == "REFUSED", out
    assert 61000 <= int(port) <= 65535, port  # in the block the prolog keeps to alice
    # Alice reaches it under her own URL, through her Lab job's jupyter-server-proxy.
    mine = requests.get(
        f"{hub.user_url('alice')}proxy/{port}/info/main/workers.html",
        headers={"Authorization": f"token {alice}"}, timeout=60,
    )  # fmt: skip
    assert mine.status_code == 200 and "Worker" in mine.text, mine.status_code
    hub.run_code_keep("alice", "board.close()", alice)
