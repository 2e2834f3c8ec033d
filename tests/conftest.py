"""How `make test` splits the suite between its two pytest workers (tests/run.sh).

Most of a test's time is spent waiting for a hub, a Lab, a browser or Slurm, so two
workers share CI's two cores. Each module runs whole on one worker (its module-scoped
hub is started once); the modules marked `xdist_group("slurm")` share one worker, one
after another, because every LocalSlurm on this host uses the same node names and
cgroups. That group is handed out first: it is the longest.
"""

from __future__ import annotations

import pytest

SERIAL_FIRST = "slurm"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # A stable sort: the order inside each module is kept.
    items.sort(key=lambda item: group(item) != SERIAL_FIRST)


def group(item: pytest.Item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return mark.kwargs.get("name") or mark.args[0]
