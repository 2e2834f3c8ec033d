"""Dask for notebooks: one call that gives the right cluster on this site.

    from shangzhuang.cluster import cluster
    c = cluster(workers=4, gpus_per_worker=1)   # SLURMCluster on Slurm, LocalCluster locally
    client = c.get_client()

Every cluster speaks TLS with the session's own certificates (`shangzhuang.session`),
so only its owner's session can connect, and serves its dashboard on 127.0.0.1 only, for
jupyter-server-proxy under the session's own URL: on a port of the block the hub keeps to
the session's Unix account (SHANGZHUANG_DASHBOARD_PORTS, see hub/containment.py), where
there is one. Slurm workers serve no dashboard (the scheduler's shows them). On the
`slurm` backend the site's settings reach sessions as Dask config (DASK_JOBQUEUE__SLURM__*
variables set by the hub);
every way a `WorkbenchCluster` grows (scale by workers, jobs, cores or memory; adapt;
dask-labextension's buttons, which call those) passes one quota rule, `check_growth`.
"""

from __future__ import annotations

import math
import os
import socket

import dask
from dask.utils import parse_bytes
from dask_jobqueue import SLURMCluster
from distributed.security import Security

__all__ = ["QuotaExceeded", "WorkbenchCluster", "cluster", "session_security"]

# Dashboards for jupyter-server-proxy only: never on an address other machines reach.
DASHBOARD_ADDRESS = "127.0.0.1:0"


def dashboard_ports() -> range | None:
    """The ports the hub keeps to this session's account for its dashboards, if any."""
    first, _, last = os.environ.get("SHANGZHUANG_DASHBOARD_PORTS", "").partition("-")
    return range(int(first), int(last or first) + 1) if first else None


def dashboard_address() -> str:
    """Where a new cluster serves its dashboard: the first free port of the session's
    block, else any port on 127.0.0.1 (a site without the block says so on its home page)."""
    ports = dashboard_ports()
    if ports is None:
        return DASHBOARD_ADDRESS
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # another dashboard of this session's
        return f"127.0.0.1:{port}"
    raise RuntimeError(
        f"All {len(ports)} dashboard ports of this session are in use: close a cluster you "
        "no longer need (cluster.close()) and try again."
    )


def check_dashboard(cluster) -> None:
    """Close `cluster` if its dashboard ended up outside the session's block: distributed
    takes any free port when the one asked for was taken meanwhile (with a warning)."""
    ports, server = dashboard_ports(), getattr(cluster.scheduler, "http_server", None)
    if ports is not None and server is not None and server.port not in ports:
        cluster.close()
        raise RuntimeError(
            f"The cluster's dashboard got port {server.port}, outside this session's "
            "dashboard ports, where other users could read it: the cluster was closed; "
            "try again."
        )


class QuotaExceeded(RuntimeError):
    """A scale-up the user's balance can't pay for."""


def backend() -> str:
    return os.environ.get("SHANGZHUANG_BACKEND", "local")


def session_security() -> Security:
    """The session's Dask credentials (made when the session started); outside a workbench
    session, new in-memory ones for this one cluster."""
    security = Security()
    return security if security.tls_ca_file else Security.temporary()


def cluster(workers: int = 1, gpus_per_worker: int = 0, **kwargs):
    """A Dask cluster with `workers` workers, each with `gpus_per_worker` GPUs (Slurm).

    Other keywords go to SLURMCluster (cores, memory, walltime, queue...) on `slurm`, or to
    LocalCluster on `local`, where workers share this session's cores and GPUs.
    dask-labextension's "New cluster" button calls this too (DASK_LABEXTENSION__FACTORY).
    """
    if backend() == "slurm":
        c = WorkbenchCluster(gpus_per_worker=gpus_per_worker, **kwargs)
        try:
            c.scale(workers)
        except QuotaExceeded:
            c.close()
            raise
        return c
    from dask.distributed import LocalCluster

    check_site_limit(workers)
    kwargs.setdefault("threads_per_worker", 1)
    kwargs.setdefault("processes", True)
    kwargs.setdefault("security", session_security())
    kwargs.setdefault("dashboard_address", dashboard_address())
    c = LocalCluster(n_workers=workers, **kwargs)
    check_dashboard(c)
    return c


def check_site_limit(workers: int) -> None:
    limit = int(os.environ.get("SHANGZHUANG_MAX_WORKERS", "0") or 0)
    if limit and workers > limit:
        raise ValueError(
            f"workers={workers} is more than this site allows (cluster.max_workers = {limit})"
        )


class WorkbenchCluster(SLURMCluster):
    """SLURMCluster with GPUs per worker, the session's TLS credentials, and one quota rule
    for every way it grows."""

    def __init__(self, *args, gpus_per_worker: int = 0, **kwargs):
        self.gpus_per_worker = gpus_per_worker
        if gpus_per_worker:
            extra = list(kwargs.pop("job_extra_directives", None) or [])
            kwargs["job_extra_directives"] = [*extra, f"--gres=gpu:{gpus_per_worker}"]
        kwargs.setdefault("security", session_security())
        options = kwargs.pop("scheduler_options", None)
        if options is None:
            options = dask.config.get("jobqueue.slurm.scheduler-options", None) or {}
        # Ours wins over the config's (the hub's says 127.0.0.1:0): the session's block if any.
        kwargs["scheduler_options"] = {**options, "dashboard_address": dashboard_address()}
        # Workers on shared nodes would serve theirs on every interface, to anyone.
        extra = kwargs.pop("worker_extra_args", None)
        if extra is None:
            extra = dask.config.get("jobqueue.slurm.worker-extra-args", None) or []
        if "--no-dashboard" not in extra:
            extra = [*extra, "--no-dashboard"]
        kwargs["worker_extra_args"] = extra
        # dask-jobqueue 0.9.0 makes log_directory as given: a "~" in it (from a user's own
        # jobqueue.yaml, say) became a folder named "~" beside the notebook.
        logs = kwargs.get("log_directory") or dask.config.get("jobqueue.slurm.log-directory")
        if logs:
            kwargs["log_directory"] = os.path.expanduser(logs)
        super().__init__(*args, **kwargs)
        check_dashboard(self)

    # --- growth: every path ends in scale() or adapt() --------------------------------
    # Per job, from the job itself: dask-jobqueue 0.9.0 with distributed 2026.8 reads them
    # from the cluster's keywords only, so scale(cores=...) and scale(memory=...) on a
    # cluster configured by the site failed ("RuntimeError: unreachable", a ValueError).
    @property
    def processes_per_job(self) -> int:
        return self._dummy_job.worker_processes

    @property
    def cores_per_job(self) -> int:
        return self._dummy_job.worker_cores

    @property
    def memory_per_job(self) -> int:
        return self._dummy_job.worker_memory

    def jobs_for(self, n=None, jobs=0, memory=None, cores=None) -> int:
        """How many jobs `n` workers, `jobs` jobs, `memory` or `cores` come to (the most)."""
        target = [jobs or 0]
        if n is not None:
            target.append(math.ceil(n / self.processes_per_job))
        if memory is not None:
            target.append(math.ceil(parse_bytes(memory) / self.memory_per_job))
        if cores is not None:
            target.append(math.ceil(cores / self.cores_per_job))
        return max(target)

    def scale(self, n=None, jobs=0, memory=None, cores=None):
        target = self.jobs_for(n, jobs, memory, cores)
        self.check_growth(target)
        return super().scale(jobs=target)

    def adapt(self, *args, minimum_jobs=None, maximum_jobs=None, **kwargs):
        """Adaptive scaling within what the balance pays for: an explicit maximum beyond
        it is refused; with none, adapt stops at what is affordable now. Each scale-up it
        makes goes through scale() and so is checked again."""
        minimum = self.jobs_for(
            kwargs.pop("minimum", None), minimum_jobs or 0,
            kwargs.pop("minimum_memory", None), kwargs.pop("minimum_cores", None),
        )  # fmt: skip
        caps = [maximum_jobs] if maximum_jobs is not None else []
        if (workers := kwargs.pop("maximum", math.inf)) != math.inf:
            caps.append(math.floor(workers / self.processes_per_job))
        if (cores := kwargs.pop("maximum_cores", None)) is not None:
            caps.append(math.floor(cores / self.cores_per_job))
        if (memory := kwargs.pop("maximum_memory", None)) is not None:
            caps.append(math.floor(parse_bytes(memory) / self.memory_per_job))
        if caps:
            maximum = min(caps)
            self.check_growth(maximum)
        else:
            maximum = self.affordable_jobs()
        self.check_growth(minimum)
        return super().adapt(*args, minimum_jobs=minimum, maximum_jobs=maximum, **kwargs)

    def check_growth(self, target_jobs: int) -> None:
        """The one rule: `target_jobs` jobs in all must be within the site's worker limit,
        and the new ones affordable for the site's minimum time (as a Lab spawn)."""
        check_site_limit(target_jobs * self.processes_per_job)
        self.check_quota(target_jobs - len(self.worker_spec))

    def job_rates(self) -> dict[str, float]:
        """What one worker job burns per hour."""
        return {"gpu_hours": float(self.gpus_per_worker), "cpu_hours": float(self.cores_per_job)}

    def affordable_jobs(self) -> int | None:
        """How many jobs in all the balance pays for now (None: not limited)."""
        answer = self._affords(self.job_rates())
        if answer is None or answer["fits"] is None:
            return None
        return len(self.worker_spec) + answer["fits"]

    def check_quota(self, new_jobs: int) -> None:
        """Refuse `new_jobs` more jobs when the balance can't pay them for the site's
        minimum time: the quota service's rule, the same as starting a Lab session."""
        if new_jobs <= 0:
            return
        rates = {r: new_jobs * v for r, v in self.job_rates().items()}
        answer = self._affords(rates)
        if answer is None or answer["affordable"]:
            return
        cost = " + ".join(f"{v:g} {r}" for r, v in rates.items() if v)
        short = ", ".join(f"{left:.2f} {r} left" for r, left in answer["short"].items())
        resets = answer["resets_at"]
        raise QuotaExceeded(
            f"Not enough quota to add {new_jobs} worker job(s): they cost {cost} per hour "
            f"and need at least {answer['min_minutes']:g} minutes, but you have "
            f"{short} (account {answer['account']}). "
            + (f"Your quota resets at {resets}." if resets else "Ask an admin for a grant.")
        )

    def _affords(self, rates: dict[str, float]) -> dict | None:
        """The quota service's answer for work at RATES (None: this site has no quota)."""
        if not os.environ.get("SHANGZHUANG_QUOTA_URL"):
            return None
        from shangzhuang.quota.client import affords

        return affords(rates)
