"""Where usage comes from: `UsageSource`s the meter polls.

- `LabSessions`: Lab servers as the hub API lists them (the `local` backend), through
  `HubAPI`, whose one listing per tick also serves `AppServers`.
- `AppServers`: published Voila apps' servers, the same way (source "app").
- `SlurmJobs`: every running Slurm job of a workbench user, as squeue lists them: Lab
  sessions on the `slurm` backend (known as such from the hub's spawner state), and Dask
  workers and users' own jobs however they were started; once they end, settled from
  Slurm's accounting (quota/accounting.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from datetime import datetime
from urllib.parse import quote

from shangzhuang.apps import is_app_server
from shangzhuang.apps.hub_api import HubAPI
from shangzhuang.quota.accounting import (
    TIME_ENV,
    SlurmAccounting,
    gres_gpus,
    rerun_consumer,
    tres_rates,
)
from shangzhuang.quota.consumers import Consumer
from shangzhuang.quota.gpu_readings import NodeGpus, Reading, parse_sstat
from shangzhuang.quota.ledger import rates_of
from shangzhuang.quota.meter import Running, UsageSource
from shangzhuang.quota.refusals import Waiting, record
from shangzhuang.settings import Settings, node_gpus

log = logging.getLogger(__name__)


def session_consumer(source: str, user: str, server: str, model: dict) -> str | None:
    """The consumer id (source "lab" or "app") of the run a hub server model shows, from
    its start time as the hub reports it; None when it has not started."""
    if not model.get("started"):
        return None
    started = datetime.fromisoformat(model["started"].replace("Z", "+00:00"))
    return str(Consumer.session(source, user, server, started.timestamp()))


class LabSessions:
    """Lab servers as the hub reports them: a `UsageSource` for the meter."""

    name = "lab"

    def counts(self, server: str) -> bool:
        """Is this server one of this source's? (App servers are charged by `AppServers`.)"""
        apps = self.settings.apps
        return not (apps.enabled and is_app_server(server, apps.server_prefix))

    def profile_of(self, user: str, server: str, model: dict):
        return self.profile((model.get("user_options") or {}).get("profile"))

    def __init__(self, settings: Settings, hub: HubAPI, node: NodeGpus | None = None):
        self.settings = settings
        self.hub = hub
        self.node = node  # this node's GPUs, read with NVML (None: not read)
        # Each GPU session's pool GPUs, from the spawner's state in the last listing.
        self.devices: dict[str, list[int]] = {}

    async def running(self) -> list[Running]:
        out = []
        devices = {}
        for user in await self.hub.active_users():
            for server, s in (user.get("servers") or {}).items():
                if not s.get("started") or not self.counts(server):
                    continue
                started = datetime.fromisoformat(s["started"].replace("Z", "+00:00"))
                profile = self.profile_of(user["name"], server, s)
                consumer = self.consumer_of(user["name"], server, s)
                # The spawner's record (admin:server_state), never the user's user_options.
                held = (s.get("state") or {}).get("gpus") or []
                if held and all(isinstance(i, int) for i in held):
                    devices[consumer] = held
                out.append(
                    Running(
                        consumer=consumer,
                        user=user["name"], source=self.name, started=started.timestamp(),
                        rates=rates_of(profile), profile=profile.name,
                        groups=tuple(user.get("groups") or ()),
                    )
                )  # fmt: skip
        self.devices = devices
        return out

    async def utilisation(self, runs: list[Running]) -> dict[str, Reading]:
        """The GPU sessions' readings, from NVML on this node (off the event loop)."""
        if self.node is None:
            return {}
        held = {r.consumer: self.devices[r.consumer] for r in runs if r.consumer in self.devices}
        return await asyncio.to_thread(self.node.read, held)

    def profile(self, name: str | None):
        try:
            return self.settings.profile(name)
        except KeyError:  # gone from the config since it started: charged as the first
            return self.settings.profiles[0]

    def consumer_of(self, user: str, server: str, model: dict) -> str | None:
        """The consumer id of the run the hub's server model shows (None: not started)."""
        return session_consumer(self.name, user, server, model)

    async def stop(self, consumer: str, user: str, reason: str) -> bool:
        """Stop the run `consumer` names, never a later one of the same server: between
        the meter's decision and this call the user may have stopped it and started the
        server again (a new start time, so a new consumer), and the hub stops by name.
        False when that run had ended already."""
        server = Consumer.parse(consumer).server
        model = await self.hub.server(user, server)
        if model is None or self.consumer_of(user, server, model) != consumer:
            log.info("not stopping %s's server %r (%s): %s has ended already",
                     user, server, reason, consumer)  # fmt: skip
            return False
        path = (
            f"/users/{quote(user)}/server"
            if not server
            else (f"/users/{quote(user)}/servers/{quote(server)}")
        )
        await self.hub.call("DELETE", path, ok=(202, 204, 400, 404))  # stopped already: done
        return True


class AppServers(LabSessions):
    """Published Voila apps' servers: charged to their owners as source "app", at the
    profile the app was published with."""

    name = "app"

    def __init__(self, settings: Settings, hub: HubAPI, node: NodeGpus | None = None):
        super().__init__(settings, hub, node)
        from shangzhuang.apps.registry import Registry

        self.registry = Registry(settings.apps_folder)

    def counts(self, server: str) -> bool:
        return not super().counts(server)

    def profile_of(self, user: str, server: str, model: dict):
        app = self.registry.get(user, server[len(self.settings.apps.server_prefix) :])
        return self.profile(app.profile if app else None)


# A pending job held at zero: the marker (AdminComment: only Slurm admins can set it) and
# what the user reads in squeue's comment column (`squeue -O JobID,Reason,Comment`).
# hub_config/examples/job_submit.lua holds and marks a job the same way at submit.
HOLD_MARK = "shangzhuang-quota-hold"
# How a held job waits: our `scontrol hold` (admin), or job_submit.lua's priority 0 (user).
HELD_REASONS = ("JobHeldAdmin", "JobHeldUser")
HELD = (
    "Held by Shangzhuang Workbench: your quota is used up. It starts once an admin grants "
    "more or your quota resets."
)


class SlurmJobs:
    """Running Slurm jobs of workbench users (Unix accounts with the site's prefix).

    Sampled for enforcement; once a job ends, Slurm's accounting settles what it cost
    (`settle`, quota/accounting.py). With the hub's API (`hub`), the jobs that run Lab
    sessions are known by the spawners' own record (`lab_jobs`): they carry their server
    (`Running.lab_server`, what idle GPU reclaim watches) and the hub stops them."""

    name = "job"
    # No field a user controls (never %j, the job name: it can hold a newline and forge
    # a line); times as epoch seconds; TRES of the whole job, so --gpus=N and GPUs on
    # several nodes count (squeue's %b is per node and misses --gpus).
    # The GPUs asked for (per job, node or task), for a Slurm that does not track gres/gpu
    # in its TRES (no AccountingStorageTRES=gres/gpu): then tres-alloc has no GPUs.
    TRES = ("tres-alloc", "NumNodes", "NumTasks", "tres-per-job", "tres-per-node",
            "tres-per-task")  # fmt: skip
    # RestartCnt: a requeued job's later run is a consumer of its own (accounting.py).
    FIELDS = ("JobID", "UserName", "StartTime", *TRES, "RestartCnt")
    FORMAT = ",".join(f"{f}:|" for f in FIELDS)  # width 0 (never cut), "|" after each

    def __init__(self, settings: Settings, ledger=None, hub: HubAPI | None = None):
        self.settings = settings
        self.hub = hub
        self.labs: dict[str, str] = {}  # the Lab sessions' consumers -> server, last listed
        self.waiting = Waiting()  # the pending jobs as hold_pending last read them (estate)
        self.prefix = settings.backend.slurm.user_prefix
        self.at_zero_file = settings.backend.slurm.at_zero_file
        conf = settings.backend.slurm.conf
        self.env = {**os.environ, **({"SLURM_CONF": str(conf)} if conf else {}), **TIME_ENV}
        self.accounting = SlurmAccounting(ledger, self.prefix, self.env) if ledger else None

    async def _run(self, *args: str, strict: bool = True) -> str:
        """The command's output; an error unless it succeeded (not `strict`: unless it
        printed nothing, as sstat fails for one job that has no step yet)."""
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env
        )
        out, err = await proc.communicate()
        if proc.returncode != 0 and (strict or not out.strip()):
            raise RuntimeError(f"{args[0]}: {err.decode().strip()}")
        return out.decode(errors="replace")

    async def running(self) -> list[Running]:
        squeue = self._run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-O", self.FORMAT)
        if self.hub is None:
            return self.parse(await squeue)
        out, labs = await asyncio.gather(squeue, self.lab_jobs(), return_exceptions=True)
        if isinstance(out, BaseException):
            raise out
        if isinstance(labs, BaseException):  # charged all the same, as plain jobs
            log.warning("the hub's servers unavailable, Lab sessions' jobs not known: %s", labs)
            labs = {}
        jobs = []
        for r in self.parse(out):
            lab = labs.get((r.user, Consumer.parse(r.consumer).job_id))
            if lab is not None:
                r = replace(r, lab_server=lab[0], profile=lab[1])
            jobs.append(r)
        self.labs = {r.consumer: r.lab_server for r in jobs if r.lab_server is not None}
        return jobs

    async def lab_jobs(self) -> dict[tuple[str, str], tuple[str, str]]:
        """The jobs that run Lab sessions, as the hub's spawners recorded them (batchspawner's
        `job_id` in the server's state, which the quota service's role reads with
        admin:server_state), never by anything a user sets (a job's name or comment):
        (user, job id) -> (server name, profile). App servers are not Lab sessions."""
        apps = self.settings.apps
        out = {}
        for user in await self.hub.active_users():
            for server, s in (user.get("servers") or {}).items():
                job = str((s.get("state") or {}).get("job_id") or "")
                app = apps.enabled and is_app_server(server, apps.server_prefix)
                if not job.isdigit() or app:
                    continue
                try:  # the profile it was started on (the hub checked it at spawn)
                    profile = self.settings.profile((s.get("user_options") or {}).get("profile"))
                except KeyError:  # gone from the config since: the site's reclaim rules
                    profile = None
                out[(user["name"], job)] = (server, profile.name if profile else "")
        return out

    def parse(self, out: str) -> list[Running]:
        jobs = []
        for line in out.splitlines():
            fields = line.split("|")
            if len(fields) != len(self.FIELDS) + 1 or fields[-1]:
                log.warning("squeue line skipped: %r", line[:300])
                continue
            job_id, unix_user, start, *tres, restarts = fields[:-1]
            if not unix_user.startswith(self.prefix) or unix_user == self.prefix:
                continue  # not a workbench user's job
            if not job_id.isdigit() or not start.isdigit() or not restarts.isdigit():
                log.warning("squeue line skipped: %r", line[:300])
                continue
            jobs.append(
                Running(
                    consumer=str(Consumer.job(job_id)),
                    user=unix_user[len(self.prefix) :],
                    source="job",
                    started=float(start),
                    rates=job_rates(*tres),
                )
            )
            if int(restarts) > 0:  # a requeued job's later run
                run = rerun_consumer(jobs[-1].consumer, float(start))
                jobs[-1] = replace(jobs[-1], consumer=run)
        return jobs

    async def settle(self, now: float) -> int:
        """Charge the jobs that ended exactly, from Slurm's accounting."""
        return await self.accounting.settle(now) if self.accounting else 0

    async def stop(self, consumer: str, user: str, reason: str) -> bool:
        """A Lab session's job is stopped by the hub, as on the local backend: its spawner
        cancels the job and closes the session's charge at once. Any other job (and a Lab's
        when the hub can't) is cancelled here."""
        server = self.labs.get(consumer)
        job = Consumer.parse(consumer).job_id
        if server is not None and self.hub is not None:
            try:
                # Still this job's server? The user may have started it again since (a new
                # job): the hub stops by name, so then only this job is cancelled.
                model = await self.hub.server(user, server)
                if str(((model or {}).get("state") or {}).get("job_id") or "") == job:
                    await self.hub.stop(user, server)
                    return True
            except Exception as e:
                log.warning("the hub could not stop %s's server %r (%s): cancelling %s",
                            user, server, e, consumer)  # fmt: skip
        await self._run("scancel", job)  # a rerun's job too
        return True

    async def utilisation(self, runs: list[Running]) -> dict[str, Reading]:
        """The GPU jobs' readings from Slurm's GPU accounting (sstat's gres/gpuutil): none
        where slurm.conf does not track it (AccountingStorageTRES=gres/gpuutil)."""
        jobs = {Consumer.parse(r.consumer).job_id: r.consumer for r in runs}
        if not jobs:
            return {}
        out = await self._run("sstat", "-a", "-n", "-P", "-o", "JobID,TRESUsageInAve",
                              "-j", ",".join(sorted(jobs)), strict=False)  # fmt: skip
        return {jobs[j]: reading for j, reading in parse_sstat(out).items() if j in jobs}

    async def hold_pending(self, now: float) -> tuple[int, int]:
        """At zero, new work does not start: a user's pending jobs that need a resource at
        zero are held (an admin hold the user can't release, with a Comment squeue shows),
        and the ones this held are released once the balance pays again (a grant, a new
        period). Jobs job_submit.lua held at submit (JobHeldUser, marked) become admin
        holds here, or are released. Also writes the at-zero file that script reads, records
        each hold as a refusal and keeps what waits (`waiting`) for the estate.
        Returns (held, released)."""
        if self.accounting is None:
            return 0, 0
        ledger = self.accounting.ledger
        balances = {}
        if self.at_zero_file:  # first: it holds jobs at submit even while squeue fails
            balances = ledger.balances(ledger.users(), now)
            self.write_at_zero(balances)
        names = ("JobID", "UserName", "Reason", *self.TRES)
        columns = ",".join(f"{f}:|" for f in names)
        out = await self._run("squeue", "-h", "-t", "PENDING", "-O", columns)
        pending: dict[str, list[tuple[str, str, dict]]] = {}
        for line in out.splitlines():
            fields = line.split("|")
            if len(fields) != len(names) + 1 or fields[-1] or not fields[0].isdigit():
                continue
            job_id, unix_user, reason, *tres = fields[:-1]
            if unix_user.startswith(self.prefix) and unix_user != self.prefix:
                pending.setdefault(unix_user[len(self.prefix) :], []).append(
                    (job_id, reason, job_rates(*tres))
                )
        held = released = 0
        waiting = Waiting(now)
        unknown = [u for u in pending if u not in balances]
        if unknown:
            balances.update(ledger.balances(unknown, now))
        for user, jobs in pending.items():
            empty = {r for r, rb in balances[user].resources.items() if rb.remaining == 0}
            for job_id, reason, rates in jobs:
                at_zero = any(rates.get(r, 0) > 0 for r in empty)
                if at_zero and reason != "JobHeldAdmin":  # also job_submit.lua's user hold
                    await self._run("scontrol", "hold", job_id)
                    await self._run("scontrol", "update", f"JobId={job_id}",
                                    f"AdminComment={HOLD_MARK}", f"Comment={HELD}")  # fmt: skip
                    log.info("held Slurm job %s of %s: quota at zero", job_id, user)
                    record(ledger, user, "held-at-zero", str(Consumer.job(job_id)),
                           [r for r in empty if rates.get(r, 0) > 0], now)  # fmt: skip
                    held += 1
                elif not at_zero and reason in HELD_REASONS and await self._ours(job_id):
                    await self._run("scontrol", "update", f"JobId={job_id}",
                                    "AdminComment=", "Comment=")  # fmt: skip
                    await self._run("scontrol", "release", job_id)
                    log.info("released Slurm job %s of %s: quota paid again", job_id, user)
                    released += 1
                    reason = "None"  # what squeue says of it until the scheduler looks
                waiting.jobs.append((user, "held-at-zero" if at_zero else reason))
        self.waiting = waiting
        return held, released

    def write_at_zero(self, balances: dict) -> None:
        """The users at zero and their resources at zero, for job_submit.lua: written to a
        temporary file renamed over the old one, so Slurm never reads half of it."""
        lines = [f"comment {HELD}"]
        for user, balance in sorted(balances.items()):
            empty = sorted(r for r, rb in balance.resources.items() if rb.remaining == 0)
            if empty:
                lines.append(f"user {self.prefix}{user} {' '.join(empty)}")
        path = self.at_zero_file
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text("\n".join(lines) + "\n")
            tmp.chmod(0o644)  # slurmctld's user reads it
            os.replace(tmp, path)
        except OSError as e:  # the tick's holds go on without it
            log.error("backend.slurm.at_zero_file: could not write %s: %s", path, e)

    async def _ours(self, job_id: str) -> bool:
        """Held by this meter: AdminComment, which only Slurm's admins can set, says so (a
        job an operator held stays held)."""
        out = await self._run("scontrol", "show", "job", "-o", job_id)
        return f"AdminComment={HOLD_MARK} " in out + " "


def job_rates(alloc: str, nodes: str, tasks: str, per_job: str, per_node: str,
              per_task: str) -> dict[str, float]:  # fmt: skip
    """A running job's cores and GPUs per hour: its TRES, and where that has no GPUs (not
    tracked by this Slurm), the GPUs it asked for per job, per node x nodes, per task x
    tasks."""
    rates = tres_rates(alloc)
    if "gpu_hours" not in rates:
        n = int(nodes) if nodes.isdigit() else 1
        t = int(tasks) if tasks.isdigit() else 1
        rates["gpu_hours"] = float(
            gres_gpus(per_job) + n * gres_gpus(per_node) + t * gres_gpus(per_task)
        )
    return rates


def sources_for(settings: Settings, api_url: str, token: str, ledger=None) -> list[UsageSource]:
    """What the meter polls on this site's backend (the ledger: to settle Slurm jobs)."""
    hub = HubAPI(api_url, token, timeout=30)
    if settings.backend.kind == "slurm":
        return [SlurmJobs(settings, ledger, hub)]
    node = NodeGpus(node_gpus(settings))
    sources: list[UsageSource] = [LabSessions(settings, hub, node)]
    if settings.apps.enabled:
        sources.append(AppServers(settings, hub, node))
    return sources
