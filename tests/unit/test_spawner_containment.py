"""LocalSpawner's side of containment: the cgroup in its state, poll after a hub restart,
and what the user is told when the session hit its memory limit. The cgroup is a
CgroupV2 on a temp folder laid out as cgroup2 (no hub, no root needed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from shangzhuang.hub.containment import CgroupV2
from shangzhuang.hub.gpus import GpuPool

from .spawner_kit import gpus, make_spawner


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
    spawner.clear_state()  # stopped, or found dead
    assert (tmp_path / "sz/hub/ana.lab/cgroup.kill").read_text() == "1"  # everything killed
    assert spawner.memory_notices() == [
        "Your last Lab session was stopped because it used more than its memory (512 MB)."
    ]


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
