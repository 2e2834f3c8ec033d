"""A real workbench whose new homes get every tutorial ([tutorials]), with a quota that
is metered every second so the notebooks' charges show up while the tests run."""

import pytest

from tests.integration.hub import RunningHub, workdir

TUTORIALS = [
    "01-welcome.ipynb",
    "02-train-on-a-gpu.ipynb",
    "03-scale-out-with-dask.ipynb",
    "04-share-a-voila-app.ipynb",
    "shapes.py",
]
SITE = "[tutorials]\ncopy_to_new_homes = [" + ", ".join(f'"{t}"' for t in TUTORIALS) + "]\n"
QUOTA = """
sample_seconds = 1
[quota.accounts.default]
cpu_hours = 100
gpu_hours = 10
"""


@pytest.fixture(scope="package")
def hub():
    with RunningHub(workdir(), quota=QUOTA, extra_toml=SITE) as h:
        yield h
