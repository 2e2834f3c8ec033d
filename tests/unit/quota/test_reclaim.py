"""Idle GPU reclaim's rule (quota/reclaim.py), on the real ledger and real utilisation
readings (quota/utilisation.py), with a `FakeLab` source that records what it is told to
stop (the hub is what the integration test brings: tests/integration/test_reclaim.py)."""

from __future__ import annotations

import asyncio

import pytest

from shangzhuang.quota import utilisation
from shangzhuang.quota.db import ReclaimWarning
from shangzhuang.quota.ledger import QuotaError
from shangzhuang.quota.meter import Meter, Running
from shangzhuang.quota.reclaim import Reclaim, exempted, set_exempt
from shangzhuang.settings import SettingsError, parse_settings

T0 = 1_790_000_000.0
TICK = 60.0


def site(reclaim: dict | None = None, **gpu_profile):
    return parse_settings({
        "quota": {"sample_seconds": TICK, "reclaim": {
            "idle_seconds": 600, "grace_seconds": 300, "idle_threshold_percent": 10,
            "exempt": ["erin"], **(reclaim or {})}},
        "profiles": [
            {"name": "cpu", "cores": 2, "memory": "1G"},
            {"name": "gpu", "cores": 4, "memory": "1G", "gpus": 1, **gpu_profile},
            {"name": "gpu-long", "cores": 4, "memory": "1G", "gpus": 1,
             "reclaim_idle_seconds": 3600},
            {"name": "gpu-never", "cores": 4, "memory": "1G", "gpus": 1,
             "reclaim_idle_seconds": 0},
        ],
    })  # fmt: skip


class FakeLab:
    """The meter's lab source: what runs is set by the test; stops are recorded."""

    name = "lab"

    def __init__(self):
        self.sessions: list[Running] = []
        self.stopped: list[tuple[str, str]] = []
        self.ended: set[str] = set()  # runs the user stopped between listing and stop

    async def running(self) -> list[Running]:
        return list(self.sessions)

    async def stop(self, consumer: str, user: str, reason: str) -> bool:
        if consumer in self.ended:
            return False
        self.stopped.append((consumer, reason))
        self.sessions = [r for r in self.sessions if r.consumer != consumer]
        return True


def gpu_session(user: str, profile: str = "gpu", gpus: float = 1.0) -> Running:
    consumer = f"lab:{user}/@{int(T0 * 1000)}"
    return Running(consumer, user, "lab", T0, {"gpu_hours": gpus, "cpu_hours": 4.0}, profile)


class Clock:
    """Ticks the meter every TICK seconds, recording each session's utilisation first
    (what the NVML sampler does in the service)."""

    def __init__(self, ledger, settings, lab: FakeLab):
        self.ledger, self.lab, self.now = ledger, lab, T0
        self.reclaim = Reclaim(ledger, settings)
        self.meter = Meter(ledger, [lab], grace_seconds=300, reclaim=self.reclaim)
        self.percent: dict[str, float] = {}

    def run(self, seconds: float):
        reports = []
        end = self.now + seconds
        while self.now < end:
            self.now += TICK
            with self.ledger._write() as conn:
                for r in self.lab.sessions:
                    if r.rates["gpu_hours"] > 0:
                        utilisation.record(conn, r.consumer, r.user, self.now,
                                           self.percent.get(r.user, 0.0), seconds=TICK)  # fmt: skip
            reports.append(asyncio.run(self.meter.tick(self.now)).reclaim)
        return reports


@pytest.fixture
def lab():
    return FakeLab()


def test_idle_gpu_session_is_warned_then_stopped_after_the_grace(ledger, lab):
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, site(), lab)
    clock.run(600)  # the first reading is at T0 + 60: idle 540 s, not yet
    assert clock.reclaim.warnings() == {}
    clock.run(TICK)
    (warning,) = clock.reclaim.warnings("alice").values()
    assert warning.warned_at == T0 + 660 and warning.stops_at == T0 + 960
    assert warning.idle_since == pytest.approx(T0 + 60)
    clock.run(300 - TICK)
    assert lab.stopped == []  # in the grace period
    clock.run(TICK)
    assert [c for c, _ in lab.stopped] == [gpu_session("alice").consumer]
    assert "GPUs idle" in lab.stopped[0][1]
    assert [s.reason for s in ledger.stops("alice")] == [lab.stopped[0][1]]


def test_busy_again_clears_the_warning_and_the_period_starts_over(ledger, lab):
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, site(), lab)
    clock.run(660)
    assert clock.reclaim.warnings("alice")
    clock.percent["alice"] = 85.0  # a training run starts in the grace period
    (report,) = clock.run(TICK)
    assert report.cleared == [gpu_session("alice").consumer]
    assert clock.reclaim.warnings() == {}
    clock.percent["alice"] = 2.0
    clock.run(600)
    assert clock.reclaim.warnings() == {} and lab.stopped == []  # idle again, from now
    clock.run(TICK + 300)
    assert len(lab.stopped) == 1


def test_a_busy_gpu_session_is_never_warned(ledger, lab):
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, site(), lab)
    clock.percent["alice"] = 40.0
    reports = clock.run(2000)
    assert not any(r.warned for r in reports) and lab.stopped == []


def test_exempt_users_cpu_sessions_and_profiles_without_reclaim_are_left_alone(ledger, lab):
    lab.sessions = [
        gpu_session("erin"),  # quota.reclaim.exempt
        gpu_session("carl", "cpu", gpus=0),  # no GPUs
        gpu_session("nick", "gpu-never"),  # reclaim_idle_seconds = 0
        Running("app:alice/app-demo@1", "alice", "app", T0, {"gpu_hours": 1.0}, "gpu"),
    ]
    clock = Clock(ledger, site(), lab)
    clock.run(1200)
    assert clock.reclaim.warnings() == {} and lab.stopped == []


def test_a_user_an_admin_exempts_is_left_alone_until_the_exemption_goes(ledger, lab):
    """The usage page's exemptions (the ledger's) count with the config's: alice, warned,
    is exempted: her warning goes and she is never stopped; no longer exempt, she is watched
    again (her GPUs idle all along: warned at once, stopped after the grace)."""
    settings = site()
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, settings, lab)
    clock.run(660)
    assert clock.reclaim.warnings("alice")
    set_exempt(ledger, settings.quota.reclaim, "alice", True, by="root")
    assert exempted(ledger, settings.quota.reclaim) == {"alice", "erin"}
    clock.run(TICK)
    assert clock.reclaim.warnings() == {}
    reports = clock.run(3000)
    assert not any(r.warned for r in reports) and lab.stopped == []

    set_exempt(ledger, settings.quota.reclaim, "alice", False, by="root")
    assert exempted(ledger, settings.quota.reclaim) == {"erin"}
    (report,) = clock.run(TICK)
    assert report.warned == [gpu_session("alice").consumer]
    clock.run(300)
    assert [c for c, _ in lab.stopped] == [gpu_session("alice").consumer]


def test_slurm_jobs_that_run_lab_sessions_are_reclaimed_and_no_other_job(ledger, lab):
    """On the slurm backend a Lab session is a job the hub's spawner started (`lab_server`,
    from SlurmJobs): watched and stopped by its source like a local one, its warning naming
    its server. A Dask worker's job and a user's own sbatch job, their GPUs idle all along,
    are never touched, nor an exempt user's Lab job."""
    lab.name = "job"  # the meter's Slurm source
    rates = {"gpu_hours": 1.0, "cpu_hours": 1.0}
    lab.sessions = [
        Running("job:101", "alice", "job", T0, rates, "gpu", lab_server="big"),
        Running("job:102", "alice", "job", T0, rates),  # a Dask worker of her Lab's cluster
        Running("job:103", "bob", "job", T0, rates),  # bob's own sbatch job
        Running("job:104", "erin", "job", T0, rates, "gpu", lab_server=""),  # exempt
    ]
    clock = Clock(ledger, site(), lab)
    clock.run(660)
    (warning,) = clock.reclaim.warnings().values()
    assert (warning.consumer, warning.user, warning.server) == ("job:101", "alice", "big")
    clock.run(300)
    assert [c for c, _ in lab.stopped] == ["job:101"]
    clock.run(1200)
    assert [c for c, _ in lab.stopped] == ["job:101"]
    (kept,) = clock.reclaim.warnings("alice").values()  # the home page names its server
    assert kept.server == "big" and kept.stopped_at == T0 + 960


def test_a_warning_from_before_its_server_was_kept_names_it_from_its_consumer(ledger):
    """Schema 0015 added reclaim_warnings.server; a Lab session's warning from before has
    none, and its consumer id says it."""
    with ledger._write() as conn:
        conn.execute(ReclaimWarning.__table__.insert(), [{
            "consumer": "lab:alice/big@1", "user": "alice", "idle_since": T0,
            "warned_at": T0 + 600, "stops_at": T0 + 900}])  # fmt: skip
    reclaim = Reclaim(ledger, site())
    assert reclaim.warnings("alice")["lab:alice/big@1"].server == "big"


def test_the_configs_exempt_users_stay_exempt(ledger):
    """The page adds and removes only its own exemptions; the config's are named."""
    policy = site().quota.reclaim
    with pytest.raises(QuotaError, match=r"\[quota.reclaim\] exempt"):
        set_exempt(ledger, policy, "erin", False, by="root")
    set_exempt(ledger, policy, "erin", True, by="root")  # both: still one entry
    set_exempt(ledger, policy, "erin", True, by="root")
    assert exempted(ledger, policy) == {"erin"}


def test_a_profiles_own_period_replaces_the_sites(ledger, lab):
    lab.sessions = [gpu_session("alice", "gpu-long")]
    clock = Clock(ledger, site(), lab)
    clock.run(1200)
    assert clock.reclaim.warnings() == {}
    clock.run(3600 - 1200 + TICK)
    assert clock.reclaim.warnings("alice")


def test_the_clock_survives_a_quota_service_restart(ledger, lab):
    """The warning is in the ledger: a new Reclaim (a restarted service) stops on time,
    once readings show the GPUs still idle."""
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, site(), lab)
    clock.run(660)
    before = clock.reclaim.warnings()
    clock.now += 120  # down two minutes: no readings then
    restarted = Clock(ledger, site(), lab)
    restarted.now = clock.now
    assert restarted.reclaim.warnings() == before
    restarted.run(300 - 120 - TICK)
    assert lab.stopped == []
    restarted.run(TICK)
    assert len(lab.stopped) == 1


def test_not_stopped_without_fresh_readings(ledger, lab):
    """Readings stopped (NVML gone): the warning stays, nothing is stopped on old ones."""
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, site(), lab)
    clock.run(660)
    assert clock.reclaim.warnings()
    asyncio.run(clock.meter.tick(clock.now + 600))  # no reading since the warning
    assert lab.stopped == []


def test_a_stopped_session_is_stopped_once_and_said_why_for_a_day(ledger, lab):
    session = gpu_session("alice")
    lab.sessions = [session]
    clock = Clock(ledger, site(), lab)
    clock.run(960)
    assert len(lab.stopped) == 1
    lab.sessions = [session]  # the hub still lists it while it stops
    clock.run(2 * TICK)
    assert len(lab.stopped) == 1
    lab.sessions = []
    clock.run(TICK)
    (kept,) = clock.reclaim.warnings("alice").values()  # the home page says why
    assert kept.stopped_at == T0 + 960
    clock.now += 86400  # a day on: gone
    clock.run(TICK)
    assert clock.reclaim.warnings() == {}


def test_a_run_the_user_stopped_herself_is_not_said_to_be_reclaimed(ledger, lab):
    """The grace is over, but the run ended between the tick's listing and the stop (the
    source stops nothing and says so): no stop is recorded and the home page does not say
    reclaim stopped it."""
    session = gpu_session("alice")
    lab.sessions = [session]
    lab.ended = {session.consumer}
    clock = Clock(ledger, site(), lab)
    clock.run(960)
    assert lab.stopped == [] and ledger.stops("alice") == []
    (warning,) = clock.reclaim.warnings("alice").values()
    assert warning.stopped_at is None


def test_off_by_default(ledger, lab):
    lab.sessions = [gpu_session("alice")]
    clock = Clock(ledger, site({"idle_seconds": 0}), lab)
    clock.run(3000)
    assert clock.reclaim.warnings() == {} and lab.stopped == []


@pytest.mark.parametrize(
    "reclaim, profiles, problem",
    [
        ({"cpu_profile": "gpu"}, None,
         "quota.reclaim.cpu_profile: 'gpu' is not one of the profiles without GPUs (cpu)"),
        ({"idle_seconds": 60}, [{"name": "gpu", "cores": 1, "memory": "1G", "gpus": 1}],
         "quota.reclaim.idle_seconds: idle GPU sessions continue on a profile without GPUs"),
        ({"idle_threshold_percent": 101}, None, "quota.reclaim.idle_threshold_percent: "),
        ({"exempt": [""]}, None, "quota.reclaim.exempt: '' is not a hub user name"),
    ],
)  # fmt: skip
def test_settings_name_the_key_at_fault(reclaim, profiles, problem):
    profiles = profiles or [{"name": "cpu", "cores": 1, "memory": "1G"},
                            {"name": "gpu", "cores": 1, "memory": "1G", "gpus": 1}]  # fmt: skip
    with pytest.raises(SettingsError) as e:
        parse_settings({"quota": {"reclaim": reclaim}, "profiles": profiles})
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_profile_reclaim_period_must_not_be_negative():
    with pytest.raises(SettingsError) as e:
        site(reclaim_idle_seconds=-1)
    assert e.value.problems[0].startswith("profiles[1].reclaim_idle_seconds:")


def test_the_cpu_profile_is_the_first_without_gpus_unless_named():
    assert site().reclaim_cpu_profile.name == "cpu"


def test_idle_runs_read_tick_by_tick_agree_with_utilisation_idle_for(ledger):
    """IdleReadings keeps each session's idle run from the readings written since the last
    tick (one query for all); it must say what utilisation.idle_for says from the whole
    record, with busy readings and gaps (the service down) among them."""
    import random

    from shangzhuang.quota.reclaim import IdleReadings

    rng = random.Random(15)
    consumers = [f"lab:u{i}/@1" for i in range(6)]
    watched = dict.fromkeys(consumers)
    readings, now, longest = IdleReadings(threshold=10), T0, 0.0
    for tick in range(150):
        now += TICK
        with ledger._write() as conn:
            for c in consumers:
                if rng.random() < 0.1:
                    continue  # no reading this tick: a gap
                percent = rng.choice([0, 3, 9, 9.9, 10, 50]) if rng.random() < 0.3 else 2
                utilisation.record(conn, c, "u", now, percent, seconds=TICK)
            if tick == 70:  # a restarted service: a new reader seeds from the ledger
                readings = IdleReadings(threshold=10)
            readings.update(conn, watched, {}, now)
            for c in consumers:
                run = readings.runs.get(c)
                ours = run.seconds_to(now) if run else 0.0
                assert ours == pytest.approx(utilisation.idle_for(conn, c, 10, now)), (tick, c)
                longest = max(longest, ours)
    assert longest >= 5 * TICK  # runs long enough to matter were compared


def test_the_continue_on_cpu_page_warns_only_of_the_run_that_is_running(ledger, lab):
    """The continue-on-CPU page says a session stops at such a time only while the run
    warned is running: not once reclaim stopped it (its warning is kept a day for the home
    page), not for a later run of the same server, and on Slurm only for the same job.
    The hub's server models are written as the hub's API gives them."""
    from datetime import UTC, datetime

    from shangzhuang.quota.continue_on_cpu import in_force

    session = gpu_session("alice")
    lab.sessions = [session]
    clock = Clock(ledger, site(), lab)
    clock.run(660)  # warned, not yet stopped
    (warning,) = clock.reclaim.warnings("alice").values()
    started = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    running = {"ready": True, "started": started}
    assert in_force(warning, running)
    assert not in_force(warning, {**running, "started": "2026-12-01T05:00:00.000000Z"})
    assert not in_force(warning, {"ready": False, "started": None})  # stopped
    assert not in_force(warning, None)  # no such server
    clock.run(300)  # the grace is over: stopped
    (stopped,) = clock.reclaim.warnings("alice").values()
    assert stopped.stopped_at is not None and not in_force(stopped, running)
    job = type(warning)("job:101", "ida", T0, T0, T0 + 300, server="")
    assert in_force(job, {"ready": True, "started": started, "state": {"job_id": "101"}})
    assert not in_force(job, {"ready": True, "started": started, "state": {"job_id": "105"}})
