"""Slurm jobs settled from Slurm's accounting (quota/accounting.py, Ledger.settle): parsing
`sacct` and `squeue` output, and charges that end up exact and are made once.
The real `sacct` is exercised by tests/integration/test_slurm.py."""

import asyncio
import logging

import pytest

from shangzhuang.quota.accounting import FinishedJob, parse_sacct, runs, tres_rates
from shangzhuang.quota.sources import SlurmJobs
from shangzhuang.settings import Settings

from .conftest import at

T0 = at(2026, 11, 10, 9, 0)


def totals(ledger, user):
    out = {}
    for row in ledger.usage(user=user):
        out[row.resource] = out.get(row.resource, 0.0) + row.amount
    return out


def test_tres_counts_gpus_of_the_whole_job():
    assert tres_rates("billing=2,cpu=2,gres/gpu=2,mem=1000M,node=2") == {
        "gpu_hours": 2.0,
        "cpu_hours": 2.0,
    }
    assert tres_rates("cpu=1,gres/gpu=0,node=1") == {"gpu_hours": 0.0, "cpu_hours": 1.0}
    # A Slurm that does not account gres/gpu: GPUs unknown, not 0
    assert tres_rates("cpu=1,mem=500M,node=1") == {"cpu_hours": 1.0}


def test_parse_sacct_keeps_finished_jobs_of_workbench_users_and_skips_a_bad_line_alone(caplog):
    text = "\n".join(
        [
            f"11|sz-alice|{int(T0)}|{int(T0) + 2}|cpu=1,mem=500M,node=1|COMPLETED",
            "12|sz-alice|garbage|line",  # wrong number of fields
            f"13|sz-alice|{int(T0)}|Unknown|cpu=4,node=1|RUNNING",  # not finished
            "14|sz-bob|None|None|cpu=1,node=1|CANCELLED by 0",  # never started
            f"15|root|{int(T0)}|{int(T0) + 9}|cpu=1,node=1|COMPLETED",  # not ours
            f"16|sz-bob|{int(T0)}|{int(T0) + 60}|cpu=2,gres/gpu=2,node=2|CANCELLED by 0",
        ]
    )
    with caplog.at_level(logging.WARNING):
        jobs = parse_sacct(text, "sz-")
    assert jobs == [
        FinishedJob("job:11", "alice", T0 // 1, T0 // 1 + 2, {"cpu_hours": 1.0}),
        FinishedJob("job:16", "bob", T0 // 1, T0 // 1 + 60, {"gpu_hours": 2.0, "cpu_hours": 2.0}),
    ]
    assert "12|sz-alice|garbage|line" in caplog.text


def test_squeue_parse_takes_no_user_text_and_counts_all_gpus():
    site = {"backend": {"kind": "slurm"}, "profiles": [{"name": "cpu", "cores": 1, "memory": "1G"}]}
    source = SlurmJobs(Settings.model_validate(site))
    prefix = source.prefix
    out = (
        f"7|{prefix}eve|{int(T0)}|cpu=2,mem=1G,node=2,billing=2,gres/gpu=2|2|2|N/A|gres:gpu:1|N/A|0|\n"
        # what a job name with a newline forged under the old format: now a bad line
        f"999|{prefix}victim|{int(T0)}|4|gres/gpu:8\n"
        # a Slurm without AccountingStorageTRES=gres/gpu: the GPUs asked for count
        f"8|{prefix}eve|{int(T0)}|cpu=2,mem=1G,node=2|2|2|N/A|gres:gpu:1|N/A|0|\n"
        f"9|{prefix}eve|{int(T0)}|cpu=1,mem=1G,node=1|1|1|gres:gpu:2|N/A|N/A|0|\n"
        f"10|{prefix}eve|{int(T0)}|cpu=2,mem=1G,node=1|1|2|N/A|N/A|gres:gpu:1|0|\n"
        # a requeued job's second run: a consumer of its own
        f"11|{prefix}eve|{int(T0)}|cpu=1,mem=1G,node=1,gres/gpu=2|1|1|N/A|N/A|N/A|1|\n"
    )
    jobs = source.parse(out)
    assert [(j.consumer, j.user) for j in jobs] == [
        ("job:7", "eve"),
        ("job:8", "eve"),
        ("job:9", "eve"),
        ("job:10", "eve"),
        (f"job:11@{int(T0)}", "eve"),
    ]
    for j in jobs:
        assert j.rates["gpu_hours"] == 2.0, j
    assert [j.rates["cpu_hours"] for j in jobs] == [2.0, 2.0, 1.0, 2.0, 1.0]


def test_settling_without_accounted_gpus_keeps_the_sampled_gpus(ledger):
    ledger.open("job:5", user="bob", account="physics", source="job", started=T0,
                rates={"cpu_hours": 1, "gpu_hours": 2})  # fmt: skip
    ledger.charge({"job:5": T0 + 30})
    ledger.settle([FinishedJob("job:5", "bob", T0, T0 + 36, {"cpu_hours": 1.0})])
    assert totals(ledger, "bob") == pytest.approx({"cpu_hours": 36 / 3600, "gpu_hours": 72 / 3600})


def job(n, user, start, end, cpus=1.0, gpus=0.0):
    return FinishedJob(f"job:{n}", user, start, end, {"gpu_hours": gpus, "cpu_hours": cpus})


def test_a_job_the_meter_never_saw_is_charged_its_whole_run_once(ledger):
    assert ledger.settle([job(1, "bob", T0, T0 + 2, cpus=1, gpus=2)]) == 1
    assert totals(ledger, "bob") == pytest.approx({"cpu_hours": 2 / 3600, "gpu_hours": 4 / 3600})
    assert ledger.settle([job(1, "bob", T0, T0 + 2, cpus=1, gpus=2)]) == 0  # again: nothing
    assert totals(ledger, "bob") == pytest.approx({"cpu_hours": 2 / 3600, "gpu_hours": 4 / 3600})
    used = ledger.balance("bob", now=T0 + 100).resources["gpu_hours"].account.used
    assert used == pytest.approx(4 / 3600)


def test_a_sampled_job_is_corrected_to_the_exact_run_and_never_charged_again(ledger):
    # The meter saw it 5 s late, with the wrong GPU count (per node), and 3 s past its end.
    ledger.open("job:2", user="bob", account="physics", source="job", started=T0 + 5,
                rates={"cpu_hours": 2, "gpu_hours": 1})  # fmt: skip
    ledger.charge({"job:2": T0 + 63})
    assert ledger.settle([job(2, "bob", T0, T0 + 60, cpus=2, gpus=2)]) == 1
    exact = {"cpu_hours": 120 / 3600, "gpu_hours": 120 / 3600}
    assert totals(ledger, "bob") == pytest.approx(exact)
    used = ledger.balance("bob", now=T0 + 100).resources
    assert used["gpu_hours"].account.used == pytest.approx(120 / 3600)
    # The meter still listing it (COMPLETING), the hub closing it: no more charges.
    assert ledger.charge({"job:2": T0 + 90}) == 0
    ledger.close("job:2", T0 + 95)
    assert ledger.settle([job(2, "bob", T0, T0 + 60, cpus=2, gpus=2)]) == 0
    assert totals(ledger, "bob") == pytest.approx(exact)
    assert ledger.open_consumers("job") == []


def test_a_job_across_a_period_end_is_charged_to_each_period(ledger):
    end = at(2026, 12, 1, 0, 0)  # monthly periods in Asia/Shanghai
    ledger.open("job:3", user="bob", account="physics", source="job", started=end - 100,
                rates={"cpu_hours": 1, "gpu_hours": 0})  # fmt: skip
    ledger.charge({"job:3": end - 40})
    ledger.settle([job(3, "bob", end - 100, end + 50)])
    assert ledger.balance("bob", now=end - 1).resources["cpu_hours"].account.used == (
        pytest.approx(100 / 3600)
    )
    assert ledger.balance("bob", now=end + 1).resources["cpu_hours"].account.used == (
        pytest.approx(50 / 3600)
    )


def test_watermark_is_kept(ledger):
    assert ledger.watermark("slurm-sacct") is None
    ledger.set_watermark("slurm-sacct", T0)
    ledger.set_watermark("slurm-sacct", T0 + 5)
    assert ledger.watermark("slurm-sacct") == T0 + 5


class RecordedSlurm(SlurmJobs):
    """The real source; its commands answered from `pending` and recorded."""

    def __init__(self, ledger, pending: str):
        site = {
            "backend": {"kind": "slurm"},
            "profiles": [{"name": "c", "cores": 1, "memory": "1G"}],
        }
        super().__init__(Settings.model_validate(site), ledger)
        self.pending, self.ran, self.marked = pending, [], set()

    async def _run(self, *args: str) -> str:
        self.ran.append(args)
        if args[0] == "squeue":
            return self.pending
        if args[:2] == ("scontrol", "update") and any(a.startswith("AdminComment=s") for a in args):
            self.marked.add(args[2].removeprefix("JobId="))
        if args[:2] == ("scontrol", "show"):
            mark = "shangzhuang-quota-hold" if args[-1] in self.marked else ""
            return f"JobId={args[-1]} AdminComment={mark} Comment=x\n"
        return ""


def test_at_zero_pending_jobs_needing_the_empty_resource_are_held_then_released(ledger):
    ledger.settle([job(1, "carol", T0, T0 + 7200, gpus=1)])  # bio's 2 gpu_hours used up
    now = T0 + 7300
    queue = (
        "21|sz-carol|Resources|cpu=1,mem=1G,node=1,billing=1,gres/gpu=1|1|1|N/A|N/A|N/A|\n"
        "22|sz-carol|Priority|cpu=1,mem=1G,node=1,billing=1|1|1|N/A|N/A|N/A|\n"  # CPU only
        "23|sz-carol|JobHeldAdmin|cpu=1,node=1|1|1|N/A|gres:gpu:1|N/A|\n"  # an operator's hold
    )
    slurm = RecordedSlurm(ledger, queue)
    assert asyncio.run(slurm.hold_pending(now)) == (1, 0)
    assert ("scontrol", "hold", "21") in slurm.ran
    assert not [a for a in slurm.ran if "22" in a or ("23" in a and a[1] != "show")]
    # A grant pays again: the job this held is released, the operator's stays held.
    ledger.grant(by="admin", account="bio", resource="gpu_hours", amount=1, reason="t", now=now)
    slurm.pending = queue.replace("21|sz-carol|Resources", "21|sz-carol|JobHeldAdmin")
    slurm.ran = []
    assert asyncio.run(slurm.hold_pending(now)) == (0, 1)
    assert ("scontrol", "release", "21") in slurm.ran
    assert ("scontrol", "release", "23") not in slurm.ran


def test_a_job_held_at_zero_is_a_refusal_and_the_queue_is_kept_for_the_estate(ledger):
    """Each hold is recorded once, as a refusal (quota/refusals.py) of the job with the
    resource at zero; what waits, and why, is kept as this tick read it (the estate's
    queue), from the same squeue listing."""
    from shangzhuang.quota import figures, refusals

    ledger.settle([job(1, "carol", T0, T0 + 7200, gpus=1)])  # bio's 2 gpu_hours used up
    now = T0 + 7300
    queue = (
        "21|sz-carol|Resources|cpu=1,mem=1G,node=1,billing=1,gres/gpu=1|1|1|N/A|N/A|N/A|\n"
        "22|sz-carol|Priority|cpu=1,mem=1G,node=1,billing=1|1|1|N/A|N/A|N/A|\n"  # CPU only
        "24|sz-bob|Resources|cpu=2,node=1|1|1|N/A|N/A|N/A|\n"
    )
    slurm = RecordedSlurm(ledger, queue)
    assert slurm.waiting.at is None  # not read yet
    assert refusals.waiting_now([slurm], str) == {
        "at": None, "jobs": 0, "held_at_zero": 0, "by_reason": {}}  # fmt: skip
    assert asyncio.run(slurm.hold_pending(now)) == (1, 0)
    assert refusals.waiting_now([slurm], str) == {
        "at": str(now), "jobs": 3, "held_at_zero": 1,
        "by_reason": {"Priority": 1, "Resources": 1, "held-at-zero": 1},
    }  # fmt: skip
    # held already: the next tick records nothing more
    slurm.pending = queue.replace("21|sz-carol|Resources", "21|sz-carol|JobHeldAdmin")
    assert asyncio.run(slurm.hold_pending(now + 60)) == (0, 0)
    assert slurm.waiting.jobs[0] == ("carol", "held-at-zero")
    refused = figures.refusals(ledger, T0, now + 120)
    assert refused["by_reason"]["held-at-zero"] == 1
    assert refused["top_users"] == [
        {"user": "carol", "refusals": 1, "by_reason": {"held-at-zero": 1}}]  # fmt: skip
    # the local backend's sources keep no queue: none shown
    assert refusals.waiting_now([object()], str) is None


def test_the_at_zero_file_lists_users_at_zero_and_a_submit_hold_is_released_after_a_grant(
    ledger, tmp_path
):
    """The file job_submit.lua reads (hub_config/examples/), and the jobs it held at submit
    (JobHeldUser with our mark); a user's own hold (no mark) stays."""
    ledger.settle([job(1, "carol", T0, T0 + 7200, gpus=1)])  # bio's 2 gpu_hours used up
    now = T0 + 7300
    queue = (
        "31|sz-carol|JobHeldUser|cpu=1,node=1|1|1|N/A|gres:gpu:1|N/A|\n"  # held at submit
        "32|sz-carol|JobHeldUser|cpu=1,node=1|1|1|N/A|gres:gpu:1|N/A|\n"  # her own sbatch -H
    )
    slurm = RecordedSlurm(ledger, queue)
    (tmp_path / "slurm").mkdir()
    slurm.at_zero_file = tmp_path / "slurm" / "at-zero"
    slurm.at_zero_file.write_text("stale\n")
    asyncio.run(slurm.hold_pending(now))
    lines = slurm.at_zero_file.read_text().splitlines()
    assert lines[0].startswith("comment Held by Shangzhuang Workbench: your quota is used up.")
    assert "user sz-carol gpu_hours" in lines and "stale" not in lines
    assert not [line for line in lines if line.startswith("user sz-bob")]
    assert [p.name for p in (tmp_path / "slurm").iterdir()] == ["at-zero"]  # no temporary left
    # A grant pays again: the submit hold (marked) is released, her own is left alone.
    slurm.marked = {"31"}
    ledger.grant(by="admin", account="bio", resource="gpu_hours", amount=1, reason="t", now=now)
    slurm.ran = []
    assert asyncio.run(slurm.hold_pending(now)) == (0, 1)
    assert ("scontrol", "release", "31") in slurm.ran
    assert ("scontrol", "release", "32") not in slurm.ran
    assert "user sz-carol" not in slurm.at_zero_file.read_text()


def test_each_run_of_a_requeued_job_is_charged_once(ledger):
    """sacct --duplicates: one row per run, the earlier ones REQUEUED. The first run is
    job:ID (as the meter sampled it), a later one job:ID@START (squeue's RestartCnt > 0)."""
    text = (
        f"5|sz-bob|{int(T0)}|{int(T0) + 10}|cpu=1,node=1|REQUEUED\n"
        f"5|sz-bob|{int(T0) + 200}|Unknown|cpu=1,node=1|PENDING\n"
    )
    first = runs(parse_sacct(text, "sz-"), ledger.starts(["job:5"]))
    assert [(j.consumer, j.end - j.start) for j in first] == [("job:5", 10)]
    assert ledger.settle(first) == 1
    # The second run ends; a later pass reads both rows (an overlapping window).
    text = text.replace("Unknown|cpu=1,node=1|PENDING", f"{int(T0) + 230}|cpu=1,node=1|COMPLETED")
    both = runs(parse_sacct(text, "sz-"), ledger.starts(["job:5"]))
    assert [j.consumer for j in both] == ["job:5", f"job:5@{int(T0) + 200}"]
    assert ledger.settle(both) == 1  # the first run was final already
    assert totals(ledger, "bob")["cpu_hours"] == pytest.approx(40 / 3600)
    assert ledger.settle(runs(parse_sacct(text, "sz-"), ledger.starts(["job:5"]))) == 0
    assert totals(ledger, "bob")["cpu_hours"] == pytest.approx(40 / 3600)


def test_a_lab_sessions_job_is_shown_as_lab_and_a_plain_job_as_job(ledger):
    """A Slurm job the meter knew as a Lab session (its spawner's profile, from the hub) is
    charged under the source "lab", its sacct corrections too; a plain job stays "job"."""
    ledger.open("job:7", user="bob", account="physics", source="job", started=T0 + 5,
                rates={"cpu_hours": 2, "gpu_hours": 1}, profile="gpu")  # fmt: skip
    ledger.open("job:8", user="bob", account="physics", source="job", started=T0 + 5,
                rates={"cpu_hours": 1, "gpu_hours": 0})  # fmt: skip
    ledger.charge({"job:7": T0 + 63, "job:8": T0 + 63})
    ledger.settle([job(7, "bob", T0, T0 + 60, cpus=2, gpus=2), job(8, "bob", T0, T0 + 60)])
    ledger.settle([job(9, "bob", T0, T0 + 60)])  # never sampled: a plain job
    by = {}
    for row in ledger.usage(user="bob"):
        key = (row.consumer, row.source)
        by[key] = by.get(key, 0.0) + row.amount
    assert set(by) == {("job:7", "lab"), ("job:8", "job"), ("job:9", "job")}
    assert by[("job:7", "lab")] == pytest.approx(240 / 3600)  # exact: 2 cores + 2 GPUs, 60 s
    assert [c.id for c in ledger.open_consumers("job")] == []  # still the job source's
