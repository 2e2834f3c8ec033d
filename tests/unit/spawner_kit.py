"""The real `LocalSpawner`, cheap to build in unit tests (no hub, no database)."""

from __future__ import annotations

from types import SimpleNamespace

from shangzhuang.hub.gpus import Gpu, GpuPool
from shangzhuang.hub.spawners import LocalSpawner
from shangzhuang.settings import Profile

# What Spawner.get_env reads from the hub object.
HUB = SimpleNamespace(public_host="", api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/")


class PoolSpawner(LocalSpawner):
    """`LocalSpawner` handed its `GpuPool` directly.

    In the hub every LocalSpawner finds the process's one pool through
    `shared_pool(self.gpus)`, a module-level cache that lives as long as the process. A test
    that plays a hub restart needs a fresh pool, as a new hub process has: it passes one
    here. Everything else (owner, get_state, load_state, clear_state, start, poll) is the
    real code.
    """

    def __init__(self, pool: GpuPool, **kwargs):
        self._pool = pool
        super().__init__(**kwargs)

    @property
    def gpu_pool(self) -> GpuPool:
        return self._pool


def gpus(count: int) -> list[Gpu]:
    return [Gpu(index=i, uuid=f"GPU-{i:04d}") for i in range(count)]


def profile(name: str, n_gpus: int = 0, cores: float = 1, memory: str = "1G", **fields) -> Profile:
    return Profile(name=name, cores=cores, memory=memory, gpus=n_gpus, **fields)


def make_spawner(pool: GpuPool, user: str = "ana", server: str = "", **traits) -> PoolSpawner:
    """A spawner for `user`'s server `server`, running sessions as the hub's own account."""
    traits.setdefault("isolate", False)
    return PoolSpawner(
        pool,
        user=SimpleNamespace(name=user, url=f"/user/{user}/"),
        # Spawner.name is the database row's: a stand-in row with no server.
        orm_spawner=SimpleNamespace(
            name=server, display_name=server, server=None, last_activity=None
        ),
        hub=HUB,
        **traits,
    )
