"""The spawner's side of metering when the hub dies in the middle of a stop (kill -9, as
bench/load.py's hub fault does at 50 users): the restarted hub finds the session dead and
must close its charge where the stop began, not at the meter's last mark (up to a
sampling interval earlier). The spawner is the real LocalSpawner with the hub's real
database (JupyterHub's orm on SQLite in memory); the Lab is a real process that ignores SIGINT, so
the stop is still under way when the hub "dies" (its stop task cancelled). The quota
service is nobody (port 1): the close waits in the hub's real queue, where it is read."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

from jupyterhub import orm
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from shangzhuang.hub.gpus import GpuPool
from shangzhuang.quota.consumers import Consumer

from .spawner_kit import HUB, PoolSpawner

LAB = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(120)"
)


def spawner_of(db, quota_url: str) -> PoolSpawner:
    """A hub's spawner for ana's server, on the hub's database row (as a hub builds it)."""
    row = db.query(orm.Spawner).one()
    return PoolSpawner(
        GpuPool([]), user=SimpleNamespace(name="ana", url="/user/ana/"), orm_spawner=row,
        hub=HUB, isolate=False, quota_url=quota_url, quota_token="hub-token",
        interrupt_timeout=30,
    )  # fmt: skip


def test_a_hub_killed_mid_stop_charges_the_session_up_to_the_stop():
    engine = create_engine("sqlite://", poolclass=StaticPool)  # in memory, one connection
    orm.Base.metadata.create_all(engine)
    hub_db = sessionmaker(bind=engine)
    db = hub_db()
    user = orm.User(name="ana")
    db.add(user)
    db.add(orm.Spawner(user=user, name=""))
    db.commit()
    quota_url = f"http://127.0.0.1:1/services/quota/{uuid.uuid4().hex}/"  # nobody answers
    lab = subprocess.Popen([sys.executable, "-c", LAB], stdout=subprocess.PIPE, text=True)
    assert lab.stdout.readline() == "ready\n"
    consumer = Consumer.session("lab", "ana", "", time.time() - 60)

    async def hub_killed_mid_stop() -> tuple[float, float]:
        spawner = spawner_of(db, quota_url)
        spawner.proc, spawner.pid, spawner.consumer = lab, lab.pid, str(consumer)
        spawner.orm_spawner.state = spawner.get_state()  # as JupyterHub saves it at start
        db.commit()
        t0 = time.time()
        stopping = asyncio.ensure_future(spawner.stop())
        await asyncio.sleep(0.5)  # SIGINT sent and ignored: the stop waits for the Lab
        t1 = time.time()
        stopping.cancel()  # the hub is killed -9 here: nothing after this line of it runs
        return t0, t1

    t0, t1 = asyncio.run(hub_killed_mid_stop())
    db.rollback()  # what the killed hub had not committed is lost
    lab.kill()  # the Lab ends meanwhile (its SIGTERM came, say), reaped by init
    lab.wait()

    async def hub_restarted():
        # The new hub reads the state the killed one left in the database; the Lab's pid
        # answers no more, so JupyterHub's check finds the session dead (User.stop).
        again = hub_db()  # a session of its own: what was committed, nothing else
        spawner = spawner_of(again, quota_url)
        spawner.load_state(spawner.orm_spawner.state)
        assert spawner.consumer == str(consumer)
        assert await spawner.poll() == 0
        return spawner.quota.undelivered

    (close,) = [c for c in asyncio.run(hub_restarted()) if c.path == "/consumers/close"]
    assert close.body["consumer"] == str(consumer)
    # Charged up to when the stop began (the Lab was alive then), not left to the meter's
    # last mark (end None), which may be up to quota.sample_seconds before it.
    assert close.body["end"] is not None, close.body
    assert t0 <= close.body["end"] <= t1
