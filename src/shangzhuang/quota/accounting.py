"""Slurm's accounting as the final word on what a job costs.

The meter samples `squeue` every tick (`SlurmJobs` in sources.py), so that enforcement
sees usage while it happens. Sampling alone misses a job that starts and ends between two
ticks, and is off by up to a tick at each end. So every finished job is read back from
`sacct` (slurmdbd), and `Ledger.settle` makes its charges exactly AllocTRES x (End - Start)
(Slurm's one-second resolution), once: a settled consumer is final, and a second pass over
the same jobs (an overlapping window, a restarted quota service) changes nothing.

Each pass reads the jobs that ended since the last pass (a watermark in the ledger, minus
`slack` for records slurmdbd receives late), so its cost does not grow with the history.

A requeued job runs again under the same JobID: `sacct --duplicates` has one row per run
(the earlier ones REQUEUED), and each run is its own consumer, charged once: the first
run is `job:ID`, a later one `job:ID@START` (`rerun_consumer`), as the meter names it when
squeue's RestartCnt is above 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime

from shangzhuang.quota.consumers import Consumer
from shangzhuang.quota.ledger import Ledger

log = logging.getLogger(__name__)

# What sacct prints per job, in this order. None of these can hold the delimiter: ids,
# Unix names, epoch seconds, TRES lists and states. Job names (which can hold anything,
# newlines too) are never asked for.
SACCT_FIELDS = ("JobIDRaw", "User", "Start", "End", "AllocTRES", "State")
DELIMITER = "|"
# Times as epoch seconds: no time zone to guess.
TIME_ENV = {"SLURM_TIME_FORMAT": "%s"}
# (A REQUEUED row is a run that ended: the job waits to run again, a row of its own.)
NOT_FINISHED = {"PENDING", "RUNNING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD"}
WATERMARK = "slurm-sacct"


@dataclass(frozen=True)
class FinishedJob:
    """A job that ran from `start` to `end` at `rates` (resource -> per hour)."""

    consumer: str
    user: str
    start: float
    end: float
    rates: dict[str, float]


def tres_rates(tres: str) -> dict[str, float]:
    """Cores and GPUs of a whole job from a TRES list ('cpu=2,gres/gpu=2,mem=1G,node=2').

    GPUs are there only where slurm.conf tracks them (AccountingStorageTRES=gres/gpu):
    without, 'gpu_hours' is left out rather than read as 0."""
    items = dict(item.split("=", 1) for item in tres.split(",") if "=" in item)
    rates = {"cpu_hours": float(items.get("cpu", 0))}
    if "gres/gpu" in items:
        rates["gpu_hours"] = float(items["gres/gpu"])
    return rates


def rerun_consumer(consumer: str, start: float) -> str:
    """The consumer of a requeued job's later run (`job:ID` -> `job:ID@START`)."""
    return str(Consumer.job(Consumer.parse(consumer).job_id, start))


def runs(jobs: list[FinishedJob], first_starts: dict[str, float]) -> list[FinishedJob]:
    """Each run of a requeued job as its own consumer: the job's first run keeps `job:ID`,
    a later one gets `rerun_consumer`. The first run is the one the ledger already has as
    `job:ID` (`first_starts`: its start), or else the earliest here."""
    out, first = [], dict(first_starts)
    for job in sorted(jobs, key=lambda j: j.start):
        if first.setdefault(job.consumer, job.start) != job.start:
            job = replace(job, consumer=rerun_consumer(job.consumer, job.start))
        out.append(job)
    return out


def gres_gpus(gres: str) -> int:
    """GPUs in a gres request as squeue prints it: 'gres:gpu:2', 'gres/gpu:a100:2',
    'gpu:1', 'N/A' (several comma-separated)."""
    total = 0
    for item in gres.split(","):
        parts = item.removeprefix("gres:").removeprefix("gres/").split(":")
        if parts[0] == "gpu":
            count = parts[-1].split("(")[0]
            total += int(count) if count.isdigit() else 1
    return total


def parse_sacct(text: str, prefix: str) -> list[FinishedJob]:
    """The finished jobs of workbench users (Unix names starting with `prefix`) in
    `sacct --parsable2 --noheader` output; a line that does not parse is logged and skipped
    alone."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            job = _parse_line(line, prefix)
        except ValueError as e:
            log.warning("sacct line skipped (%s): %r", e, line[:300])
            continue
        if job is not None:
            jobs.append(job)
    return jobs


def _parse_line(line: str, prefix: str) -> FinishedJob | None:
    fields = line.split(DELIMITER)
    if len(fields) != len(SACCT_FIELDS):
        raise ValueError(f"{len(fields)} fields, expected {len(SACCT_FIELDS)}")
    job_id, unix_user, start, end, tres, state = fields
    if not job_id.isdigit():
        raise ValueError(f"job id {job_id!r}")
    if not unix_user.startswith(prefix) or unix_user == prefix:
        return None  # not a workbench user's job
    if state.split(" ")[0] in NOT_FINISHED or not start.isdigit() or not end.isdigit():
        return None  # still running, or never started ("None", "Unknown")
    begin, finish = float(start), float(end)
    if finish < begin or begin <= 0:
        raise ValueError(f"start {start} after end {end}")
    return FinishedJob(
        consumer=str(Consumer.job(job_id)),
        user=unix_user[len(prefix) :],
        start=begin,
        end=finish,
        rates=tres_rates(tres),
    )


class SlurmAccounting:
    """Reads finished jobs from `sacct` and settles them in the ledger."""

    def __init__(self, ledger: Ledger, prefix: str, env: dict, slack: float = 600,
                 first_window: float = 86400):  # fmt: skip
        self.ledger = ledger
        self.prefix = prefix
        self.env = {**env, **TIME_ENV}
        self.slack = slack  # slurmdbd may receive a job's end later than it happened
        self.first_window = first_window  # how far back the very first pass reads
        self.disabled_said = False

    async def sacct(self, since: float, until: float) -> str:
        args = [
            "sacct", "--allusers", "--allocations", "--duplicates", "--noheader", "--parsable2",
            f"--delimiter={DELIMITER}", f"--format={','.join(SACCT_FIELDS)}",
            f"--starttime={_local(since)}", f"--endtime={_local(until)}",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"sacct: {err.decode().strip()}")
        return out.decode(errors="replace")

    async def settle(self, now: float | None = None) -> int:
        """One pass: settle every job that ended since the last one. Returns how many
        consumers it charged or corrected (0 when there was nothing new)."""
        now = time.time() if now is None else now
        mark = self.ledger.watermark(WATERMARK)
        since = (now - self.first_window) if mark is None else mark - self.slack
        try:
            text = await self.sacct(since, now)
        except RuntimeError as e:
            if "accounting storage is disabled" in str(e).lower():
                if not self.disabled_said:  # a Slurm without slurmdbd: sampling only
                    log.warning("Slurm has no accounting (slurmdbd): jobs charged by sampling only")
                    self.disabled_said = True
                return 0
            raise
        jobs = parse_sacct(text, self.prefix)
        jobs = runs(jobs, self.ledger.starts(sorted({j.consumer for j in jobs})))
        settled = self.ledger.settle(jobs)
        # Only after the settle committed: a crash in between reads the window again.
        self.ledger.set_watermark(WATERMARK, now)
        return settled


def _local(t: float) -> str:
    """sacct's --starttime/--endtime take the local time of the machine it runs on."""
    return datetime.fromtimestamp(int(t)).strftime("%Y-%m-%dT%H:%M:%S")


def environment(conf: str | None) -> dict:
    return {**os.environ, **({"SLURM_CONF": str(conf)} if conf else {})}
