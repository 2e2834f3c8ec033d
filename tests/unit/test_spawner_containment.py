"""LocalSpawner's side of containment: the cgroup in its state, poll after a hub restart,
and what the user is told when the session hit its memory limit. The cgroup is a
CgroupV2 on a temp folder laid out as cgroup2 (no hub, no root needed)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from shangzhuang.hub.containment import CgroupV1, CgroupV2, _read, detect
from shangzhuang.hub.gpus import GpuPool

from .spawner_kit import gpus, make_spawner, profile


def fake_cgroup(root: Path, pids: list[int], oom_kills: int = 0) -> CgroupV2:
    folder = root / "sz" / "hub" / "ana.lab"
    folder.mkdir(parents=True)
    (folder / "cgroup.procs").write_text("\n".join(map(str, pids)))
    (folder / "cgroup.kill").write_text("")
    (folder / "memory.events").write_text(f"oom 0\noom_kill {oom_kills}\n")
    return CgroupV2("sz/hub/ana.lab", root=root)


def test_the_cgroup_travels_in_the_state(tmp_path):
    pool = GpuPool(gpus(0))
    spawner = make_spawner(pool)
    spawner.cgroup = fake_cgroup(tmp_path, [os.getpid()])
    state = spawner.get_state()
    assert state["cgroup"] == {"kind": "v2", "path": "sz/hub/ana.lab", "oom_kills": 0}
    again = make_spawner(pool)
    again.load_state(state)
    assert (again.cgroup.kind, again.cgroup.path) == ("v2", "sz/hub/ana.lab")


def test_after_a_restart_a_pid_outside_the_sessions_cgroup_is_not_the_session(tmp_path):
    """The pid in the state may belong to someone else now: only one in the cgroup counts."""
    spawner = make_spawner(GpuPool(gpus(0)))
    spawner.cgroup = fake_cgroup(tmp_path, [123456])  # the session's Lab is gone
    spawner.pid = os.getpid()  # a live process, not in that cgroup
    assert asyncio.run(spawner.poll()) == 0
    assert spawner.cgroup is None and spawner.pid == 0
    # Still in it: alive.
    spawner.cgroup = fake_cgroup(tmp_path / "b", [os.getpid()])
    spawner.pid = os.getpid()
    assert asyncio.run(spawner.poll()) is None


def test_a_session_that_hit_its_memory_limit_says_so(tmp_path):
    spawner = make_spawner(GpuPool(gpus(0)), mem_limit=512 * 2**20)
    spawner.cgroup = fake_cgroup(tmp_path, [os.getpid()], oom_kills=1)
    assert spawner.memory_notices() == [
        "Your Lab session used more than its memory (512 MB): the system stopped a process "
        "in it, which a notebook shows as a kernel that died."
    ]
    assert spawner.memory_notices()[0].render("zh_CN").startswith("你的 Lab 会话")  # 中文 too
    spawner.clear_state()  # stopped, or found dead
    assert (tmp_path / "sz/hub/ana.lab/cgroup.kill").read_text() == "1"  # everything killed
    assert spawner.memory_notices() == [
        "Your last Lab session was stopped because it used more than its memory (512 MB)."
    ]
    assert spawner.memory_notices()[0].render("zh_CN").startswith("你上一个 Lab 会话")


@pytest.mark.skipif(os.geteuid() != 0, reason="containment is configured only for a root hub")
@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_the_hub_config_names_what_is_not_contained(tmp_path, cgroups):
    from traitlets.config import Config

    from shangzhuang.hub import NOT_CONTAINED, configure
    from shangzhuang.hub.containment import detect, hub_parent
    from shangzhuang.settings import load_settings

    config = tmp_path / "site.toml"
    config.write_text(
        f'[hub]\nstate_dir = "{tmp_path / "state"}"\n[quota]\nenabled = false\n'
        f'[backend.local.containment]\ncgroups = "{cgroups}"\npids_limit = 512\n'
        '[[profiles]]\nname = "cpu"\ncores = 1\nmemory = "1G"\n'
    )
    c = Config()
    configure(c, load_settings(config))
    expected = detect() if cgroups == "auto" else ""
    assert c.LocalSpawner.cgroups == expected
    assert c.LocalSpawner.cgroup_parent == hub_parent("shangzhuang", tmp_path / "state")
    assert c.LocalSpawner.pids_limit == 512
    said = c.JupyterHub.template_vars.get("announcement_home")
    assert (said == NOT_CONTAINED) == (not expected)


# --- a session never runs outside its cgroup (the machine's real cgroup v1, as root) -----
v1_root = pytest.mark.skipif(
    os.geteuid() != 0 or detect() != "v1", reason="the real cgroup v1 file system, as root"
)


@pytest.fixture
def v1_spawner(tmp_path, monkeypatch):
    """A LocalSpawner whose sessions' cgroups are real v1 cgroups under a folder of the
    test's own (removed after)."""
    from shangzhuang.hub import spawners

    top = f"sz-unit-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(spawners, "session_cgroup", lambda kind, path: CgroupV1(path))
    monkeypatch.setenv("HOME", str(tmp_path))  # a session not isolated starts in a folder here
    (tmp_path / "shangzhuang-homes" / "ana").mkdir(parents=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    spawner = make_spawner(GpuPool(gpus(0)), cgroups="v1", cgroup_parent=f"{top}/0123456789ab",
                           cmd=sleeper)  # fmt: skip
    spawner.get_args = lambda: []  # the Lab's own arguments
    yield spawner
    for mount in Path("/sys/fs/cgroup").iterdir():
        for folder in sorted((mount / top).glob("**/"), key=lambda p: -len(p.parts)):
            for pid in _read(folder / "cgroup.procs").split():
                os.kill(int(pid), 9)
            for _ in range(50):  # killed processes leave as they are reaped
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


@v1_root
def test_a_session_whose_cgroup_is_missing_does_not_start(v1_spawner, caplog):
    """The session's cgroup folder went missing between its making and the join (removed
    or renamed): the join refuses, and the session does not start rather than run without
    its CPU, memory and device limits. The user reads why; the operator's log names the
    folder. Seen red before the change: the join skipped the missing folder and the Lab
    ran (no exception), outside the memory hierarchy."""
    from jupyterhub.spawner import SpawnException

    spawner = v1_spawner

    async def start_without_its_memory_cgroup():
        await spawner._contain(profile("cpu"))
        memory = next(f for f in spawner.cgroup.folders() if "/memory/" in str(f))
        memory.rmdir()
        with pytest.raises(SpawnException) as refused:
            await spawner._start_process()
        return memory, refused.value

    memory, refused = asyncio.run(start_without_its_memory_cgroup())
    assert spawner.proc is None and spawner.pid == 0  # nothing runs
    assert str(refused.message).startswith("Your session could not be contained")
    assert refused.reason == "uncontained"
    assert f"{memory} is missing" in caplog.text


@v1_root
def test_a_new_start_waits_for_the_last_sessions_cgroup_to_go(v1_spawner, monkeypatch):
    """The user stops and starts her session again at once, while the removal of her last
    session's cgroup (same path) is still under way: off the hub's loop, on a busy node it
    waits for a worker thread, or for a process to die. It must not remove the new
    session's folders: those are there when the new session joins them. A removal that
    waits half a second stands in for the busy node (the only stand-in; the cgroups are
    real). Seen red before the change: the old removal took the new session's folders
    (the start ran on with none)."""
    spawner = v1_spawner
    rmdir = CgroupV1.rmdir

    async def stop_and_start_again():
        await spawner._contain(profile("cpu"))
        slow = spawner.cgroup

        def slow_rmdir(self):
            if self is slow:
                time.sleep(0.5)
            rmdir(self)

        monkeypatch.setattr(CgroupV1, "rmdir", slow_rmdir)
        spawner.clear_state()  # stopped: its cgroup's removal goes on off the loop
        await spawner._contain(profile("cpu"))  # started again
        await asyncio.gather(*spawner._removals)
        return spawner.cgroup

    new = asyncio.run(stop_and_start_again())
    assert all(f.is_dir() for f in new.folders()), [f for f in new.folders() if not f.is_dir()]
