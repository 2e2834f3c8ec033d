"""Tutorial 3 on the `slurm` backend: the session is a Slurm job, its Dask workers are
Slurm jobs with a (fake) GPU each on the two test nodes (tests/slurm.py), and the
notebook finds each worker job's charges through the usage API once it has ended."""

from __future__ import annotations

import pytest

from tests.integration.hub import RunningHub, workdir
from tests.slurm import LocalSlurm

from .conftest import QUOTA, SITE
from .session import run_notebook

pytestmark = pytest.mark.integration

PROFILES = """
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
"""
CLUSTER = """
[cluster]
worker_cores = 1
worker_memory = "1G"
worker_walltime = "00:10:00"
interface = "lo"
"""


@pytest.fixture(scope="module")
def slurm_hub():
    slurm = LocalSlurm()
    slurm.start()
    hub = RunningHub(
        workdir(), slurm_conf=slurm.conf, profiles=PROFILES, quota=QUOTA,
        extra_toml=CLUSTER + SITE,
    )  # fmt: skip
    try:
        hub.start()
        yield hub, slurm
    finally:
        hub.cleanup()
        slurm.stop()


def test_03_dask_on_slurm_workers_with_gpus_and_their_charges(slurm_hub):
    hub, slurm = slurm_hub
    hub.new_user("sid")
    hub.spawn("sid", "cpu")
    hub.wait_ready("sid")
    token = hub.token_for("sid")
    run = run_notebook(hub, "sid", token, "tutorials/03-scale-out-with-dask.ipynb", size="small")
    text = run.text
    assert "backend slurm · 2 workers with 1 GPU(s) each" in text
    assert "dashboard: /user/sid/proxy/" in text
    # Each worker is a Slurm job on a test node, holding one of that node's GPUs.
    lines = [ln for ln in text.splitlines() if ln.startswith("tls://")]  # TLS-only clusters
    assert len(lines) == 2 and all("'gpus': '0'" in ln or "'gpus': '1'" in ln for ln in lines)
    assert all("'node': 'c1'" in ln or "'node': 'c2'" in ln for ln in lines), lines
    assert "2048 images in 4 partitions" in text and "4 trials in" in text
    worker_jobs = text.split("worker jobs: ", 1)[1].splitlines()[0].split(", ")
    assert len(worker_jobs) == 2 and all(j.isdigit() for j in worker_jobs), worker_jobs
    for job in worker_jobs:  # charged at 1 core and 1 GPU, found by the notebook
        line = next(ln for ln in text.splitlines() if f"job:{job} (worker job)" in ln)
        assert "cpu-seconds" in line and "gpu-seconds" in line, line
    assert "(this session)" in text
    assert not [j for j in slurm.jobs() if j["id"] in worker_jobs]  # closed by the notebook
    hub.stop_server("sid")
