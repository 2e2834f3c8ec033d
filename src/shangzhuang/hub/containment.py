"""Each local session in a cgroup made from its profile; stopping it kills everything in it.

One small class per mechanism, the shared logic once in `SessionCgroup`:
`CgroupV1` (one folder per controller under /sys/fs/cgroup/{cpu,memory,...}) and
`CgroupV2` (one folder in the unified hierarchy). A session's cgroup is
`<hub parent>/<session>`; the hub parent is unique per hub (`hub_parent`), so two hubs on
one machine never touch each other's sessions.

What each limit is made of:
- cores: a CFS quota of cores x period, a CPU weight in proportion to the cores (so a
  busy 1-core session yields to a 2-core one on a CPU they share), and a cpuset of
  ceil(cores) CPUs, the least used by this hub's other sessions, so `nproc` and
  `os.sched_getaffinity` show the figure;
- memory: the memory limit (the kernel's OOM killer then picks inside the session only);
- pids: a limit on the session's processes and threads;
- devices (v1 only): every NVIDIA GPU (char 195:0-253, in the pool or not) and every
  pool GPU the session does not hold is denied, so a device node re-created with an open
  mode still does not open; the driver's control nodes (nvidiactl 195:255, modeset
  195:254, nvidia-uvm) stay open for CUDA. cgroup v2 has no devices files (it needs an
  eBPF program): there GPUs rest on the device files' owner and mode.

A limit whose file the kernel does not offer (a controller that is not mounted or not
enabled) is not enforced; `create` returns what was left out, and the hub logs it.
The hub writes these files as root; sessions join their cgroup before exec.

The hub itself, and the proxy and services it starts, get a cgroup of their own beside
its sessions' folder (`hub_cgroup`, `serve_first`): the highest CPU weight the mechanism
allows, and no limit, so the CPU serves the hub before the sessions whenever it asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
SYSTEMD = Path("/run/systemd/system")  # exists when systemd is PID 1 (sd_booted's test)
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "pids", "freezer")
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")


@dataclass(frozen=True)
class SessionLimits:
    """What a session may use, from its profile and the site's settings."""

    cores: float
    memory: int  # bytes
    pids: int
    # Char devices ("c MAJOR:MINOR") of the pool's GPUs this session does not hold.
    denied_devices: tuple[str, ...] = field(default=())
    # Device files of the GPUs it holds (systemd allows these and nothing else).
    gpu_files: tuple[str, ...] = field(default=())


def hub_id(state_dir: Path | str) -> str:
    """A short id of one hub (of its state folder): its cgroups' and firewall chain's name."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


def hub_parent(parent: str, state_dir: Path | str) -> str:
    """The cgroup folder of one hub's sessions: `parent` + a short id of its state folder."""
    return f"{parent.strip('/')}/{hub_id(state_dir)}"


HUB_SUFFIX = ".hub"  # the hub's own folder: `hub_parent` + this (a hub id has no dot)


def hub_cgroup(parent: str, state_dir: Path | str) -> str:
    """The cgroup folder of one hub itself (and its proxy and services): beside its
    sessions' folder, 'shangzhuang/<hub id>.hub'."""
    return hub_parent(parent, state_dir) + HUB_SUFFIX


def session_name(user: str, server: str) -> str:
    """A cgroup folder name for one server of one user ('' = the default server)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{user}.{server or 'lab'}")


def gpu_device_rule(device: Path | None) -> str | None:
    """The devices-cgroup rule naming a GPU's device file ('c 195:0'), if it is a char device."""
    if device is None:
        return None
    try:
        st = os.stat(device)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None  # a plain file (tests' fake GPUs): no device rule can name it
    return f"c {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


NVIDIA_MAJOR = 195
NVIDIA_GPU_MINORS = range(254)  # 254 and 255 are the driver's control nodes, not GPUs


def gpu_denials(pool: list[str | None], held: list[str | None]) -> tuple[str, ...]:
    """Device rules a session's cgroup denies: every NVIDIA GPU minor and every pool GPU's
    rule (`gpu_device_rule`), except those of the GPUs it holds."""
    every = [f"c {NVIDIA_MAJOR}:{m}" for m in NVIDIA_GPU_MINORS] + [r for r in pool if r]
    return tuple(r for r in dict.fromkeys(every) if r not in held)


def parse_cpus(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5] (the kernel's cpu list format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpus(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def pick_cpus(count: int, available: list[int], taken: list[list[int]]) -> list[int]:
    """`count` CPUs of `available`, the least used by other sessions first (then lowest)."""
    load = {c: 0 for c in available}
    for cpus in taken:
        for c in cpus:
            if c in load:
                load[c] += 1
    return sorted(sorted(available, key=lambda c: (load[c], c))[: max(1, count)])


# Sessions' cgroups are made and removed on threads (off the hub's loop): what reads the
# siblings and writes from them (the parents' weights, the least used CPUs) goes one at a time.
SIBLINGS = threading.Lock()


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


# A session's cgroup folders and the hub's above them: root's alone, whatever the umask. A
# session that could write there would make a child cgroup and move out of the list its stop
# kills, or rename or remove a session's folder (which then starts uncontained).
FOLDER_MODE = 0o755


def _make_folders(mount: Path, path: str, ours: int = 2) -> Path:
    """`mount`/`path`, made like `mkdir -p`, each folder it makes FOLDER_MODE (made 0700
    first: the umask only takes bits away, so no moment is it more open than root's). The
    last `ours` folders (a session's and its hub's) get FOLDER_MODE even when they were
    there; folders further up (the site's `cgroup_parent`) keep theirs."""
    folder, parts = mount, path.strip("/").split("/")
    for i, part in enumerate(parts):
        folder = folder / part
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if i < len(parts) - ours:
                continue
        folder.chmod(FOLDER_MODE)
    return folder


class CgroupMissing(OSError):
    """A session's cgroup folder is not there when its process joins it: the session would
    run without its limits, so it does not start."""

    def __init__(self, folder: Path):
        super().__init__(f"cgroup folder {folder} is missing")
        self.folder = folder


def _write(path: Path, value: str) -> bool:
    """Write a cgroup file; False when the kernel does not offer it (never creates one)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    return True


class SessionCgroup:
    """One session's cgroup. `path` is relative to each hierarchy's root ('a/b/alice.lab')."""

    kind = ""

    def __init__(self, path: str, root: Path = CGROUP_ROOT):
        self.path = path.strip("/")
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    # --- what each mechanism says --------------------------------------------------
    def folders(self) -> list[Path]:
        """Every folder this cgroup has (one per hierarchy it lives in)."""
        raise NotImplementedError

    def create(self, limits: SessionLimits) -> list[str]:
        """Make the cgroup with these limits; return the limits that are not enforced."""
        raise NotImplementedError

    def oom_kills(self) -> int:
        """How many processes of this session the kernel killed for its memory limit."""
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU time used by the session so far."""
        raise NotImplementedError

    def _kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- shared --------------------------------------------------------------------
    def exists(self) -> bool:
        return any(f.is_dir() for f in self.folders())

    def join(self, pid: int = 0) -> None:
        """Move a process (0: the caller) into the cgroup; safe in a preexec function.
        CgroupMissing when a folder is not there (removed or renamed since `create`): the
        process must not run on uncontained."""
        text = str(pid or os.getpid())
        folders = self.folders()
        if not folders:
            raise CgroupMissing(self.root / self.path)
        for folder in folders:
            if not _write(folder / "cgroup.procs", text):
                raise CgroupMissing(folder)

    def pids(self) -> set[int]:
        """Every process in the session, detached ones included."""
        pids: set[int] = set()
        for folder in self.folders():
            pids.update(int(p) for p in _read(folder / "cgroup.procs").split())
        return pids

    def kill(self) -> None:
        """Kill every process in the session at once (no waiting)."""
        self._kill_all()

    async def remove(self, timeout: float = 30) -> bool:
        """Kill everything in the session, wait until it is empty, remove the cgroup.
        False if processes outlived `timeout` (the cgroup is then left in place).

        Off the hub's event loop: with a systemd scope, kill and rmdir are systemctl calls
        (up to 30 s each), and the cgroup files may be slow on a busy node."""
        deadline = time.monotonic() + timeout
        while pids := await asyncio.to_thread(self.pids):
            if time.monotonic() > deadline:
                log.warning("%s: processes %s outlived the kill", self, sorted(pids))
                return False
            await asyncio.to_thread(self.kill)
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.rmdir)
        return True

    def rmdir(self) -> None:
        """Remove the (empty) cgroup, and the hub's folder above it once that is empty too."""
        for folder in self.folders():
            for f in (folder, folder.parent):
                try:
                    f.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:  # busy: still has processes or other sessions
                    break
        self.weigh_parents()  # the session's weight leaves its parents'

    # The CPU weight's file, its bounds, and where its hierarchy starts (v1: .../cpu).
    weight_file, weight_bounds = "", (1, 1)

    def _cpu_folder(self) -> tuple[Path, Path] | None:
        """(the session's folder holding weight_file, its hierarchy's root)."""
        return None

    def weigh_parents(self) -> None:
        """Give each folder above the session the weight of the sessions below it together.

        The kernel shares the CPU between the siblings of each level, and a folder left at
        the default weighs as much as one process: every session of the node together then
        got one process's share against the hub, its services and whatever else runs
        there, and starting Labs waited for a CPU (bench/session_start.py). Weighed this
        way, a session of N cores competes with the node's other processes as N of them
        would, as each Lab process does under a plain JupyterHub."""
        found = self._cpu_folder()
        if found is None:
            return
        folder, mount = found
        with SIBLINGS:
            self._weigh(folder, mount)

    def _weigh(self, folder: Path, mount: Path) -> None:
        low, high = self.weight_bounds
        for parent in [p for p in folder.parents if p.is_relative_to(mount) and p != mount]:
            try:
                # A hub's own folder is left out: its weight puts it first among its
                # sessions, it is no share the sessions may claim against the node.
                children = [
                    c for c in parent.iterdir() if c.is_dir() and not c.name.endswith(HUB_SUFFIX)
                ]
            except OSError:  # removed meanwhile (its last session went)
                continue
            total = sum(int(_read(c / self.weight_file).strip() or 0) for c in children)
            if total:
                _write(parent / self.weight_file, str(min(high, max(low, total))))

    def serve_first(self, pid: int = 0) -> bool:
        """Make this the hub's own cgroup (`hub_cgroup`) and move process `pid` (0: the
        caller) into it, with what it starts from then on: the highest CPU weight, no limit.

        Sessions of N cores weigh N processes (`weigh_parents`): 10 sessions of 2 cores
        outweighed a hub at one process's weight 20 to 1, and its event loop waited for a
        CPU while Labs started (bench/load.py). A weight only claims CPU the group asks
        for: the hub (one loop) and its services leave the rest to the sessions. A
        restarted hub finds the same folder (the path comes from its state folder).
        False where the mechanism has no CPU weight (no cpu controller; a systemd scope:
        there the hub's own unit decides)."""
        found = self._cpu_folder()
        if found is None or not found[1].is_dir():
            return False
        folder = _make_folders(found[1], str(found[0].relative_to(found[1])), ours=1)
        self._hand_down_controllers(folder)
        weighed = _write(folder / self.weight_file, str(self.weight_bounds[1]))
        return _write(folder / "cgroup.procs", str(pid or os.getpid())) and weighed

    def _hand_down_controllers(self, folder: Path) -> None:
        """What the folders above `folder` must do before it has controllers (v2)."""

    def _cpus_taken(self, cpuset_folder: Path) -> list[list[int]]:
        """The cpusets of this hub's other sessions (siblings of this cgroup)."""
        siblings = [d for d in cpuset_folder.parent.iterdir() if d.is_dir() and d != cpuset_folder]
        return [parse_cpus(_read(d / "cpuset.cpus")) for d in siblings]


class CgroupV1(SessionCgroup):
    """cgroup v1: one hierarchy per controller (/sys/fs/cgroup/memory/..., ...)."""

    kind = "v1"

    def folders(self) -> list[Path]:
        return [self.root / c / self.path for c in V1_CONTROLLERS if (self.root / c).is_dir()]

    def _at(self, controller: str) -> Path | None:
        mount = self.root / controller
        return mount / self.path if mount.is_dir() else None

    weight_file, weight_bounds = "cpu.shares", (2, 262144)

    def _cpu_folder(self) -> tuple[Path, Path] | None:
        folder = self._at("cpu")
        return (folder, self.root / "cpu") if folder is not None else None

    def create(self, limits: SessionLimits) -> list[str]:
        left_out = []
        for controller in V1_CONTROLLERS:
            if (self.root / controller).is_dir():
                _make_folders(self.root / controller, self.path)
        cpuset = self._at("cpuset")
        if cpuset is None or not self._fill_cpuset(cpuset, limits.cores):
            left_out.append("cpuset (nproc shows the machine's CPUs)")
        cpu = self._at("cpu")
        quota = str(int(limits.cores * CFS_PERIOD_US))
        if not (
            cpu
            and _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            and _write(cpu / "cpu.cfs_quota_us", quota)
        ):
            left_out.append("CPU quota")
        elif not _write(cpu / "cpu.shares", str(max(2, int(limits.cores * 1024)))):
            left_out.append("CPU weight")
        else:
            self.weigh_parents()
        memory = self._at("memory")
        if not (memory and _write(memory / "memory.limit_in_bytes", str(limits.memory))):
            left_out.append("memory limit")
        elif (memory / "memory.memsw.limit_in_bytes").exists():
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory))  # no swap past it
        pids = self._at("pids")
        if not (pids and _write(pids / "pids.max", str(limits.pids))):
            left_out.append("pids limit")
        devices = self._at("devices")
        if limits.denied_devices:
            if devices is None:
                left_out.append("GPU devices")
            for rule in limits.denied_devices if devices else ():
                _write(devices / "devices.deny", f"{rule} rwm")
        return left_out

    def _fill_cpuset(self, folder: Path, cores: float) -> bool:
        # A v1 cpuset is empty when made: every folder down to ours needs cpus and mems.
        mount = self.root / "cpuset"
        chain = [folder, *[p for p in folder.parents if p.is_relative_to(mount) and p != mount]]
        for f in reversed(chain[1:]):
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not _read(f / name).strip():
                    _write(f / name, _read(f.parent / name).strip())
        available = parse_cpus(_read(folder.parent / "cpuset.cpus"))
        if not available:
            return False
        _write(folder / "cpuset.mems", _read(folder.parent / "cpuset.mems").strip())
        with SIBLINGS:
            cpus = pick_cpus(math.ceil(cores), available, self._cpus_taken(folder))
            return _write(folder / "cpuset.cpus", format_cpus(cpus))

    def kill(self) -> None:
        # Freeze first, so nothing forks between reading the list and the kill.
        freezer = self._at("freezer")
        frozen = freezer is not None and _write(freezer / "freezer.state", "FROZEN")
        try:
            self._kill_all()
        finally:
            if frozen:
                _write(freezer / "freezer.state", "THAWED")  # SIGKILL lands once thawed

    def oom_kills(self) -> int:
        memory = self._at("memory")
        return _field(_read(memory / "memory.oom_control"), "oom_kill") if memory else 0

    def cpu_seconds(self) -> float:
        cpuacct = self._at("cpuacct")
        usage = _read(cpuacct / "cpuacct.usage").strip() if cpuacct else ""
        return int(usage) / 1e9 if usage else 0.0


class CgroupV2(SessionCgroup):
    """cgroup v2: one folder in the unified hierarchy, controllers enabled from above."""

    kind = "v2"

    def folders(self) -> list[Path]:
        return [self.root / self.path]

    weight_file, weight_bounds = "cpu.weight", (1, 10000)

    def _cpu_folder(self) -> tuple[Path, Path] | None:
        return self.root / self.path, self.root

    def create(self, limits: SessionLimits) -> list[str]:
        folder = _make_folders(self.root, self.path)
        self._enable_controllers(folder)
        left_out = []
        if not self._fill_cpuset(folder, limits.cores):
            left_out.append("cpuset (nproc shows the machine's CPUs)")
        if not _write(folder / "cpu.max", f"{int(limits.cores * CFS_PERIOD_US)} {CFS_PERIOD_US}"):
            left_out.append("CPU quota")
        elif not _write(folder / "cpu.weight", str(min(10000, max(1, int(limits.cores * 100))))):
            left_out.append("CPU weight")
        else:
            self.weigh_parents()
        if not _write(folder / "memory.max", str(limits.memory)):
            left_out.append("memory limit")
        else:
            _write(folder / "memory.swap.max", "0")
        if not _write(folder / "pids.max", str(limits.pids)):
            left_out.append("pids limit")
        if limits.denied_devices:
            left_out.append("GPU devices (cgroup v2 needs eBPF: device files' modes only)")
        return left_out

    def _hand_down_controllers(self, folder: Path) -> None:
        self._enable_controllers(folder)

    def _enable_controllers(self, folder: Path) -> None:
        # Each folder above ours hands its controllers down (cgroup.subtree_control).
        above = [p for p in folder.parents if p.is_relative_to(self.root)]
        for f in reversed(above):
            offered = _read(f / "cgroup.controllers").split()
            wanted = [c for c in V2_CONTROLLERS if c in offered]
            if wanted:
                try:
                    _write(f / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
                except OSError as e:  # e.g. a folder with processes of its own
                    log.warning("cgroup controllers not enabled in %s: %s", f, e)

    def _fill_cpuset(self, folder: Path, cores: float) -> bool:
        available = parse_cpus(_read(folder.parent / "cpuset.cpus.effective"))
        if not available or not (folder / "cpuset.cpus").exists():
            return False
        with SIBLINGS:
            cpus = pick_cpus(math.ceil(cores), available, self._cpus_taken(folder))
            return _write(folder / "cpuset.cpus", format_cpus(cpus))

    def kill(self) -> None:
        if not _write(self.root / self.path / "cgroup.kill", "1"):  # Linux >= 5.14
            self._kill_all()

    def oom_kills(self) -> int:
        return _field(_read(self.root / self.path / "memory.events"), "oom_kill")

    def cpu_seconds(self) -> float:
        return _field(_read(self.root / self.path / "cpu.stat"), "usage_usec") / 1e6


def _field(text: str, name: str) -> int:
    """A number from a cgroup 'key value' file (memory.events, cpu.stat, oom_control)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


# The driver's nodes CUDA opens besides the GPU's own (allowed to every session).
NVIDIA_CONTROL_FILES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


class SystemdScope(SessionCgroup):
    """Where systemd runs (PID 1) it owns the cgroup tree: each session is a transient
    scope, `systemd-run --scope` in front of the session's command, its limits as unit
    properties. systemd writes the cgroup files and, for DeviceAllow=, attaches the eBPF
    device program cgroup v2 needs. The hub reads the scope's cgroup (processes, CPU time,
    OOM kills) like any other, and finds it again after a restart by its unit name.

    `path` is the same as the others' ('shangzhuang/<hub id>/alice.lab'): the folders above
    the session become one slice (shangzhuang-<hub id>.slice), the session the scope
    shangzhuang-<hub id>-alice.lab.scope in it."""

    kind = "systemd"

    def __init__(self, path: str, root: Path = CGROUP_ROOT):
        super().__init__(path, root)
        *above, session = self.path.split("/")
        # "-" nests slices: a dash inside a folder's name must not start a new level.
        parts = [p.replace("-", "_") for p in above] or ["shangzhuang"]
        self.slice = "-".join(parts) + ".slice"
        self.unit = f"{'-'.join(parts)}-{session}.scope"
        slices = ["-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))]
        folder = "/".join([*slices, self.unit])
        layout = "v2" if (self.root / "cgroup.controllers").exists() else "v1"
        self.files = KINDS[layout](folder, self.root)  # the cgroup systemd makes for it
        self.limits: SessionLimits | None = None

    def folders(self) -> list[Path]:
        return self.files.folders()

    def create(self, limits: SessionLimits) -> list[str]:
        """Nothing to write: `command` hands the limits to systemd, which starts the scope."""
        self.limits = limits
        return []

    def command(self, uid: int, gid: int) -> list[str]:
        """`systemd-run` to put in front of the session's command: it makes the scope,
        becomes uid:gid and execs the command (so the session's pid stays the same)."""
        limits = self.limits
        assert limits is not None, "create() first"
        cpus = self._pick_cpus(limits.cores)
        properties = [
            f"CPUQuota={round(limits.cores * 100)}%",
            f"CPUWeight={min(10000, max(1, int(limits.cores * 100)))}",
            *([f"AllowedCPUs={format_cpus(cpus)}"] if cpus else []),
            f"MemoryMax={limits.memory}",
            "MemorySwapMax=0",
            f"TasksMax={limits.pids}",
            # closed: the standard pseudo devices (/dev/null, ptys...) and what is listed.
            "DevicePolicy=closed",
            *[f"DeviceAllow={f} rw" for f in (*NVIDIA_CONTROL_FILES, *limits.gpu_files)],
        ]
        return [
            shutil.which("systemd-run") or "systemd-run",
            "--scope", "--quiet", f"--unit={self.unit}", f"--slice={self.slice}",
            f"--uid={uid}", f"--gid={gid}",
            *[a for p in properties for a in ("-p", p)],
            "--",
        ]  # fmt: skip

    def _pick_cpus(self, cores: float) -> list[int]:
        # As on the cgroup file system: the CPUs least used by the hub's other sessions.
        folder = self.files.folders()[0] if self.files.kind == "v2" else None
        if folder is None or not folder.parent.is_dir():
            return pick_cpus(math.ceil(cores), sorted(os.sched_getaffinity(0)), [])
        available = parse_cpus(_read(folder.parent / "cpuset.cpus.effective"))
        available = available or sorted(os.sched_getaffinity(0))
        return pick_cpus(math.ceil(cores), available, self._cpus_taken(folder))

    def join(self, pid: int = 0) -> None:
        """Nothing: systemd-run puts the session in its scope."""

    def kill(self) -> None:
        subprocess.run(
            [shutil.which("systemctl") or "systemctl", "kill", "--signal=SIGKILL", self.unit],
            capture_output=True, timeout=30,
        )  # fmt: skip
        self.files.kill()  # what systemd did not reach (a unit it no longer knows)

    def rmdir(self) -> None:
        # An empty scope goes by itself; stop says so in case it lingers (failed, say).
        subprocess.run(
            [shutil.which("systemctl") or "systemctl", "stop", self.unit],
            capture_output=True, timeout=30,
        )  # fmt: skip

    def oom_kills(self) -> int:
        return self.files.oom_kills()

    def cpu_seconds(self) -> float:
        return self.files.cpu_seconds()


KINDS = {c.kind: c for c in (CgroupV1, CgroupV2, SystemdScope)}


def detect(root: Path = CGROUP_ROOT) -> str:
    """How this machine's sessions are contained: 'systemd' (systemd is PID 1), else the
    cgroup layout: 'v2' (unified at the root), 'v1', or '' (none)."""
    if SYSTEMD.exists() and ((root / "cgroup.controllers").exists() or (root / "memory").is_dir()):
        return "systemd"
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "memory" / "cgroup.procs").exists():
        return "v1"
    return ""


def session_cgroup(kind: str, path: str, root: Path = CGROUP_ROOT) -> SessionCgroup:
    """The session cgroup of that kind (as kept in a spawner's state)."""
    return KINDS[kind](path, root)


# --- dashboards: each session's block of loopback ports, for its own Unix account only ---
# Dask dashboards have no login of their own, and anything on 127.0.0.1 is reachable by
# every account on the machine. So each isolated session gets a block of ports for its
# dashboards (SHANGZHUANG_DASHBOARD_PORTS; `shangzhuang.cluster` binds there), and an
# iptables rule refuses connections to that block from every other account. The session
# itself reaches them: jupyter-server-proxy runs in its Lab, as its account.
DASHBOARD_PORTS = range(61000, 65536)  # above Linux's ephemeral ports (32768-60999)
DASHBOARD_BLOCK = 8  # dashboards one session may serve at once
PORTS_LOCK = Path("/run/lock/shangzhuang-dashboard-ports.lock")  # shared by all hubs here
CHAIN_PREFIX = "SHANGZHUANG-"


def firewall_chain(state_dir: Path | str) -> str:
    """The iptables chain of one hub's sessions' rules (28 characters at most)."""
    return CHAIN_PREFIX + hub_id(state_dir)


def iptables_works() -> bool:
    """Whether this process can change iptables rules (root, and iptables installed)."""
    if os.geteuid() != 0 or not shutil.which("iptables"):
        return False
    return _iptables("-S", "OUTPUT", check=False).returncode == 0


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # -w: wait for the xtables lock that another hub (or Docker, or fail2ban) may hold.
    return subprocess.run(
        ["iptables", "-w", "10", *args], capture_output=True, text=True, check=check, timeout=30
    )


class DashboardFirewall:
    """One hub's chain of rules, each keeping a session's dashboard ports to its owner.

    The chain hangs off OUTPUT (packets a local process sends, to 127.0.0.1 included) while
    it has rules, and goes when the last session's rule does. Only a connection's first
    packet (SYN) is judged: it always belongs to the connecting process's socket."""

    def __init__(self, chain: str):
        self.chain = chain

    def rule(self, ports: range, uid: int) -> list[str]:
        return [
            "-o", "lo", "-p", "tcp", "--syn", "--dport", f"{ports.start}:{ports.stop - 1}",
            "-m", "owner", "!", "--uid-owner", str(uid),
            "-j", "REJECT", "--reject-with", "tcp-reset",
        ]  # fmt: skip

    def reserve(self, uid: int) -> range:
        """A free block of dashboard ports, kept to `uid` from now on."""
        with ports_lock():  # no two hubs (or Slurm prologs) pick the same block at once
            taken = reserved_ports()
            for start in range(DASHBOARD_PORTS.start, DASHBOARD_PORTS.stop, DASHBOARD_BLOCK):
                block = range(start, min(start + DASHBOARD_BLOCK, DASHBOARD_PORTS.stop))
                if not taken.intersection(block):
                    self.keep(block, uid)
                    return block
        raise RuntimeError(f"every dashboard port ({DASHBOARD_PORTS}) is reserved")

    def keep(self, ports: range, uid: int) -> None:
        """Refuse connections to `ports` from every account but `uid` (again after a
        restart or a reboot: adding a rule that is there already changes nothing)."""
        if _iptables("-S", self.chain, check=False).returncode != 0:
            _iptables("-N", self.chain)
        if _iptables("-C", "OUTPUT", "-j", self.chain, check=False).returncode != 0:
            _iptables("-I", "OUTPUT", "-j", self.chain)
        if _iptables("-C", self.chain, *self.rule(ports, uid), check=False).returncode != 0:
            _iptables("-A", self.chain, *self.rule(ports, uid))

    def release(self, ports: range, uid: int) -> None:
        """Drop the session's rule; the chain too once it is empty."""
        with ports_lock():  # the chain is not dropped while another process adds to it
            _iptables("-D", self.chain, *self.rule(ports, uid), check=False)
            listed = _iptables("-S", self.chain, check=False)
            if listed.returncode == 0 and not listed.stdout.strip().splitlines()[1:]:
                _iptables("-D", "OUTPUT", "-j", self.chain, check=False)
                _iptables("-X", self.chain, check=False)


@contextlib.contextmanager
def ports_lock():
    """Held while a block is picked or a rule dropped, by every hub and prolog here."""
    PORTS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(PORTS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def reserved_ports() -> set[int]:
    """Dashboard ports some hub on this machine has given a session (from every chain)."""
    ports: set[int] = set()
    for line in _iptables("-S", check=False).stdout.splitlines():
        if line.startswith(f"-A {CHAIN_PREFIX}") and (m := re.search(r"--dport (\d+):(\d+)", line)):
            ports.update(range(int(m.group(1)), int(m.group(2)) + 1))
    return ports


# --- the same for Slurm sessions: run by slurmd as root on each node ----------------------
# A Lab session on the `slurm` backend is a Slurm job (SlurmSpawner marks it with the job
# comment LAB_JOB_COMMENT); its dashboards listen on its node's 127.0.0.1. The site's
# Prolog (hub_config/examples/dashboard-prolog.sh) calls `slurm-prolog`: a block of ports
# kept to the job's owner by a rule in the chain SLURM_CHAIN, written to SLURM_DASHBOARDS/
# JOBID (readable by the owner only); the TaskProlog (dashboard-task-prolog.sh) exports it
# to the job as SHANGZHUANG_DASHBOARD_PORTS; the Epilog calls `slurm-epilog`: rule and
# file go.
LAB_JOB_COMMENT = "shangzhuang-lab"
SLURM_CHAIN = CHAIN_PREFIX + "SLURM"
SLURM_DASHBOARDS = Path("/run/shangzhuang/dashboards")


def slurm_prolog(job: str, uid: int, folder: Path = SLURM_DASHBOARDS) -> range:
    """Reserve a block of dashboard ports for Slurm job `job` of account `uid`."""
    slurm_epilog(job, folder)  # a requeued job whose last epilog did not run
    ports = DashboardFirewall(SLURM_CHAIN).reserve(uid)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the owner's TaskProlog reads its own file in it
    kept = folder / f".{job}.new"
    kept.write_text(f"{ports.start}-{ports.stop - 1}\n")
    os.chown(kept, uid, -1)
    kept.chmod(0o400)
    kept.rename(folder / job)
    return ports


def slurm_epilog(job: str, folder: Path = SLURM_DASHBOARDS) -> None:
    """Give back job `job`'s block (nothing when it had none)."""
    kept = folder / job
    try:
        first, _, last = kept.read_text().strip().partition("-")
        uid = kept.stat().st_uid
    except FileNotFoundError:
        return
    DashboardFirewall(SLURM_CHAIN).release(range(int(first), int(last) + 1), uid)
    kept.unlink()


def main(argv: list[str] | None = None) -> int:
    """`python -m shangzhuang.hub.containment slurm-prolog|slurm-epilog [--folder F]`,
    from slurmd's Prolog/Epilog (SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_COMMENT)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shangzhuang.hub.containment")
    parser.add_argument("step", choices=["slurm-prolog", "slurm-epilog"])
    parser.add_argument(
        "--folder",
        type=Path,
        default=SLURM_DASHBOARDS,
        help="where each Lab job's block is written (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    job = os.environ["SLURM_JOB_ID"]
    if args.step == "slurm-epilog":
        slurm_epilog(job, args.folder)
    elif os.environ.get("SLURM_JOB_COMMENT") == LAB_JOB_COMMENT:
        ports = slurm_prolog(job, int(os.environ["SLURM_JOB_UID"]), args.folder)
        print(f"job {job}: dashboard ports {ports.start}-{ports.stop - 1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
