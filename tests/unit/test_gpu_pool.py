"""GpuPool, and the local backend's sessions holding GPUs through starts, stops, crashes
and hub restarts: each GPU goes to at most one session, and none is ever lost."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from jupyterhub.spawner import SpawnException
from traitlets.config import Config

from shangzhuang.hub.gpus import Gpu, GpuPool, GpusBusy
from shangzhuang.hub.spawners import LocalSpawner
from shangzhuang.settings import DEFAULT_CONFIG, parse_settings
from tests.unit.spawner_kit import gpus, make_spawner, profile

# A session process that stays up until killed and, like a Lab, listens on its port (the
# spawner's start() returns once the session accepts connections).
SLEEPER = [
    sys.executable, "-c",
    "import os, socket, time, urllib.parse\n"
    "url = urllib.parse.urlparse(os.environ['JUPYTERHUB_SERVICE_URL'])\n"
    "s = socket.socket(); s.bind((url.hostname, url.port)); s.listen(); time.sleep(600)",
]  # fmt: skip


def indices(held: list[Gpu]) -> list[int]:
    return [g.index for g in held]


def environ(pid: int) -> dict[str, str]:
    """The environment a running process actually got."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def reap(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=10)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Sessions not isolated by Unix account live in ~/shangzhuang-homes: keep that here."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


# --- GpuPool --------------------------------------------------------------------------


def test_allocates_lowest_indices_first_whatever_the_listing_order():
    pool = GpuPool([Gpu(2), Gpu(0), Gpu(3), Gpu(1)])
    assert indices(pool.allocate("ana/", 2)) == [0, 1]
    assert indices(pool.allocate("bo/", 1)) == [2]
    pool.release("ana/")
    assert indices(pool.allocate("cy/", 1)) == [0]
    assert indices(pool.free()) == [1, 3]
    assert pool.holders() == {0: "cy/", 2: "bo/"}
    assert indices(pool.held_by("bo/")) == [2]


def test_zero_gpus_takes_nothing():
    pool = GpuPool(gpus(2))
    assert pool.allocate("ana/", 0) == []
    assert pool.holders() == {}


def test_an_owner_gets_gpus_once():
    pool = GpuPool(gpus(4))
    pool.allocate("ana/", 1)
    with pytest.raises(ValueError, match=r"ana/ already holds GPUs \[0\]"):
        pool.allocate("ana/", 1)
    assert pool.holders() == {0: "ana/"}


def test_busy_on_a_node_without_gpu():
    with pytest.raises(GpusBusy) as busy:
        GpuPool([]).allocate("ana/", 1)
    assert str(busy.value) == "This node has no GPU; the profile asks for 1 GPU."
    assert (busy.value.wanted, busy.value.total, busy.value.free) == (1, 0, 0)


def test_busy_when_all_gpus_are_in_use():
    pool = GpuPool(gpus(2))
    pool.allocate("ana/", 2)
    with pytest.raises(GpusBusy) as busy:
        pool.allocate("bo/", 1)
    assert str(busy.value) == (
        "All 2 GPUs of this node are in use; try again when one is released."
    )
    assert (busy.value.wanted, busy.value.total, busy.value.free) == (1, 2, 0)
    assert pool.held_by("bo/") == []


def test_busy_messages_read_well_for_one_gpu_and_for_too_many():
    one = GpuPool(gpus(1))
    one.allocate("ana/", 1)
    with pytest.raises(GpusBusy) as busy:
        one.allocate("bo/", 1)
    assert str(busy.value) == "The only GPU of this node is in use; try again when one is released."
    with pytest.raises(GpusBusy) as busy:
        GpuPool(gpus(1)).allocate("bo/", 2)
    assert str(busy.value) == "The profile asks for 2 GPUs but this node has only 1 GPU."


def test_busy_when_fewer_are_free_than_asked_takes_nothing():
    pool = GpuPool(gpus(4))
    pool.allocate("ana/", 3)
    with pytest.raises(GpusBusy) as busy:
        pool.allocate("bo/", 2)
    assert str(busy.value) == (
        "The profile asks for 2 GPUs but only 1 of this node's 4 GPUs is free."
    )
    assert (busy.value.wanted, busy.value.total, busy.value.free) == (2, 4, 1)
    assert pool.holders() == {0: "ana/", 1: "ana/", 2: "ana/"}  # bo got no partial share


def test_release_is_idempotent():
    pool = GpuPool(gpus(3))
    pool.allocate("ana/", 2)
    assert indices(pool.release("ana/")) == [0, 1]
    assert pool.release("ana/") == []
    assert pool.release("nobody/") == []
    assert indices(pool.free()) == [0, 1, 2]


def test_restore_after_restart_rebuilds_the_pool():
    before = GpuPool(gpus(4))
    before.allocate("ana/", 1)
    before.allocate("bo/big", 2)
    saved = {owner: indices(before.held_by(owner)) for owner in ("ana/", "bo/big")}

    after = GpuPool(gpus(4))  # the new hub process
    for owner, held in saved.items():
        after.restore(owner, held)
    assert after.holders() == before.holders()
    assert indices(after.allocate("cy/", 1)) == [3]


def test_restore_is_idempotent_for_the_same_owner():
    pool = GpuPool(gpus(2))
    assert indices(pool.restore("ana/", [1])) == [1]
    assert indices(pool.restore("ana/", [1])) == [1]
    assert pool.holders() == {1: "ana/"}


def test_restore_drops_conflicts_and_gpus_the_node_lost(caplog):
    pool = GpuPool(gpus(2))
    with caplog.at_level(logging.WARNING, logger="shangzhuang.hub.gpus"):
        assert indices(pool.restore("ana/", [0])) == [0]
        assert indices(pool.restore("bo/", [0, 1, 7])) == [1]
    assert pool.holders() == {0: "ana/", 1: "bo/"}
    assert "bo/ held GPU 0, already restored to ana/; dropped" in caplog.text
    assert "bo/ held GPU 7, which this node no longer has" in caplog.text


def test_cuda_id_prefers_the_stable_uuid():
    assert Gpu(3, uuid="GPU-1234").cuda_id == "GPU-1234"
    assert Gpu(3).cuda_id == "3"


# --- LocalSpawner: the GPUs in its state ------------------------------------------------


def test_spawner_state_round_trip_through_a_restart():
    pool = GpuPool(gpus(2))
    ana = make_spawner(pool, "ana", "big")
    assert ana.owner == "ana/big"
    pool.allocate(ana.owner, 2)
    ana.pid = 4242
    assert ana.get_state() == {"pid": 4242, "gpus": [0, 1]}

    new_pool = GpuPool(gpus(2))
    again = make_spawner(new_pool, "ana", "big")
    again.load_state({"pid": 4242, "gpus": [0, 1]})
    assert again.pid == 4242
    assert new_pool.holders() == {0: "ana/big", 1: "ana/big"}
    again.clear_state()
    assert new_pool.holders() == {}
    assert again.get_state() == {}


def test_a_session_without_gpus_saves_no_gpus_key():
    pool = GpuPool(gpus(2))
    ana = make_spawner(pool)
    ana.pid = 7
    assert ana.get_state() == {"pid": 7}
    make_spawner(pool, "bo").load_state({"pid": 8})
    assert pool.holders() == {}


def test_two_saved_states_claiming_one_gpu_keep_one_holder():
    pool = GpuPool(gpus(2))
    ana, bo = make_spawner(pool, "ana"), make_spawner(pool, "bo")
    ana.load_state({"pid": 1, "gpus": [0]})
    bo.load_state({"pid": 2, "gpus": [0]})
    assert pool.holders() == {0: "ana/"}
    assert bo.get_state() == {"pid": 2}


def test_spawners_of_one_hub_config_share_one_pool(tmp_path):
    """As the hub builds them: from the traitlets config `configure` fills in."""
    from shangzhuang.hub import configure

    doc = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["hub"]["state_dir"] = str(tmp_path / "state")
    # UUIDs unique to this test: the hub's pool is per process, keyed by the GPU list.
    doc["backend"]["local"]["gpus"] = [
        {"index": i, "uuid": f"GPU-{tmp_path.name}-{i}"} for i in range(2)
    ]
    c = Config()
    configure(c, parse_settings(doc, tmp_path / "shangzhuang.toml"))

    def spawner(user: str) -> LocalSpawner:
        return LocalSpawner(config=c, user=SimpleNamespace(name=user))

    ana, bo = spawner("ana"), spawner("bo")
    assert ana.gpu_pool is bo.gpu_pool
    assert ana.gpu_pool.total == 2
    ana.gpu_pool.allocate(ana.owner, 2)
    with pytest.raises(GpusBusy):
        bo.gpu_pool.allocate(bo.owner, 1)
    ana.clear_state()
    assert indices(spawner("cy").gpu_pool.free()) == [0, 1]


# --- LocalSpawner: real session processes -----------------------------------------------


def test_start_gives_the_session_its_gpus_and_poll_frees_them_when_it_dies(home):
    pool = GpuPool(gpus(2))
    spawner = make_spawner(pool, cmd=SLEEPER, profiles=[profile("gpu-1", 1)])
    spawner.user_options = {"profile": "gpu-1"}
    try:
        asyncio.run(spawner.start())
        assert spawner.get_state() == {"pid": spawner.pid, "gpus": [0]}
        env = environ(spawner.pid)
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0000"
        assert env["SHANGZHUANG_GPUS"] == "0"
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert env["SHANGZHUANG_PROFILE"] == "gpu-1"
        assert asyncio.run(spawner.poll()) is None
        assert pool.holders() == {0: "ana/"}

        spawner.proc.kill()  # the session dies on its own
        spawner.proc.wait(timeout=10)
        assert asyncio.run(spawner.poll()) is not None
        assert pool.holders() == {}
        assert spawner.get_state() == {}
    finally:
        reap(spawner.proc)


def test_a_cpu_session_sees_no_gpu(home):
    pool = GpuPool(gpus(2))
    spawner = make_spawner(pool, cmd=SLEEPER, profiles=[profile("cpu")])
    try:
        asyncio.run(spawner.start())
        assert environ(spawner.pid)["CUDA_VISIBLE_DEVICES"] == ""
        assert pool.holders() == {}
        assert "gpus" not in spawner.get_state()
    finally:
        reap(spawner.proc)


def test_start_refuses_with_503_when_too_few_gpus_are_free(home):
    pool = GpuPool(gpus(2))
    pool.allocate("bo/", 1)
    spawner = make_spawner(pool, cmd=SLEEPER, profiles=[profile("gpu-2", 2)])
    with pytest.raises(SpawnException) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 503
    assert refused.value.reason == "gpus-busy"
    assert refused.value.message == (
        "The profile asks for 2 GPUs but only 1 of this node's 2 GPUs is free."
    )
    assert spawner.proc is None  # nothing was started
    assert pool.holders() == {0: "bo/"}


def test_a_failed_start_gives_its_gpus_back(home):
    pool = GpuPool(gpus(2))
    spawner = make_spawner(pool, cmd=["/nonexistent/singleuser"], profiles=[profile("gpu-2", 2)])
    with pytest.raises(FileNotFoundError):
        asyncio.run(spawner.start())  # fails after allocating, at launching the process
    assert pool.holders() == {}
    assert spawner.get_state() == {}


def test_restart_restores_running_sessions_and_frees_one_that_died_meanwhile(home):
    hub1 = GpuPool(gpus(2))
    ana = make_spawner(hub1, "ana", cmd=SLEEPER, profiles=[profile("gpu-1", 1)])
    bo = make_spawner(hub1, "bo", cmd=SLEEPER, profiles=[profile("gpu-1", 1)])
    try:
        asyncio.run(ana.start())
        asyncio.run(bo.start())
        saved = {"ana": ana.get_state(), "bo": bo.get_state()}
        assert (saved["ana"]["gpus"], saved["bo"]["gpus"]) == ([0], [1])

        reap(bo.proc)  # bo's session dies while the hub is down

        hub2 = GpuPool(gpus(2))
        ana2 = make_spawner(hub2, "ana", cmd=SLEEPER, profiles=[profile("gpu-1", 1)])
        bo2 = make_spawner(hub2, "bo", cmd=SLEEPER, profiles=[profile("gpu-1", 1)])
        ana2.load_state(saved["ana"])
        bo2.load_state(saved["bo"])
        assert hub2.holders() == {0: "ana/", 1: "bo/"}  # restored before the first poll

        assert asyncio.run(ana2.poll()) is None  # found by pid: still running
        assert asyncio.run(bo2.poll()) is not None  # dead: its GPU goes back
        assert hub2.holders() == {0: "ana/"}
        assert indices(hub2.allocate("cy/", 1)) == [1]
    finally:
        reap(ana.proc)
        reap(bo.proc)


# --- the property: sessions on the local backend never share or lose a GPU --------------

SESSIONS = [("ana", ""), ("ana", "big"), ("bo", ""), ("cy", ""), ("di", "")]
MAX_GPUS = 3
PROFILES = [profile(f"gpus-{n}", n) for n in range(MAX_GPUS + 2)]


class LocalSessions(RuleBasedStateMachine):
    """Sessions of the local backend, driven through the real LocalSpawner.

    Each spawn runs the real `start()` (a `sleep` process stands in for the Lab); a crash
    kills the process; the hub notices it with the real `poll()`, which calls
    `clear_state()`. A stop kills the process and calls `clear_state()`, as
    `User.stop` does after `Spawner.stop` (stop is not called itself: after a played
    restart this test, not init, is the process's parent and would have to reap it). A
    hub restart builds a new GpuPool from the same GPU list and new spawners, each given
    the state last saved for it (`get_state()` after start or stop, as JupyterHub saves
    it) through `load_state`, crashed sessions included.
    """

    def __init__(self):
        super().__init__()
        self.procs: list[subprocess.Popen] = []
        self.spawners: dict[tuple[str, str], LocalSpawner] = {}
        self.saved: dict[tuple[str, str], dict] = {}  # the hub database's spawner state
        self.alive: dict[tuple[str, str], bool] = {}  # sessions the hub thinks are up
        self.held: dict[tuple[str, str], list[int]] = {}  # the model: who has which GPUs

    @initialize(count=st.integers(0, MAX_GPUS))
    def node(self, count):
        self.gpus = gpus(count)
        self.pool = GpuPool(list(self.gpus))

    def spawner(self, session: tuple[str, str]) -> LocalSpawner:
        if session not in self.spawners:
            user, server = session
            sp = make_spawner(self.pool, user, server, cmd=SLEEPER, profiles=PROFILES)
            sp.load_state(self.saved.get(session, {}))
            self.spawners[session] = sp
        return self.spawners[session]

    def down(self):
        return [s for s in SESSIONS if s not in self.alive]

    def running(self):
        return sorted(s for s, alive in self.alive.items() if alive)

    @precondition(lambda self: self.down())
    @rule(data=st.data(), n=st.integers(0, MAX_GPUS + 1))
    def spawn(self, data, n):
        session = data.draw(st.sampled_from(self.down()), label="session")
        sp = self.spawner(session)
        free = indices(self.pool.free())
        sp.user_options = {"profile": f"gpus-{n}"}
        sp.clear_state()  # User.spawn: a new server does not restore old state
        try:
            asyncio.run(sp.start())
        except SpawnException as refused:
            assert n > len(free), f"refused {n} GPUs with {free} free"
            assert refused.status_code == 503
            assert refused.message == str(GpusBusy(n, len(self.gpus), len(free)))
            assert self.pool.held_by(sp.owner) == []
            return
        self.procs.append(sp.proc)
        assert n <= len(free), f"gave {n} GPUs with only {free} free"
        self.saved[session] = state = sp.get_state()
        assert state.get("gpus", []) == free[:n]  # lowest free first
        assert ("gpus" in state) == (n > 0)
        visible = environ(sp.pid)["CUDA_VISIBLE_DEVICES"]
        assert visible == ",".join(self.gpus[i].cuda_id for i in free[:n])
        self.alive[session] = True
        self.held[session] = free[:n]

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def stop(self, data):
        session = data.draw(st.sampled_from(self.running()), label="session")
        sp = self.spawners[session]
        os.kill(sp.pid, signal.SIGTERM)
        self.wait(sp.pid)
        sp.clear_state()
        self.saved[session] = sp.get_state()
        assert self.saved[session] == {}
        del self.alive[session], self.held[session]

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def crash(self, data):
        session = data.draw(st.sampled_from(self.running()), label="session")
        sp = self.spawners[session]
        os.kill(sp.pid, signal.SIGKILL)
        self.wait(sp.pid)
        self.alive[session] = False  # nobody has noticed yet: it still holds its GPUs

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def poll(self, data):
        session = data.draw(st.sampled_from(sorted(self.alive)), label="session")
        sp = self.spawners[session]
        status = asyncio.run(sp.poll())
        if self.alive[session]:
            assert status is None
            return
        assert status is not None
        self.saved[session] = sp.get_state()  # User.stop saves the cleared state
        assert self.saved[session] == {}
        del self.alive[session], self.held[session]

    @rule(data=st.data())
    def hub_restart(self, data):
        self.pool = GpuPool(list(self.gpus))
        self.spawners = {}
        for session in data.draw(st.permutations(sorted(self.saved)), label="restore order"):
            self.spawner(session)

    def wait(self, pid: int) -> None:
        """Reap a session process, as init does once the hub that started it is gone."""
        proc = next(p for p in self.procs if p.pid == pid)
        proc.wait(timeout=10)

    @invariant()
    def no_gpu_is_shared_or_lost(self):
        if not hasattr(self, "pool"):
            return
        holders = self.pool.holders()
        owners = {session: self.spawners[session].owner for session in self.held}
        expected = {i: owners[s] for s, held in self.held.items() for i in held}
        assert holders == expected
        every = [i for held in self.held.values() for i in held]
        assert len(every) == len(set(every)), "a GPU held by two sessions"
        assert set(self.held) <= set(self.alive), "a GPU held by a session that is down"
        assert len(self.pool.free()) + len(holders) == self.pool.total == len(self.gpus)
        for session, sp in self.spawners.items():
            assert sp.get_state().get("gpus", []) == self.held.get(session, [])

    def teardown(self):
        for proc in self.procs:
            reap(proc)


def test_sessions_never_share_or_lose_a_gpu(home):
    run_state_machine_as_test(
        LocalSessions,
        settings=settings(max_examples=60, stateful_step_count=25, deadline=None),
    )
