"""How `make test` splits the suite between its two pytest workers (tests/run.sh).

Most of a test's time is spent waiting for a hub, a Lab, a browser or Slurm, so two
workers share CI's two cores. Each module runs whole on one worker (its module-scoped
hub is started once); the modules in SLURM_MODULES share one worker, one after another,
because every LocalSlurm on this host uses the same node names and cgroups. A new module
that starts a LocalSlurm belongs in that list. That group is handed out first: it is the
longest.

The scheduler is ours (xdist's `pytest_xdist_make_scheduler` hook), not `--dist loadgroup`:
pytest-xdist 3.8.0 marks a group by rewriting `item._nodeid`, which pytest 9.2 no longer
reads (`Node.nodeid` comes from `_id`), so the groups were silently dropped and every
test became its own unit, split across workers.
"""

from __future__ import annotations

import pytest

SLURM = "slurm"
SLURM_MODULES = {
    "tests/integration/test_slurm.py",
    "tests/notebooks/test_dask_slurm.py",
    "tests/security/test_dask.py",
    "tests/security/test_slurm.py",
}


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the Slurm group."""
    module = nodeid.split("::")[0]
    return SLURM if module in SLURM_MODULES else module


@pytest.hookimpl(optionalhook=True)  # the hook exists only where xdist is loaded
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The Slurm group first, so that the longest unit doesn't start last. A stable sort:
    # the order inside each module is kept.
    items.sort(key=lambda item: unit_of(item.nodeid) != SLURM)
