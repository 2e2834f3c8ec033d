"""Where GPU sessions' utilisation is read, by the platform, never by the session.

- `NodeGpus`: the local backend. The quota service runs on the node as the platform and
  reads NVML (`pynvml`, the nvidia-ml-py package) for the GPUs the hub's pool gave each
  session. Which GPUs those are comes from the hub API's server `state` (the spawner's own
  record, `"gpus"`: pool indices; the quota service's role has `admin:server_state` to read
  it). A user's `user_options` come from the user, so they are never trusted for this.
  A pool GPU is found in NVML by its UUID when the config gives one, else by its index
  (NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES).
- `parse_sstat`: the Slurm backend. Slurm's own GPU accounting, read with `sstat` by the
  quota service (sources.SlurmJobs.utilisation): TRESUsageInAve's `gres/gpuutil` (%) and
  `gres/gpumem`, which Slurm's step daemons fill from NVML, only with
  AccountingStorageTRES=gres/gpuutil,gres/gpumem and the gpu/nvml plugin on the nodes
  (AutoDetect=nvml in gres.conf); its lines hold no field a job's owner sets.

Each reading is `(percent, memory_mib)`: the mean utilisation of the session's GPUs and the
GPU memory they use (None where unknown).
"""

from __future__ import annotations

import logging
import math
import re

log = logging.getLogger(__name__)

Reading = tuple[float, float | None]


class NodeGpus:
    """This node's GPUs as NVML reports them, for the pool indices the hub hands out."""

    def __init__(self, gpus: list):
        self.gpus = {g.index: g for g in gpus}  # hub.gpus.Gpu, as the hub's pool has them
        self.nvml = None  # the pynvml module once initialised; False: unavailable
        self._handles: dict[int, object] = {}

    def _start(self) -> bool:
        if self.nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
            except Exception as e:  # no library, no driver: nothing to read on this node
                log.warning("NVML unavailable (%s): GPU utilisation is not recorded", e)
                self.nvml = False
        return bool(self.nvml)

    def _handle(self, index: int):
        if index not in self._handles:
            gpu = self.gpus.get(index)
            if gpu is None:
                raise KeyError(f"GPU {index} is not in backend.local.gpus")
            nvml = self.nvml
            self._handles[index] = (
                nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
                if gpu.uuid
                else nvml.nvmlDeviceGetHandleByIndex(index)
            )
        return self._handles[index]

    def read(self, sessions: dict[str, list[int]]) -> dict[str, Reading]:
        """Each session's reading, from its GPUs' (pool indices); each GPU read once."""
        if not sessions or not self._start():
            return {}
        nvml = self.nvml
        per_gpu: dict[int, Reading | None] = {}
        for index in sorted({i for held in sessions.values() for i in held}):
            try:
                handle = self._handle(index)
                percent = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                per_gpu[index] = (percent, memory)
            except Exception as e:  # one GPU fallen off the bus: its sessions go unread
                log.warning("could not read GPU %s with NVML: %s", index, e)
                self._handles.pop(index, None)
                per_gpu[index] = None
        out = {}
        for consumer, held in sessions.items():
            readings = [per_gpu[i] for i in held]
            if not readings or None in readings:
                continue
            out[consumer] = (
                sum(p for p, _ in readings) / len(readings),
                sum(m for _, m in readings),
            )
        return out


# sstat's `-a -n -P -o JobID,TRESUsageInAve` lines: `123.batch|cpu=00:01:00,gres/gpuutil=35,...`
_STEP = re.compile(r"^(\d+)(?:\.[\w+-]+)?$")
_UNITS = {"": 1 / 2**20, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}


def parse_sstat(out: str) -> dict[str, Reading]:
    """GPU readings per job id from sstat's TRESUsageInAve: the busiest step of each job
    (the one that runs the session's work), capped at 100%."""
    jobs: dict[str, Reading] = {}
    for line in out.splitlines():
        job_step, _, tres = line.partition("|")
        m = _STEP.match(job_step.strip())
        if not m:
            continue
        items = dict(i.split("=", 1) for i in tres.strip().rstrip("|").split(",") if "=" in i)
        if "gres/gpuutil" not in items:
            continue
        try:
            percent = float(items["gres/gpuutil"])
        except ValueError:
            continue
        if not math.isfinite(percent):  # a GPU Slurm can't read reports "inf": unknown
            continue
        percent = min(100.0, percent)
        memory = _mib(items.get("gres/gpumem", ""))
        if percent >= jobs.get(m[1], (-1.0, None))[0]:
            jobs[m[1]] = (percent, memory)
    return jobs


def _mib(text: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", text)  # bytes without a unit
    return float(m[1]) * _UNITS[m[2]] if m else None
