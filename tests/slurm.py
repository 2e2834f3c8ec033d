"""A real Slurm on this one machine, for tests: Debian's slurmctld, two slurmd and munge.

Two virtual nodes (c1, c2), each with 4 CPUs and 2 fake GPUs: real character devices
made with mknod (Slurm hands out gres only for device files), which no CUDA will ever
open. See ../shared/notes/slurm.md for the facts this relies on.

`LocalSlurm(accounting=True)` also runs Slurm's accounting: slurmdbd 22.05 on a MariaDB
10.11 of its own (a data folder in the run folder, TCP on 127.0.0.1 only), so `sacct`
answers as on a site. It adds 3.5-7 s to the start and 2 s to the stop (2 busy cores).
Every LocalSlurm runs the shipped hub_config/examples/job_submit.lua (JobSubmitPlugins=lua),
reading the at-zero users from `at_zero_file` beside slurm.conf.
`LocalSlurm(cgroups=True)`: proctrack/cgroup and task/cgroup with the shipped
hub_config/examples/cgroup.conf (cores, memory, devices held inside each job; this host's
cgroup v1 controllers at /sys/fs/cgroup/* serve, without systemd).
`LocalSlurm(dashboards=True)`: the shipped hub_config/examples/dashboard-*.sh as Prolog,
Epilog and TaskProlog (Lab jobs' dashboard ports kept to their owner by iptables; both
nodes are this host, so the rules land in this host's iptables, chain SHANGZHUANG-SLURM).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ports import worker_range

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
EXAMPLES = Path(__file__).resolve().parents[1] / "hub_config/examples"
SHIPPED_CGROUP_CONF = EXAMPLES / "cgroup.conf"
SHIPPED_JOB_SUBMIT = EXAMPLES / "job_submit.lua"
DASHBOARD_SCRIPTS = ("dashboard-prolog.sh", "dashboard-epilog.sh", "dashboard-task-prolog.sh")
# Where the test hub's quota service writes its at-zero users (backend.slurm.at_zero_file,
# tests/integration/hub.py): beside slurm.conf, which the shipped job_submit.lua reads.
AT_ZERO_FILE = "quota-at-zero"


def install() -> None:
    """Install Slurm and munge from Debian's packages if they are missing."""
    if all(
        shutil.which(b)
        for b in ("slurmctld", "slurmd", "sbatch", "munged", "slurmdbd", "mariadb-install-db")
    ):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*APT, "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*APT, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env
    )


def _free_range(n: int) -> int:
    """A base port with n free ports after it, in this pytest worker's range."""
    ports = worker_range()
    for _ in range(200):
        base = random.randint(ports.start, ports.stop - n)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


class LocalSlurm:
    nodes = ("c1", "c2")
    cpus = 4
    memory_mb = 4000
    gpus_per_node = 2

    def __init__(self, accounting: bool = False, cgroups: bool = False, dashboards: bool = False):
        self.accounting = accounting
        self.cgroups = cgroups
        self.dashboards = dashboards
        self.run = Path(tempfile.mkdtemp(prefix="sz-slurm-"))
        self.run.chmod(0o755)
        self.conf = self.run / "slurm.conf"
        self.at_zero_file = self.run / AT_ZERO_FILE
        self.procs: list[subprocess.Popen] = []
        self.munged: subprocess.Popen | None = None
        self.dbd: list[subprocess.Popen] = []  # mariadbd, slurmdbd (stopped after the rest)

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        base = _free_range(len(self.nodes) + 3)
        ctld, first = base, base + 1
        self.dbd_port, self.mysql_port = base + len(self.nodes) + 1, base + len(self.nodes) + 2
        last = first + len(self.nodes) - 1
        (self.run / "state").mkdir()
        gres = []
        for i, node in enumerate(self.nodes):
            dev = self.run / "dev" / node
            dev.mkdir(parents=True)
            for g in range(self.gpus_per_node):
                path = dev / f"nvidia{g}"
                subprocess.run(["mknod", str(path), "c", "195", str(i * 10 + g)], check=True)
                path.chmod(0o666)
            gres.append(f"NodeName={node} Name=gpu File={dev}/nvidia[0-{self.gpus_per_node - 1}]")
            (self.run / "spool" / node).mkdir(parents=True)
        names = f"c[1-{len(self.nodes)}]"
        node_line = (
            f"NodeName={names} NodeHostname=localhost NodeAddr=127.0.0.1 Port=[{first}-{last}]"
            f" CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus_per_node}"
            " State=UNKNOWN"
        )
        self.conf.write_text(
            f"""ClusterName=shangzhuang-test
SlurmctldHost=localhost
SlurmctldPort={ctld}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={self.run}/state
SlurmdSpoolDir={self.run}/spool/%n
SlurmctldPidFile={self.run}/slurmctld.pid
SlurmdPidFile={self.run}/slurmd-%n.pid
SlurmctldLogFile={self.run}/slurmctld.log
SlurmdLogFile={self.run}/slurmd-%n.log
{self._containment_lines()}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory,CR_LLN
DefMemPerCPU=500
{self._accounting_lines()}
{self._dashboard_lines()}
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobSubmitPlugins=lua
GresTypes=gpu
{node_line}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.run / "gres.conf").write_text("\n".join(gres) + "\n")
        # slurmctld reads job_submit.lua from slurm.conf's folder; the site sets its path.
        lua = SHIPPED_JOB_SUBMIT.read_text()
        site_path = 'local AT_ZERO_FILE = "/var/lib/shangzhuang/slurm-at-zero"'
        assert site_path in lua, "job_submit.lua's AT_ZERO_FILE line changed"
        (self.run / "job_submit.lua").write_text(
            lua.replace(site_path, f'local AT_ZERO_FILE = "{self.at_zero_file}"')
        )

    def _containment_lines(self) -> str:
        if not self.cgroups:
            return "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none"
        # The cgroup.conf a site ships (read from SLURM_CONF's folder by every slurmd).
        shutil.copy(SHIPPED_CGROUP_CONF, self.run / "cgroup.conf")
        return "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup"

    def _dashboard_lines(self) -> str:
        if not self.dashboards:
            return ""
        # The shipped scripts with this run's Python and a folder of this Slurm's own
        # (job ids of two test Slurms on this host repeat).
        for name in DASHBOARD_SCRIPTS:
            text = (EXAMPLES / name).read_text()
            for site, here in [
                ("PYTHON=/opt/shangzhuang/bin/python3", f"PYTHON={sys.executable}"),
                ("DASHBOARDS=/run/shangzhuang/dashboards", f"DASHBOARDS={self.dashboard_folder}"),
            ]:
                text = text.replace(site, here)
            (self.run / name).write_text(text)
            (self.run / name).chmod(0o755)
        prolog, epilog, task = (self.run / name for name in DASHBOARD_SCRIPTS)
        return f"Prolog={prolog}\nEpilog={epilog}\nTaskProlog={task}"

    @property
    def dashboard_folder(self) -> Path:
        return self.run / "dashboards"

    def _accounting_lines(self) -> str:
        if not self.accounting:
            return "AccountingStorageType=accounting_storage/none"
        # gres/gpu in AccountingStorageTRES: else sacct's AllocTRES has no GPUs.
        return (
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=localhost\nAccountingStoragePort={self.dbd_port}\n"
            "AccountingStorageTRES=gres/gpu\nJobCompType=jobcomp/none"
        )

    def start(self, timeout: float = 60) -> None:
        install()
        self.write_config()
        self._start_munge()
        if self.accounting:
            self._start_accounting(timeout)
        self.procs.append(
            subprocess.Popen(["slurmctld", "-D", "-f", str(self.conf)], env=self.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )  # fmt: skip
        for node in self.nodes:
            self.procs.append(
                subprocess.Popen(["slurmd", "-D", "-f", str(self.conf), "-N", node], env=self.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.cmd("sinfo", "-h", "-t", "idle", "-o", "%D", check=False)
            if out.strip() and int(out.split()[0]) == len(self.nodes):
                return
            time.sleep(0.3)
        raise TimeoutError(f"Slurm nodes not idle in {timeout}s:\n{self.log_tail()}")

    def _start_accounting(self, timeout: float) -> None:
        """MariaDB (its own data folder and port), then slurmdbd, then the cluster's record."""
        data, sock = self.run / "mysql", self.run / "mysql.sock"
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.dbd.append(
            subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
                 f"--socket={sock}", f"--port={self.mysql_port}", "--bind-address=127.0.0.1",
                 f"--pid-file={self.run}/mysql.pid", f"--log-error={self.run}/mariadb.log",
                 "--innodb-buffer-pool-size=32M", "--skip-log-bin"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        self._wait(
            lambda: subprocess.run(
                ["mariadb", f"--socket={sock}", "-uroot", "-e", "SELECT 1"], capture_output=True
            ).returncode == 0,
            timeout, "MariaDB up",
        )  # fmt: skip
        dbd_conf = self.run / "slurmdbd.conf"
        dbd_conf.write_text(
            f"""AuthType=auth/munge
DbdHost=localhost
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={self.run}/slurmdbd.log
PidFile={self.run}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.mysql_port}
StorageUser=root
StorageLoc=slurm_acct_db
"""
        )
        dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read
        self.dbd.append(
            # slurmdbd reads slurmdbd.conf from SLURM_CONF's folder
            subprocess.Popen(["slurmdbd", "-D"], env=self.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )  # fmt: skip
        self._wait(
            lambda: subprocess.run(
                ["sacctmgr", "-i", "add", "cluster", "shangzhuang-test"], env=self.env,
                capture_output=True,
            ).returncode == 0,
            timeout, "slurmdbd up",
        )  # fmt: skip

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"{what}: not in {timeout}s:\n{self.log_tail()}")

    def _start_munge(self) -> None:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return  # one munged serves every Slurm on the machine
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "-c", "-f"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)

    def cmd(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr}")
        return done.stdout

    def jobs(self) -> list[dict]:
        """Every job as a dict of id, user, state, reason, nodes, gpus (its environment's)."""
        out = self.cmd("squeue", "-h", "-o", "%i|%u|%T|%r|%N|%j")
        keys = ("id", "user", "state", "reason", "nodes", "name")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines()]

    def log_tail(self, n: int = 30) -> str:
        logs = sorted(self.run.glob("*.log"))
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:])
            for p in logs
        )

    def stop_ctld(self) -> None:
        """Stop slurmctld only (to test what happens when the controller is down)."""
        ctld = self.procs[0]
        ctld.terminate()
        ctld.wait(30)

    def stop(self) -> None:
        """Cancel every job, wait for them to end, stop the daemons (munged stays)."""
        if self.procs and self.procs[0].poll() is None:
            self.cmd("scancel", "--full", "--state=RUNNING", check=False)
            self.cmd("scancel", "--state=PENDING", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.cmd("squeue", "-h", check=False).strip():
                time.sleep(0.3)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for p in reversed(self.dbd):  # slurmdbd, then MariaDB
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # Orphaned job steps of this Slurm (slurmstepd) must not outlive it.
        subprocess.run(["pkill", "-f", f"slurmstepd.*{self.run}"], check=False)
        if self.dashboard_folder.is_dir():  # rules whose Epilog did not run (a killed slurmd)
            from shangzhuang.hub.containment import slurm_epilog

            for left in self.dashboard_folder.iterdir():
                if not left.name.startswith("."):
                    slurm_epilog(left.name, self.dashboard_folder)
        shutil.rmtree(self.run, ignore_errors=True)
