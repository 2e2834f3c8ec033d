"""A real Slurm on this one machine, for tests: Debian's slurmctld, two slurmd and munge.

Two virtual nodes (c1, c2), each with 4 CPUs and 2 fake GPUs: real character devices
made with mknod (Slurm hands out gres only for device files), which no CUDA will ever
open. See ../shared/notes/slurm.md for the facts this relies on.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]


def install() -> None:
    """Install Slurm and munge from Debian's packages if they are missing."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*APT, "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*APT, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env
    )


def _free_range(n: int) -> int:
    """A base port with n free ports after it."""
    for _ in range(200):
        base = random.randint(20000, 40000)
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

    def __init__(self):
        self.run = Path(tempfile.mkdtemp(prefix="sz-slurm-"))
        self.run.chmod(0o755)
        self.conf = self.run / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.munged: subprocess.Popen | None = None

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        base = _free_range(len(self.nodes) + 1)
        ctld, first = base, base + 1
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
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory,CR_LLN
DefMemPerCPU=500
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
{node_line}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.run / "gres.conf").write_text("\n".join(gres) + "\n")

    def start(self, timeout: float = 60) -> None:
        install()
        self.write_config()
        self._start_munge()
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
        # Orphaned job steps of this Slurm (slurmstepd) must not outlive it.
        subprocess.run(["pkill", "-f", f"slurmstepd.*{self.run}"], check=False)
        shutil.rmtree(self.run, ignore_errors=True)
