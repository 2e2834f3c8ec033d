"""A session's own code against its cgroup's folders: no tenant raises their own limits,
moves a process out of their session (where its stop no longer finds it), or renames or
removes a session's folder (so that a session starts uncontained), whatever umask the hub
runs under.

The attacker is an unprivileged account (nobody) in a session cgroup the hub's own code
makes (`create`, as the spawner does at each start) on this machine's real cgroup file
systems (v1, and the cgroup2 mount without controllers where there is one). No hub is
started: the folders' modes are all that is judged, and the hub's umask is this process's
(a loose one, 0000, as a hub started from a careless shell would have).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from shangzhuang.hub.containment import CgroupV1, CgroupV2, SessionLimits, detect

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and Unix accounts need root"),
]

NOBODY = 65534
REFUSED = ("EACCES", "EPERM")  # EPERM: what cgroup2 says to a rename it does not allow
UNIFIED = Path("/sys/fs/cgroup/unified")
KINDS = [
    pytest.param(
        "v1", marks=pytest.mark.skipif(detect() != "v1", reason="no cgroup v1 controllers")
    ),
    pytest.param(
        "v2",
        marks=pytest.mark.skipif(
            not (UNIFIED / "cgroup.procs").exists(), reason="no cgroup2 mount here"
        ),
    ),
]

# As the session's account, from inside the session: print what each attempt got.
ATTACK = r"""
import errno, json, os, sys, time
own, sibling, limits = json.loads(sys.argv[1])
def attempt(what):
    try:
        what()
        return "done"
    except OSError as e:
        return errno.errorcode[e.errno]
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
def escape(folder):  # a child of my own folder, and me in it: not in my session's list
    os.mkdir(folder + "/out")
    write(folder + "/out/cgroup.procs", str(os.getpid()))
said = {}
for folder in own:
    said[folder + ": cgroup.procs"] = attempt(lambda: write(folder + "/cgroup.procs", "0"))
    said[folder + ": child"] = attempt(lambda: escape(folder))
for path, value in limits:
    said[path] = attempt(lambda: write(path, value))
said["rename mine"] = attempt(lambda: os.rename(own[0], own[0] + "-gone"))
said["remove a neighbour's"] = attempt(lambda: os.rmdir(sibling))
print(json.dumps(said), flush=True)
time.sleep(300)
"""


def session_of(kind: str, path: str):
    return CgroupV1(path) if kind == "v1" else CgroupV2(path, root=UNIFIED)


def limit_files(kind: str, cgroup) -> list[tuple[str, str]]:
    """Limits the attacker would raise (v1; the cgroup2 mount here has no controllers)."""
    if kind != "v1":
        return []
    at = {f.parts[-1 - len(Path(cgroup.path).parts)]: f for f in cgroup.folders()}
    return [
        (str(at["cpu"] / "cpu.cfs_quota_us"), "-1"),
        (str(at["memory"] / "memory.limit_in_bytes"), str(2**40)),
        (str(at["pids"] / "pids.max"), "max"),
        (str(at["devices"] / "devices.allow"), "a"),
    ]


def become_nobody(cgroup):
    def preexec():
        cgroup.join()
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return preexec


def remove_tree(top: Path) -> None:
    """Kill and remove whatever the test left under `top` (children first)."""
    if not top.is_dir():
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        for pid in (folder / "cgroup.procs").read_text().split():
            subprocess.run(["kill", "-9", pid], check=False)
    time.sleep(0.1)
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        folder.rmdir()
    top.rmdir()


@pytest.mark.parametrize("kind", KINDS)
def test_a_session_can_neither_raise_its_limits_nor_leave_or_remove_its_cgroup(kind):
    """From inside her session, as her own account, the attacker tries to join again
    (cgroup.procs), raise her CPU, memory, process and device limits, make a child
    cgroup and move into it (out of the list the stop kills), rename her session's folder
    and remove a neighbour's freshly made one (both would let a session start
    uncontained: the join found no folder). Each is refused, and her stop kills
    her. Seen red with the folders made under the process's umask (0000 here): the child,
    the escape into it, the rename and the removal all went through, and her process
    outlived the stop."""
    top = f"sz-sec-{uuid.uuid4().hex[:8]}"
    hub = f"{top}/0123456789ab"  # as hub_parent() names a hub's sessions' folder
    mine, neighbour = session_of(kind, f"{hub}/eve.lab"), session_of(kind, f"{hub}/ned.lab")
    limits = SessionLimits(cores=1, memory=256 * 2**20, pids=64)
    umask = os.umask(0)  # a hub started from a shell with umask 0
    try:
        mine.create(limits)
        neighbour.create(limits)
    finally:
        os.umask(umask)
    try:
        args = json.dumps([[str(f) for f in mine.folders()], str(neighbour.folders()[0]),
                           limit_files(kind, mine)])  # fmt: skip
        attacker = subprocess.Popen(
            ["/usr/bin/python3", "-c", ATTACK, args], preexec_fn=become_nobody(mine),
            stdout=subprocess.PIPE, text=True, cwd="/",
        )  # fmt: skip
        said = json.loads(attacker.stdout.readline())
        assert {k: v for k, v in said.items() if v not in REFUSED} == {}, said
        assert asyncio.run(mine.remove(timeout=10))  # her session stops
        assert attacker.wait(10) == -9
        assert neighbour.exists() and not mine.exists()
        # Root's, whatever the umask: the sessions' folders and the hub's above them.
        for folder in [*neighbour.folders(), *(f.parent for f in neighbour.folders())]:
            st = folder.stat()
            assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o755"), folder
    finally:
        for hierarchy in {f.parents[len(Path(hub).parts)] for f in mine.folders()}:
            remove_tree(hierarchy / top)
