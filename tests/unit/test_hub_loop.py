"""Nothing of ours holds up the hub's event loop (issue 16): what may wait (systemctl, a
directory server behind NSS, a slow disk) runs off it while the loop keeps turning."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
import time

import pytest

from shangzhuang.hub import unix
from shangzhuang.hub.containment import session_cgroup
from shangzhuang.hub.gpus import GpuPool

from .spawner_kit import gpus, make_spawner

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the home's owner is root's to set")

# Stand-in for systemctl: like systemd, `kill` kills the scope's processes and empties it;
# every call takes a second (a busy systemd answers in seconds).
SLOW_SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
sleep 1
if [ "$1" = kill ]; then
  kill -9 $(cat {procs}) 2>/dev/null
  : > {procs}
fi
"""


async def longest_stall(work) -> float:
    """Run `work()` (a coroutine function) while a ticker notes how long the loop went
    without turning; return the longest gap, in seconds."""
    gaps: list[float] = []
    last = [time.monotonic()]

    async def ticker():
        while True:
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last[0])
            last[0] = time.monotonic()

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    try:
        await work()
    finally:
        tick.cancel()
    gaps.append(time.monotonic() - last[0])  # a stall at the very end counts too
    return max(gaps)


def test_stopping_a_systemd_scope_never_holds_up_the_hubs_loop(tmp_path, monkeypatch):
    """JupyterHub calls clear_state on its event loop when a session stops or is found dead;
    the session's scope is killed and removed (systemctl kill, systemctl stop) while the loop
    keeps turning. No systemd here (not PID 1): systemctl is the stand-in above, on PATH,
    and the scope's cgroup a folder of files. Seen red before the change: clear_state ran
    `systemctl kill` on the loop (a 1.0 s stall) and remove() ran `systemctl stop` there."""
    session = subprocess.Popen(["sleep", "60"])
    root = tmp_path / "cg"
    (root / "memory").mkdir(parents=True)
    scope = session_cgroup("systemd", "shangzhuang/abc123/ana.lab", root=root)
    (folder,) = scope.folders()
    folder.mkdir(parents=True)
    procs = folder / "cgroup.procs"
    procs.write_text(f"{session.pid}\n")
    log, bin_dir = tmp_path / "calls", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SLOW_SYSTEMCTL.format(log=log, procs=procs))
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    spawner = make_spawner(GpuPool(gpus(0)))
    spawner.cgroup = scope

    async def stop():
        spawner.clear_state()  # as JupyterHub calls it: on its loop
        assert spawner.cgroup is None
        await asyncio.gather(*list(spawner._removals))

    try:
        stall = asyncio.run(longest_stall(stop))
        assert session.wait(5) == -9  # the scope's process was killed
    finally:
        session.kill()
    assert log.read_text().splitlines() == [
        f"kill --signal=SIGKILL {scope.unit}",
        f"stop {scope.unit}",
    ]
    assert stall < 0.5, f"the loop stood still {stall:.2f} s"


@root_only
def test_a_slow_account_lookup_never_holds_up_the_hubs_loop(tmp_path, monkeypatch):
    """The user's Unix account is looked up at every spawn (`getpwnam`, which NSS may send
    to a directory server: sssd, nslcd). Such a server can't run here: a lookup that takes
    a second stands in for it (the only stand-in; the home's checks and chown are real).
    Seen red before the change: the lookup ran on the loop (a 1.0 s stall)."""
    home = tmp_path / "home" / "sz-ana"
    account = pwd.struct_passwd(
        ("sz-ana", "x", 54321, 54321, "Shangzhuang user ana", str(home), "/bin/bash")
    )

    def slow_lookup(name: str) -> pwd.struct_passwd:
        time.sleep(1)
        if name != account.pw_name:
            raise KeyError(name)
        return account

    monkeypatch.setattr(unix.pwd, "getpwnam", slow_lookup)

    async def spawn():
        found = await unix.ensure_account("sz-ana", str(home), "ana")
        assert found == account

    stall = asyncio.run(longest_stall(spawn))
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (54321, 0o700)
    assert stall < 0.5, f"the loop stood still {stall:.2f} s"


@root_only
def test_an_apps_files_are_handed_to_its_owner_off_the_hubs_loop(tmp_path, monkeypatch):
    """Before an app's server starts, the pre-spawn hook gives the app's files (every one:
    a model can be thousands) to its owner's group, as root. A slow disk (NFS) can't run
    here: each chown taking 2 ms stands in for it (the only stand-in; the registry, the
    folder walk and the chown are real). Seen red before the change: the walk ran on the
    loop (a 1.4 s stall for 600 files)."""
    from types import SimpleNamespace

    from shangzhuang.apps import registry
    from shangzhuang.apps.registry import App
    from shangzhuang.apps.spawn import AppServers
    from shangzhuang.settings import parse_settings

    profiles = [{"name": "cpu", "cores": 1, "memory": "1G"}]
    settings = parse_settings(
        {"profiles": profiles, "hub": {"state_dir": str(tmp_path / "state")}},
        tmp_path / "site.toml",
    )
    hook = AppServers(settings)
    files = {"app.ipynb": b"{}", **{f"model/part{i}.bin": b"x" for i in range(600)}}
    hook.registry.publish(App(owner="olga", name="demo", notebook="app.ipynb"), files, 2**20)
    chown = os.chown

    def slow_chown(*args, **kwargs):
        time.sleep(0.002)
        chown(*args, **kwargs)

    monkeypatch.setattr(registry.os, "chown", slow_chown)
    account = pwd.struct_passwd(("sz-olga", "x", 54322, 54322, "", "/nonexistent", "/bin/sh"))

    async def unix_account():
        return account

    spawner = SimpleNamespace(
        name=f"{hook.prefix}demo", user=SimpleNamespace(name="olga"), isolated=True,
        unix_account=unix_account,
    )  # fmt: skip
    stall = asyncio.run(longest_stall(lambda: hook(spawner)))
    part = hook.registry.files_dir("olga", "demo") / "model" / "part599.bin"
    assert os.lstat(part).st_gid == 54322
    assert spawner.usage_source == "app" and spawner.cmd[-2:] == ["-m", "shangzhuang.apps.server"]
    assert stall < 0.5, f"the loop stood still {stall:.2f} s"


# Stand-ins for a slurmctld that answers slowly (a busy controller takes seconds): each
# command takes a second, then answers as Slurm 22.05 does for a running job on node n1.
SLOW_SLURM = {
    "squeue": "sleep 1\nprintf '%s\\n' \"$*\" >> {log}\n"
              "case \"$*\" in *PENDING*) echo 41; echo 42;; *) echo 'RUNNING None n1';; esac\n",
    "scontrol": "sleep 1\nprintf '%s\\n' \"$*\" >> {log}\n"
                "echo 'NodeName=n1 NodeAddr=127.0.0.7 NodeHostName=n1 State=ALLOCATED'\n",
    "scancel": "sleep 1\nprintf '%s\\n' \"scancel $*\" >> {log}\n",
}  # fmt: skip


def test_a_slow_slurm_never_holds_up_the_hubs_loop(tmp_path, monkeypatch):
    """The hub asks Slurm about a Lab job while it runs (squeue at every poll, scontrol for
    its node's address, squeue for its place in the queue, scancel at stop). A slurmctld
    that answers slowly can't be had on demand from the test Slurm: stand-ins for squeue,
    scontrol and scancel on PATH take a second each and answer in Slurm's words (the only
    stand-ins; the spawner's code is the real SlurmSpawner with batchspawner 1.3.0's).
    Four seconds of Slurm calls, and the loop keeps turning: no stall over 0.3 s. Seen red
    with the node's address looked up by a blocking subprocess.run (a 1.02 s stall), as
    batchspawner's state_gethost would have it."""
    from types import SimpleNamespace

    from shangzhuang.hub.spawners import SlurmSpawner

    from .spawner_kit import HUB, profile

    log = tmp_path / "slurm.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SLOW_SLURM.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body.format(log=log))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spawner = SlurmSpawner(
        user=SimpleNamespace(name="ana", url="/user/ana/"),
        orm_spawner=SimpleNamespace(name="", display_name="", server=None, last_activity=None),
        hub=HUB, profiles=[profile("cpu")], user_prefix="sz-", home_root=str(tmp_path),
    )  # fmt: skip
    spawner.job_id, spawner.req_partition = "42", ""
    SlurmSpawner._node_addrs.pop("n1", None)  # shared by every spawner: look it up anew

    async def ask_slurm():
        assert await spawner.poll() is None  # squeue, then scontrol for n1's NodeAddr
        assert spawner.state_gethost() == "127.0.0.7"
        assert await spawner._queue_position() == (1, 2)  # squeue of the pending jobs
        await spawner.cancel_batch_job()  # scancel, as batchspawner's stop sends it

    stall = asyncio.run(longest_stall(ask_slurm))
    calls = log.read_text().splitlines()
    assert len(calls) == 4 and calls[-1] == "scancel 42", calls
    assert stall < 0.3, f"the loop stood still {stall:.2f} s while Slurm answered slowly"


def test_the_hubs_commits_do_not_wait_for_the_disk(tmp_path):
    """JupyterHub commits its own SQLite database on its event loop after most requests;
    SQLite's default journal makes each commit wait for fsyncs (35% of the hub's busy loop
    while 30 users arrived, bench/load.py). Opened as the hub opens it (JupyterHub's ORM,
    the config's db_url and db_kwargs), the database is in WAL mode with
    synchronous=NORMAL, where a commit appends to the -wal file without an fsync (SQLite's
    documented behaviour: a slow disk can't be made here)."""
    from jupyterhub import orm

    from shangzhuang.hub.config import Host, hub_config
    from shangzhuang.settings import parse_settings

    profiles = [{"name": "cpu", "cores": 1, "memory": "1G"}]
    settings = parse_settings(
        {"profiles": profiles, "hub": {"state_dir": str(tmp_path / "state")}},
        tmp_path / "site.toml",
    )
    hub = hub_config(settings, Host(python="/venv/bin/python", proxy="/bin/chp"))["JupyterHub"]
    (tmp_path / "state").mkdir()  # configure()'s prepare_state makes it in the hub
    db = orm.new_session_factory(hub["db_url"], **hub["db_kwargs"])()
    db.add(orm.User(name="ana"))
    db.commit()
    connection = db.connection().connection.dbapi_connection
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert connection.execute("PRAGMA foreign_keys").fetchone() == (1,)  # JupyterHub's, kept
    assert (tmp_path / "state" / "jupyterhub.sqlite-wal").exists()
    db.close()


def test_making_a_sessions_cgroup_never_holds_up_the_hubs_loop(tmp_path, monkeypatch):
    """A session's cgroup is made at every start: its parents' weights and its CPUs come
    from every sibling session's files (1% of the hub's busy loop with 30 users arriving,
    bench/load.py). A slow cgroup file system can't be made here: each file read taking
    2 ms, with 100 sessions running, stands in for it (the only stand-in; the cgroup2
    layout is a temp folder, the spawner's code is real). Seen red before the change:
    the cgroup was made on the loop (a 0.52 s stall)."""
    from shangzhuang.hub import containment, spawners
    from shangzhuang.hub.containment import CgroupV2

    from .spawner_kit import profile
    from .test_containment import cgroup2_tree, session_files

    root = tmp_path / "cg"
    cgroup2_tree(root, "sz/abc")
    for i in range(100):
        session_files(root / f"sz/abc/u{i}.lab")
    session_files(root / "sz/abc/ana.lab")  # what the kernel makes with the folder
    read = containment._read

    def slow_read(path, default=""):
        time.sleep(0.002)
        return read(path, default)

    monkeypatch.setattr(containment, "_read", slow_read)
    monkeypatch.setattr(spawners, "session_cgroup", lambda kind, path: CgroupV2(path, root))
    spawner = make_spawner(GpuPool(gpus(0)), cgroups="v2", cgroup_parent="sz/abc")
    stall = asyncio.run(longest_stall(lambda: spawner._contain(profile("cpu", cores=2))))
    assert (root / "sz/abc/ana.lab/cpu.weight").read_text() == "200"
    assert stall < 0.3, f"the loop stood still {stall:.2f} s"


def test_starting_a_sessions_process_never_holds_up_the_hubs_loop(tmp_path):
    """Popen returns once the child has exec'd; before that, our child joins its session's
    cgroup (each write to cgroup.procs waits for the kernel) and waits for a CPU among the
    Labs starting beside it: up to 2.7 s per start while 30 users arrived (bench/load.py).
    A child whose preexec step takes a second stands in for it (the only stand-in; the
    spawner's start and Popen are real). Seen red with JupyterHub's LocalProcessSpawner.start
    (Popen on the loop: a 1.0 s stall)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    spawner = make_spawner(GpuPool(gpus(0)), cmd=sleeper)
    spawner.get_args = lambda: []  # the Lab's own arguments
    spawner.make_preexec_fn = lambda name: lambda: time.sleep(1)

    async def start():
        ip, port = await spawner._start_process()
        assert (ip, spawner.pid) == ("127.0.0.1", spawner.proc.pid) and port

    try:
        stall = asyncio.run(longest_stall(start))
        assert spawner.proc.poll() is None  # the session's process runs
    finally:
        spawner.proc.kill()
        spawner.proc.wait()
    assert stall < 0.3, f"the loop stood still {stall:.2f} s"
