"""Session cgroups (hub/containment.py): the pure parts, cgroup v2 against a temp folder
laid out as cgroup2 would be (this machine's cgroup2 has no controllers to enable), and,
as root, cgroup v1 and v2 membership and kill on the machine's real cgroup file systems."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from shangzhuang.hub.containment import (
    CgroupV1,
    CgroupV2,
    SessionLimits,
    detect,
    gpu_denials,
    gpu_device_rule,
    hub_cgroup,
    hub_parent,
    parse_cpus,
    pick_cpus,
    session_name,
)
from shangzhuang.settings import SettingsError, load_settings, parse_settings

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup files are root's to write")


def test_cpu_lists_and_the_least_used_cpus():
    assert parse_cpus("0-2,5\n") == [0, 1, 2, 5]
    assert parse_cpus("") == []
    assert pick_cpus(2, [0, 1, 2, 3], [[0, 1], [0]]) == [2, 3]
    assert pick_cpus(1, [0, 1], [[0]]) == [1]
    assert pick_cpus(0, [0, 1], []) == [0]  # a fraction of a core still needs one CPU


def test_each_hub_has_its_own_parent_and_sessions_safe_names(tmp_path):
    a, b = hub_parent("shangzhuang", tmp_path / "a"), hub_parent("shangzhuang", tmp_path / "b")
    assert a != b and a.startswith("shangzhuang/")
    assert a == hub_parent("/shangzhuang/", tmp_path / "a")
    assert session_name("alice", "") == "alice.lab"
    assert session_name("bob", "app-my/app x") == "bob.app-my_app_x"


def test_only_char_devices_get_a_device_rule(tmp_path):
    plain = tmp_path / "nvidia0"
    plain.touch()
    assert gpu_device_rule(plain) is None
    assert gpu_device_rule(None) is None
    assert gpu_device_rule(tmp_path / "missing") is None
    if os.geteuid() == 0:
        node = tmp_path / "nvidia1"
        os.mknod(node, 0o600 | 0o020000, os.makedev(195, 1))
        assert gpu_device_rule(node) == "c 195:1"


def test_every_nvidia_gpu_and_pool_gpu_but_the_held_ones_is_denied():
    denied = gpu_denials(["c 195:0", "c 195:1", "c 1:7", None], held=["c 195:1"])
    assert "c 195:1" not in denied
    assert {"c 195:0", "c 195:2", "c 195:253", "c 1:7"} <= set(denied)
    # The driver's control nodes stay: CUDA in a GPU session needs them.
    assert "c 195:255" not in denied and "c 195:254" not in denied
    assert len(denied) == len(set(denied)) == 253 + 1


def cgroup2_tree(root: Path, parent: str, cpus: str = "0-3") -> None:
    """Folders and files as a cgroup2 mount shows them with cpu, cpuset, memory, pids."""
    for folder in [root, *[root / p for p in _prefixes(parent)]]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (folder / "cgroup.subtree_control").write_text("")
        (folder / "cpuset.cpus.effective").write_text(cpus + "\n")


def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def session_files(folder: Path, oom_kills: int = 0, usage_usec: int = 0) -> None:
    """What the kernel makes in a new cgroup2 folder once its parent enabled the controllers."""
    folder.mkdir(parents=True)
    for name in ("cpu.max", "cpu.weight", "cpuset.cpus", "memory.max", "memory.swap.max",
                 "pids.max", "cgroup.procs", "cgroup.kill"):  # fmt: skip
        (folder / name).write_text("")
    events = f"low 0\nhigh 0\nmax 3\noom {oom_kills}\noom_kill {oom_kills}\n"
    (folder / "memory.events").write_text(events)
    (folder / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 0\n")


@root_only
@pytest.mark.skipif(detect() != "v1", reason="needs the cgroup v1 controllers mounted")
def test_sessions_weigh_against_the_nodes_other_processes_as_their_cores_would():
    """The kernel shares the CPU between the siblings of each level: the folders above the
    sessions (the workbench's, the hub's) weigh what their sessions weigh together, not one
    process's 1024. Seen red before: both stayed at 1024, so every session of the node
    together had one process's share against the hub and its services
    (bench/session_start.py)."""
    top = f"sz-unit-{uuid.uuid4().hex[:8]}"
    cpu = Path("/sys/fs/cgroup/cpu")
    one, two = CgroupV1(f"{top}/hub/one.lab"), CgroupV1(f"{top}/hub/two.lab")
    try:
        one.create(SessionLimits(cores=1, memory=2**30, pids=64))
        two.create(SessionLimits(cores=2, memory=2**30, pids=64))
        for folder in (cpu / top, cpu / top / "hub"):
            assert (folder / "cpu.shares").read_text().strip() == "3072"
        assert asyncio.run(two.remove())
        for folder in (cpu / top, cpu / top / "hub"):
            assert (folder / "cpu.shares").read_text().strip() == "1024"
    finally:
        for cgroup in (one, two):
            asyncio.run(cgroup.remove(timeout=5))
        for folder in Path("/sys/fs/cgroup").glob(f"*/{top}"):
            for f in (folder / "hub", folder):
                try:
                    f.rmdir()
                except OSError:
                    pass


BURN = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\ntime.sleep(5)\n"


def cpu_seconds_of(procs: list[subprocess.Popen]) -> float:
    """User and system CPU seconds of live processes (from /proc/PID/stat)."""
    ticks = 0
    for p in procs:
        fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def burn_on_cpu0(cgroup, count: int) -> list[subprocess.Popen]:
    """`count` processes busy for 1.5 s in `cgroup` (None: this test's), all on CPU 0."""

    def inside():
        if cgroup is not None:
            cgroup.join()
        os.sched_setaffinity(0, {0})

    return [subprocess.Popen([sys.executable, "-c", BURN], preexec_fn=inside) for _ in range(count)]


@root_only
@pytest.mark.skipif(detect() != "v1", reason="needs the cgroup v1 controllers mounted")
def test_the_hub_is_served_before_its_sessions(tmp_path):
    """The hub's own cgroup (serve_first) at the highest weight, beside its sessions' folder:
    on one CPU, a busy hub gets nearly all of it against a session's four busy processes.
    Left as one process at the root (before), it got less than the session: the folders
    above a session weigh its cores (2 x 1024). The hub's weight is no share of the
    sessions': the folders above still weigh the session alone. Real cgroup v1 files; CPU
    seconds from /proc, on a machine other work shares (so the figures are ratios)."""
    top = f"sz-unit-{uuid.uuid4().hex[:8]}"
    cpu = Path("/sys/fs/cgroup/cpu")
    sessions = hub_parent(top, tmp_path)
    session, hub = CgroupV1(f"{sessions}/ana.lab"), CgroupV1(hub_cgroup(top, tmp_path))
    assert hub.path == f"{sessions}.hub"
    the_hub_to_be = subprocess.Popen(["sleep", "30"])
    running: list[subprocess.Popen] = []
    try:
        session.create(SessionLimits(cores=2, memory=2**30, pids=64))
        share = {}
        for where in ("root", "own cgroup"):
            if where == "own cgroup":
                assert hub.serve_first(the_hub_to_be.pid)
                moved = Path(f"/proc/{the_hub_to_be.pid}/cgroup").read_text()
                assert f":cpu:/{hub.path}\n" in moved
            burners = burn_on_cpu0(session, 4)
            # The hub's cgroup has a cpu folder only (join() refuses a missing folder).
            hub_cpu = SimpleNamespace(
                join=lambda: (cpu / hub.path / "cgroup.procs").write_text(str(os.getpid()))
            )
            busy_hub = burn_on_cpu0(hub_cpu if where == "own cgroup" else None, 1)
            running = burners + busy_hub
            time.sleep(0.4)  # all started (Python's start-up is not what is measured)
            hub0, burners0 = cpu_seconds_of(busy_hub), cpu_seconds_of(burners)
            time.sleep(0.8)
            hub1, burners1 = cpu_seconds_of(busy_hub), cpu_seconds_of(burners)
            share[where] = (hub1 - hub0) / max(0.01, burners1 - burners0)
            for p in running:
                p.kill()
                p.wait()
        assert share["root"] < 1, share  # ~0.5: 1024 against the session's 2048
        assert share["own cgroup"] > 5, share  # 17-51 seen: 262144 against 2048
        folder = cpu / hub.path
        assert (folder / "cpu.shares").read_text().strip() == "262144"
        st = folder.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)  # no session writes or joins
        session.weigh_parents()
        for above in (cpu / top, cpu / sessions):
            assert (above / "cpu.shares").read_text().strip() == "2048"  # the session's alone
        assert hub.serve_first(the_hub_to_be.pid)  # a restarted hub: the same folder again
    finally:
        for p in [the_hub_to_be, *running]:
            p.kill()
            p.wait()
        asyncio.run(session.remove(timeout=5))
        mounts = [f.parents[len(Path(session.path).parts) - 1] for f in session.folders()]
        for f in (cpu / hub.path, *(m / sessions for m in mounts), *(m / top for m in mounts)):
            for _ in range(50):  # killed processes leave the cgroup as they are reaped
                try:
                    f.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def test_v2_hub_cgroup_takes_the_highest_weight_and_no_share_of_the_sessions(tmp_path):
    """A temp folder stands in for /sys/fs/cgroup (no cgroup2 with controllers here)."""
    root = tmp_path / "cg"
    cgroup2_tree(root, "sz/abc")
    session_files(root / "sz/abc/ana.lab")
    session_files(root / "sz/abc.hub")
    (root / "sz" / "cpu.weight").write_text("100")
    (root / "sz/abc" / "cpu.weight").write_text("100")
    hub = CgroupV2("sz/abc.hub", root=root)
    assert hub.serve_first(4242)
    assert (root / "sz/abc.hub/cpu.weight").read_text() == "10000"
    assert (root / "sz/abc.hub/cgroup.procs").read_text() == "4242"
    assert (root / "sz" / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"
    session = CgroupV2("sz/abc/ana.lab", root=root)
    session.create(SessionLimits(cores=2, memory=2**30, pids=64))
    assert (root / "sz/abc/cpu.weight").read_text() == "200"
    assert (root / "sz/cpu.weight").read_text() == "200"  # the hub's 10000 left out


def test_v2_writes_the_profile_into_cgroup2_files(tmp_path):
    """A temp folder stands in for /sys/fs/cgroup (no cgroup2 with controllers here)."""
    parent = "shangzhuang/abc"
    cgroup2_tree(tmp_path, parent)
    session_files(tmp_path / parent / "alice.lab", oom_kills=2, usage_usec=1_500_000)
    session_files(tmp_path / parent / "bob.lab")
    alice = CgroupV2(f"{parent}/alice.lab", root=tmp_path)
    limits = SessionLimits(cores=1.5, memory=2**30, pids=100, denied_devices=("c 195:1",))
    left_out = alice.create(limits)
    folder = tmp_path / parent / "alice.lab"
    assert (folder / "cpu.max").read_text() == "150000 100000"
    assert (folder / "cpu.weight").read_text() == "150"  # 100 = one core's weight
    assert (folder / "memory.max").read_text() == str(2**30)
    assert (folder / "memory.swap.max").read_text() == "0"
    assert (folder / "pids.max").read_text() == "100"
    assert (folder / "cpuset.cpus").read_text() == "0,1"  # 1.5 cores: two CPUs
    for f in (tmp_path, tmp_path / "shangzhuang", tmp_path / parent):
        assert (f / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"
    # v2 has no devices files: said, not pretended.
    assert left_out == ["GPU devices (cgroup v2 needs eBPF: device files' modes only)"]
    assert (alice.oom_kills(), alice.cpu_seconds()) == (2, 1.5)
    # The next session gets the CPUs nobody uses yet.
    CgroupV2(f"{parent}/bob.lab", root=tmp_path).create(SessionLimits(2, 2**30, 100))
    assert (tmp_path / parent / "bob.lab" / "cpuset.cpus").read_text() == "2,3"
    # Joining writes the pid; the kill goes through cgroup.kill.
    alice.join(4242)
    assert (folder / "cgroup.procs").read_text() == "4242"
    alice.kill()
    assert (folder / "cgroup.kill").read_text() == "1"


def test_v2_says_which_limits_a_folder_without_controllers_leaves_out(tmp_path):
    (tmp_path / "sz" / "x.lab").mkdir(parents=True)
    left_out = CgroupV2("sz/x.lab", root=tmp_path).create(SessionLimits(1, 2**30, 100))
    assert left_out == [
        "cpuset (nproc shows the machine's CPUs)", "CPU quota", "memory limit", "pids limit",
    ]  # fmt: skip


def test_detect_reads_the_layout(tmp_path):
    assert detect(tmp_path) == ""
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").touch()
    assert detect(tmp_path) == "v1"
    (tmp_path / "cgroup.controllers").touch()
    assert detect(tmp_path) == "v2"


def test_containment_settings_are_checked_and_named():
    base = {"backend": {"local": {"containment": {"pids_limit": 10, "cgroups": "v3"}}}}
    with pytest.raises(SettingsError) as refused:
        parse_settings(base, "site.toml")
    text = str(refused.value)
    assert "backend.local.containment.pids_limit" in text
    assert "backend.local.containment.cgroups" in text
    bad_parent = {"backend": {"local": {"containment": {"cgroup_parent": "../escape"}}}}
    with pytest.raises(SettingsError, match="backend.local.containment.cgroup_parent"):
        parse_settings(bad_parent, "site.toml")


# --- the machine's real cgroup file systems (as root) ------------------------------------
DETACH = "import subprocess, time; subprocess.Popen(['setsid', 'sleep', '300']); time.sleep(300)"


def start_inside(cgroup) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DETACH], preexec_fn=cgroup.join)


def wait_for(cond, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := cond():
            return v
        time.sleep(0.05)
    raise TimeoutError


def alive(pid: int) -> bool:
    """Running (a zombie waits only for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@root_only
@pytest.mark.skipif(detect() != "v1", reason="needs the cgroup v1 controllers mounted")
def test_v1_limits_and_a_kill_that_takes_detached_processes(tmp_path):
    cgroup = CgroupV1(f"sz-unit-{uuid.uuid4().hex[:8]}/s.lab")
    node = tmp_path / "gpu"
    os.mknod(node, 0o666 | 0o020000, os.makedev(1, 7))  # /dev/full's numbers: opens
    node.chmod(0o666)
    denied = gpu_denials(["c 1:7"], held=[])  # every NVIDIA GPU minor, and the fake one
    limits = SessionLimits(cores=1, memory=256 * 2**20, pids=64, denied_devices=denied)
    try:
        assert cgroup.create(limits) == []
        mnt = Path("/sys/fs/cgroup")
        assert (mnt / "cpu" / cgroup.path / "cpu.cfs_quota_us").read_text().strip() == "100000"
        assert (mnt / "cpu" / cgroup.path / "cpu.shares").read_text().strip() == "1024"
        assert (mnt / "memory" / cgroup.path / "memory.limit_in_bytes").read_text().strip() == str(
            256 * 2**20
        )
        assert (mnt / "pids" / cgroup.path / "pids.max").read_text().strip() == "64"
        probe = (
            "import os\n"
            "print(len(os.sched_getaffinity(0)))\n"
            f"try: os.open({str(node)!r}, os.O_RDWR)\n"
            "except OSError as e: print(e.errno)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], preexec_fn=cgroup.join, capture_output=True,
            text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert out == ["1", str(errno.EPERM)]  # one CPU; the denied device does not open
        proc = start_inside(cgroup)
        pids = wait_for(lambda: len(cgroup.pids()) >= 2 and cgroup.pids())
        assert proc.pid in pids
        assert asyncio.run(cgroup.remove())
        proc.wait(10)
        assert not any(alive(p) for p in pids - {proc.pid})
        assert not cgroup.exists()
    finally:
        asyncio.run(cgroup.remove(timeout=5))
        for folder in cgroup.folders():
            try:
                folder.parent.rmdir()
            except OSError:
                pass


@root_only
@pytest.mark.skipif(
    not Path("/sys/fs/cgroup/unified/cgroup.procs").exists(), reason="no cgroup2 mount here"
)
def test_v2_membership_and_kill_on_the_real_cgroup2():
    """This machine's cgroup2 has no controllers: the kernel's membership and cgroup.kill
    are real here; the limits are what the temp-folder test above covers."""
    cgroup = CgroupV2(f"sz-unit-{uuid.uuid4().hex[:8]}/s.lab", root=Path("/sys/fs/cgroup/unified"))
    try:
        left_out = cgroup.create(SessionLimits(1, 2**30, 64))
        assert "memory limit" in left_out  # said plainly, not silently skipped
        proc = start_inside(cgroup)
        pids = wait_for(lambda: len(cgroup.pids()) >= 2 and cgroup.pids())
        assert asyncio.run(cgroup.remove())
        proc.wait(10)
        assert not any(alive(p) for p in pids - {proc.pid})
        assert not cgroup.exists()
    finally:
        asyncio.run(cgroup.remove(timeout=5))
        try:
            cgroup.folders()[0].parent.rmdir()
        except OSError:
            pass


# --- dashboards: a block of loopback ports per session, for its own account only ---------


def test_a_cluster_serves_its_dashboard_in_the_sessions_block(monkeypatch):
    import socket

    from shangzhuang.cluster import DASHBOARD_ADDRESS, dashboard_address
    from tests.ports import free_block

    monkeypatch.delenv("SHANGZHUANG_DASHBOARD_PORTS", raising=False)
    assert dashboard_address() == DASHBOARD_ADDRESS
    # A block in this worker's own range, below the kernel's ephemeral ports: a port-0 bind
    # elsewhere on a busy machine took first + 1 once (a CI rehearsal).
    first = free_block(2)
    with socket.socket() as taken:  # the block's first port is another dashboard's
        taken.bind(("127.0.0.1", first))
        monkeypatch.setenv("SHANGZHUANG_DASHBOARD_PORTS", f"{first}-{first + 1}")
        assert dashboard_address() == f"127.0.0.1:{first + 1}"
        monkeypatch.setenv("SHANGZHUANG_DASHBOARD_PORTS", f"{first}-{first}")
        with pytest.raises(RuntimeError, match="All 1 dashboard ports of this session are in use"):
            dashboard_address()


def test_slurm_workers_serve_no_dashboard(monkeypatch, tmp_path):
    """A worker's dashboard would listen on every interface of a shared compute node."""
    import dask
    from dask_jobqueue import SLURMCluster
    from distributed.security import Security

    from shangzhuang.cluster import WorkbenchCluster
    from shangzhuang.hub import dask_environment
    from shangzhuang.settings import parse_settings as site

    monkeypatch.chdir(tmp_path)  # dask-jobqueue writes temporary certificates here
    monkeypatch.delenv("SHANGZHUANG_DASHBOARD_PORTS", raising=False)
    with WorkbenchCluster(cores=1, memory="1G", worker_extra_args=["--lifetime", "1h"]) as c:
        assert "--lifetime 1h --no-dashboard" in c.job_script()
    # A bare SLURMCluster() in a session, with the Dask config the hub hands it.
    settings = site(
        {"backend": {"kind": "slurm"}, "profiles": [{"name": "cpu", "cores": 1, "memory": "1G"}]},
        tmp_path / "site.toml",
    )
    env = dask_environment(settings)
    from_env = dask.config.collect_env({k: v for k, v in env.items() if isinstance(v, str)})
    config = dask.config.merge(dask.config.config, from_env)  # as Dask does at import
    tls = Security.temporary()  # a session's own credentials, in a session
    with dask.config.set(config), SLURMCluster(cores=1, memory="1G", security=tls) as c:
        assert c.job_script().count("--no-dashboard") == 1
    with dask.config.set(config), WorkbenchCluster(cores=1, memory="1G") as c:
        assert c.job_script().count("--no-dashboard") == 1


@root_only
def test_a_dashboard_block_refuses_every_other_account(tmp_path):
    """On the machine's real iptables (a chain of this test's own, removed at the end)."""
    import http.server
    import threading

    from shangzhuang.hub.containment import DashboardFirewall, firewall_chain, reserved_ports

    firewall = DashboardFirewall(firewall_chain(tmp_path))
    ports = firewall.reserve(uid=0)
    try:
        assert len(ports) == 8 and ports.start >= 61000 and set(ports) <= reserved_ports()
        firewall.keep(ports, 0)  # again (a hub restart): still one rule
        rules = subprocess.run(["iptables", "-S", firewall.chain], capture_output=True, text=True)
        assert len(rules.stdout.splitlines()) == 2, rules.stdout
        server = http.server.HTTPServer(
            ("127.0.0.1", ports.start), http.server.BaseHTTPRequestHandler
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        fetch = (
            f"import socket; socket.create_connection(('127.0.0.1', {ports.start}), 5); print('IN')"
        )
        nobody = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", fetch],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "ConnectionRefusedError" in nobody.stderr, nobody
        mine = subprocess.run([sys.executable, "-c", fetch], capture_output=True, text=True)
        assert mine.stdout.strip() == "IN", mine
        server.shutdown()
        server.server_close()
    finally:
        firewall.release(ports, 0)
    listed = subprocess.run(["iptables", "-S", firewall.chain], capture_output=True)
    assert listed.returncode != 0  # the chain went with its last rule


@root_only
def test_the_shipped_slurm_prolog_keeps_a_lab_jobs_dashboards_to_its_owner(request):
    """hub_config/examples/dashboard-*.sh as slurmd runs them: as root with only Slurm's
    variables (no PATH), the TaskProlog as the job's owner; on the real iptables."""
    from shangzhuang.hub.containment import SLURM_CHAIN

    # Not under tmp_path (root's 0700 folder): the job's owner reads its file in here.
    top = Path(tempfile.mkdtemp(prefix="sz-dashboards-"))
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    top.chmod(0o755)
    folder = top / "dashboards"
    examples = Path(__file__).resolve().parents[2] / "hub_config/examples"

    def run(script: str, job: str, comment: str = "", uid: int = 0) -> str:
        text = (examples / script).read_text()
        text = text.replace("PYTHON=/opt/shangzhuang/bin/python3", f"PYTHON={sys.executable}")
        text = text.replace("DASHBOARDS=/run/shangzhuang/dashboards", f"DASHBOARDS={folder}")
        env = {"SLURM_JOB_ID": job, "SLURM_JOB_UID": "65534", "SLURM_JOB_COMMENT": comment}
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
        done = subprocess.run([*as_user, "/bin/sh", "-c", text], env=env, capture_output=True,
                              text=True, timeout=60, check=True)  # fmt: skip
        return done.stdout

    def rules() -> str:
        return subprocess.run(
            ["iptables", "-S", SLURM_CHAIN], capture_output=True, text=True
        ).stdout

    job = f"9{os.getpid()}"  # not another test's job id
    run("dashboard-prolog.sh", job, comment="a batch job of someone's")
    assert not (folder / job).exists()  # not a Lab job: nothing reserved
    run("dashboard-prolog.sh", job, comment="shangzhuang-lab")
    try:
        kept = folder / job
        first, last = map(int, kept.read_text().split("-"))
        assert (kept.stat().st_uid, kept.stat().st_mode & 0o777) == (65534, 0o400)
        assert last - first == 7 and first >= 61000
        [rule] = [r for r in rules().splitlines() if f"--dport {first}:{last} " in r]
        assert rule.endswith("-m owner ! --uid-owner 65534 -j REJECT --reject-with tcp-reset")
        exported = run("dashboard-task-prolog.sh", job, uid=65534)
        assert exported == f"export SHANGZHUANG_DASHBOARD_PORTS={first}-{last}\n"
    finally:
        run("dashboard-epilog.sh", job)
    assert not (folder / job).exists()
    assert f"--dport {first}:{last} " not in rules()


@pytest.mark.parametrize("prolog", [True, False])
def test_the_home_page_says_when_slurm_sessions_dashboards_are_not_protected(tmp_path, prolog):
    from shangzhuang.hub import SLURM_DASHBOARDS_OPEN
    from shangzhuang.hub.config import Host, hub_config

    site = parse_settings(
        {
            "hub": {"state_dir": str(tmp_path / "state")},
            "quota": {"enabled": False},
            "backend": {"kind": "slurm", "slurm": {"dashboard_prolog": prolog}},
            "profiles": [{"name": "cpu", "cores": 1, "memory": "1G"}],
        },
        tmp_path / "site.toml",
    )
    config = hub_config(site, Host(is_root=True, cgroups="v1", iptables=True))
    said = str(config["JupyterHub"]["template_vars"].get("announcement_home", ""))
    assert (SLURM_DASHBOARDS_OPEN in said) == (not prolog), said


def home_page_notice(tmp_path, **host) -> tuple[str, dict]:
    """What a root hub's home page says is not enforced, and its LocalSpawner config."""
    from shangzhuang.hub.config import Host, hub_config

    site = parse_settings(
        {
            "hub": {"state_dir": str(tmp_path / "state")},
            "quota": {"enabled": False},
            "profiles": [{"name": "cpu", "cores": 1, "memory": "1G"}],
        },
        tmp_path / "site.toml",
    )
    config = hub_config(site, Host(is_root=True, **host))
    return config["JupyterHub"]["template_vars"].get("announcement_home", ""), config[
        "LocalSpawner"
    ]


@pytest.mark.parametrize("iptables", [True, False])
def test_the_home_page_says_when_dashboards_are_not_protected(tmp_path, iptables):
    from shangzhuang.hub import DASHBOARDS_OPEN
    from shangzhuang.hub.containment import firewall_chain

    said, spawner = home_page_notice(tmp_path, cgroups="v1", iptables=iptables)
    assert (DASHBOARDS_OPEN in said) == (not iptables)
    chain = firewall_chain(tmp_path / "state") if iptables else ""
    assert spawner.get("dashboard_chain", "") == chain


@pytest.mark.parametrize("cgroups", ["v1", "v2", "systemd"])
def test_the_home_page_says_gpus_rest_on_file_modes_on_cgroup_v2_without_systemd(tmp_path, cgroups):
    from shangzhuang.hub import GPUS_BY_FILE_MODE
    from shangzhuang.hub.gpus import Gpu

    gpu = (Gpu(index=0, uuid="GPU-a"),)
    said, spawner = home_page_notice(tmp_path, cgroups=cgroups, iptables=True, gpus=gpu)
    assert spawner["cgroups"] == cgroups
    assert (said == GPUS_BY_FILE_MODE) == (cgroups == "v2"), said
    assert home_page_notice(tmp_path, cgroups=cgroups, iptables=True)[0] == ""  # no GPU


# --- where systemd runs: a transient scope per session ------------------------------------

FAKE_SYSTEMD_RUN = """#!/bin/bash
# Stand-in for systemd-run --scope: records its arguments, then runs the command after
# "--" as --uid/--gid, as the real one does once it has made the scope.
printf '%s\\n' systemd-run "$@" >> {log}
for a in "$@"; do
  case $a in --uid=*) uid=${{a#--uid=}} ;; --gid=*) gid=${{a#--gid=}} ;; esac
done
while [ "$1" != "--" ]; do shift; done
shift
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
"""
FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl: records its arguments.
printf '%s\\n' systemctl "$@" >> {log}
"""


@root_only
def test_a_systemd_scope_carries_the_profile_and_is_found_again_by_its_name(tmp_path, monkeypatch):
    """No systemd here (not PID 1): systemd-run and systemctl are stand-ins on PATH that
    record their arguments; the systemd-run one really runs the session's command as the
    user. What systemd does with the properties (cgroup files, the eBPF device program) is
    systemd's and is not run here."""
    import pwd

    from shangzhuang.hub.containment import SystemdScope, session_cgroup
    from shangzhuang.hub.gpus import GpuPool

    from .spawner_kit import gpus, make_spawner

    log, bin_dir = tmp_path / "calls", tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("systemd-run", FAKE_SYSTEMD_RUN), ("systemctl", FAKE_SYSTEMCTL)]:
        (bin_dir / name).write_text(text.format(log=log))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    scope = session_cgroup("systemd", "shangzhuang/abc123/ana.lab", root=tmp_path / "cg")
    assert isinstance(scope, SystemdScope)
    assert (scope.slice, scope.unit) == (
        "shangzhuang-abc123.slice",
        "shangzhuang-abc123-ana.lab.scope",
    )
    limits = SessionLimits(cores=1.5, memory=2**30, pids=512, gpu_files=("/dev/nvidia1",))
    assert scope.create(limits) == []  # systemd enforces every limit

    # The spawner puts systemd-run in front of the session's command, for that start only.
    spawner = make_spawner(GpuPool(gpus(0)))
    spawner.cmd = [sys.executable, "-c", "import os; print(os.getuid(), os.getgid())"]
    spawner.cgroup = scope
    nobody = pwd.getpwnam("nobody")
    with spawner._in_scope(nobody):
        cmd = list(spawner.cmd)
    assert spawner.cmd == cmd[-3:] and cmd[0] == str(bin_dir / "systemd-run")
    ran = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ran.stdout.split() == [str(nobody.pw_uid), str(nobody.pw_gid)], ran

    args = log.read_text().splitlines()
    for wanted in [
        "--scope", "--unit=shangzhuang-abc123-ana.lab.scope", "--slice=shangzhuang-abc123.slice",
        "CPUQuota=150%", "MemoryMax=1073741824", "MemorySwapMax=0", "TasksMax=512",
        "DevicePolicy=closed", "DeviceAllow=/dev/nvidia1 rw", "DeviceAllow=/dev/nvidiactl rw",
    ]:  # fmt: skip
        assert wanted in args, (wanted, args)
    cpus = [a for a in args if a.startswith("AllowedCPUs=")]
    assert len(parse_cpus(cpus[0].split("=")[1])) == min(2, len(os.sched_getaffinity(0)))

    # After a hub restart: the state's kind and path name the same unit; stopping it asks
    # systemd to kill everything in the scope, then to stop it.
    again = session_cgroup(scope.kind, scope.path, root=tmp_path / "cg")
    assert again.unit == scope.unit
    log.write_text("")
    again.kill()
    assert asyncio.run(again.remove(timeout=5))
    assert log.read_text().splitlines() == [
        "systemctl", "kill", "--signal=SIGKILL", scope.unit, "systemctl", "stop", scope.unit,
    ]  # fmt: skip


def test_systemd_as_pid_1_is_preferred_to_writing_the_cgroup_files(tmp_path, monkeypatch):
    from shangzhuang.hub import containment

    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    monkeypatch.setattr(containment, "SYSTEMD", tmp_path / "run-systemd-system")
    assert detect(root) == "v2"
    (tmp_path / "run-systemd-system").mkdir()  # what systemd makes when it is PID 1
    assert detect(root) == "systemd"


@root_only  # as any other account the hub never gets one
@pytest.mark.parametrize("cgroups", ["off", "systemd"])
def test_the_hub_gets_no_cgroup_of_its_own_where_its_sessions_get_none(tmp_path, cgroups):
    """The hub moves into its own cgroup only beside sessions it contains itself (v1, v2);
    with systemd the installed unit's cgroup stays (system.slice), and a hub that contains
    nothing, or runs its sessions on Slurm, stays where it started. And configure(), which
    scripts and tests call too, moves only a running JupyterHub's process (none here)."""
    from traitlets.config import Config

    from shangzhuang.hub import configure, serve_hub_first

    state = f'[hub]\nstate_dir = "{tmp_path / "state"}"\n'
    profiles = '[[profiles]]\nname = "cpu"\ncores = 1\nmemory = "1G"\n'
    local = tmp_path / "local.toml"
    local.write_text(f'{state}[backend.local.containment]\ncgroups = "{cgroups}"\n{profiles}')
    slurm = tmp_path / "slurm.toml"
    slurm.write_text(f'{state}[backend]\nkind = "slurm"\n{profiles}')
    before = Path("/proc/self/cgroup").read_text()
    for config in (local, slurm):
        assert serve_hub_first(load_settings(config), detect()) == ""
    v1 = tmp_path / "v1.toml"
    v1.write_text(f'{state}[backend.local.containment]\ncgroups = "v1"\n{profiles}')
    configure(Config(), load_settings(v1))
    assert Path("/proc/self/cgroup").read_text() == before
