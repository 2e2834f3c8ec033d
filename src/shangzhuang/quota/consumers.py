"""The ledger's consumer id: what is charged, as one type.

A consumer is one run of something that costs hours, written as a string in the ledger:
- `lab:USER/SERVER@MS`: one run of a Lab server (SERVER is "" for the default server),
  MS the milliseconds timestamp the hub started it; the hub and the meter both derive it
  from the hub's `started`, so both name the same run alike;
- `app:USER/SERVER@MS`: one run of a published Voila app's server, charged to its owner;
- `job:ID`: a Slurm batch job (a Lab session on Slurm, or a Dask worker); a requeued
  job's later run is `job:ID@START` (START in seconds: each run is charged once).
Build one with `Consumer.session(...)` or `Consumer.job(...)`, read one with
`Consumer.parse(text)`; `str()` gives the ledger's string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SESSION_SOURCES = ("lab", "app")
_SESSION = re.compile(r"^(lab|app):([^/]*)/(.*)@(\d+)$")
_JOB = re.compile(r"^job:(\d+)(?:@(\d+))?$")


@dataclass(frozen=True)
class Consumer:
    source: str  # the ledger's source: lab | app | job
    user: str = ""  # a session's hub user ("" for a job: squeue tells whose it is)
    server: str = ""  # a session's server name ("" = the default server)
    started_ms: int = 0  # a session's start, ms since the epoch
    job_id: str = ""  # a job's Slurm id
    rerun_start: int = 0  # a requeued job's later run: its start (seconds), else 0

    @classmethod
    def session(cls, source: str, user: str, server: str, started: float) -> Consumer:
        """One run of a Lab (`source` "lab") or app ("app") server, started at `started`."""
        if source not in SESSION_SOURCES:
            raise ValueError(f"a session's source is lab or app, not {source!r}")
        return cls(source, user, server, int(round(started * 1000)))

    @classmethod
    def job(cls, job_id: str | int, rerun_start: float = 0) -> Consumer:
        """A Slurm batch job (`rerun_start`: a requeued job's later run, started then)."""
        return cls("job", job_id=str(job_id), rerun_start=int(rerun_start))

    @classmethod
    def parse(cls, text: str) -> Consumer:
        """The consumer a ledger string names; ValueError for one no part of ours writes."""
        if m := _SESSION.match(text):
            return cls(m[1], m[2], m[3], int(m[4]))
        if m := _JOB.match(text):
            return cls.job(m[1], int(m[2] or 0))
        raise ValueError(f"not a consumer id: {text!r} (lab:USER/SERVER@MS, app:..., job:ID)")

    @property
    def started(self) -> float:
        """A session's start as a timestamp (seconds)."""
        return self.started_ms / 1000

    def __str__(self) -> str:
        if self.source == "job":
            return f"job:{self.job_id}" + (f"@{self.rerun_start}" if self.rerun_start else "")
        return f"{self.source}:{self.user}/{self.server}@{self.started_ms}"


def shown_as(source: str, profile: str) -> str:
    """The source a consumer's charges are shown under (the usage page's "by source", the
    CSV): a Slurm job that runs a Lab session, known by its spawner's profile (the hub's
    record, never the job's name), is "lab" like a Lab on the local backend. The consumer
    itself stays the job source's, which stops and settles it."""
    return "lab" if source == "job" and profile else source

