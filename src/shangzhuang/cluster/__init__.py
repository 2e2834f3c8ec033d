"""Dask for notebooks: one call that gives the right cluster on this site.

    from shangzhuang.cluster import cluster
    c = cluster(workers=4, gpus_per_worker=1)   # SLURMCluster on Slurm, LocalCluster locally
    client = c.get_client()

On the `slurm` backend the site's settings reach sessions as Dask config (DASK_JOBQUEUE__
SLURM__* variables set by the hub), so a bare `dask_jobqueue.SLURMCluster()` works too;
`cluster()` adds the GPUs and refuses a scale-up the quota can't pay for, saying why.
"""

from __future__ import annotations

import math
import os

from dask_jobqueue import SLURMCluster

__all__ = ["QuotaExceeded", "WorkbenchCluster", "cluster"]


class QuotaExceeded(RuntimeError):
    """A scale-up the user's balance can't pay for."""


def backend() -> str:
    return os.environ.get("SHANGZHUANG_BACKEND", "local")


def cluster(workers: int = 1, gpus_per_worker: int = 0, **kwargs):
    """A Dask cluster with `workers` workers, each with `gpus_per_worker` GPUs (Slurm).

    Other keywords go to SLURMCluster (cores, memory, walltime, queue...) on `slurm`, or to
    LocalCluster on `local`, where workers share this session's cores and GPUs.
    """
    limit = int(os.environ.get("SHANGZHUANG_MAX_WORKERS", "0") or 0)
    if limit and workers > limit:
        raise ValueError(f"workers={workers} is more than this site allows ({limit})")
    if backend() == "slurm":
        c = WorkbenchCluster(gpus_per_worker=gpus_per_worker, **kwargs)
        c.scale(workers)
        return c
    from dask.distributed import LocalCluster

    kwargs.setdefault("threads_per_worker", 1)
    kwargs.setdefault("processes", True)
    return LocalCluster(n_workers=workers, **kwargs)


class WorkbenchCluster(SLURMCluster):
    """SLURMCluster with GPUs per worker and a quota check on every scale-up.

    dask-labextension's "New cluster" button builds this too (DASK_LABEXTENSION__FACTORY).
    """

    def __init__(self, *args, gpus_per_worker: int = 0, **kwargs):
        self.gpus_per_worker = gpus_per_worker
        if gpus_per_worker:
            extra = list(kwargs.pop("job_extra_directives", None) or [])
            kwargs["job_extra_directives"] = [*extra, f"--gres=gpu:{gpus_per_worker}"]
        super().__init__(*args, **kwargs)

    def scale(self, n=None, jobs=0, memory=None, cores=None):
        if jobs or n is not None:
            procs = self._job_kwargs.get("processes") or 1
            target = jobs or math.ceil(n / procs)
            self.check_quota(target - len(self.worker_spec))
        return super().scale(n=n, jobs=jobs, memory=memory, cores=cores)

    def check_quota(self, new_jobs: int) -> None:
        """Refuse `new_jobs` more jobs when the balance can't pay them for the site's
        minimum time (the same rule as starting a Lab session)."""
        if new_jobs <= 0 or not os.environ.get("SHANGZHUANG_QUOTA_URL"):
            return
        import shangzhuang

        balance = shangzhuang.quota()
        hours = float(os.environ.get("SHANGZHUANG_MIN_MINUTES", "10")) / 60
        cores = float(self._job_kwargs.get("cores") or 1)
        rates = {"gpu_hours": new_jobs * self.gpus_per_worker, "cpu_hours": new_jobs * cores}
        short = []
        for resource, rate in rates.items():
            left = balance["resources"][resource]["remaining"]
            if rate and left is not None and left < rate * hours:
                short.append(f"{left:.2f} {resource} left")
        if not short:
            return
        cost = " + ".join(f"{v:g} {r}" for r, v in rates.items() if v)
        resets = balance["period"]["resets_at"]
        raise QuotaExceeded(
            f"Not enough quota to add {new_jobs} worker job(s): they cost {cost} per hour "
            f"and need at least {hours * 60:g} minutes, but you have "
            f"{', '.join(short)} (account {balance['account']}). "
            + (f"Your quota resets at {resets}." if resets else "Ask an admin for a grant.")
        )
