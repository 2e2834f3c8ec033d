import os

import pytest

from .hub import RunningHub, workdir


@pytest.fixture(scope="module")
def hub():
    """One real workbench (hub, proxy, 2 fake GPUs) per test module."""
    with RunningHub(workdir()) as h:
        yield h


root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="per-user Unix accounts need the hub to run as root"
)
