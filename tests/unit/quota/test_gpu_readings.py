"""Where GPU utilisation is read (quota/gpu_readings.py) and how the meter records it.

There is no GPU here: NVML is the test suite's stand-in `pynvml` (tests/integration/
pynvml_standin/pynvml.py, readings from a JSON file), and Slurm's GPU accounting is sstat
output recorded from a site whose slurm.conf tracks gres/gpuutil (CU Boulder's Alpine,
as its documentation prints it)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from shangzhuang.hub.gpus import Gpu
from shangzhuang.quota import utilisation
from shangzhuang.quota.gpu_readings import NodeGpus, parse_sstat
from shangzhuang.quota.meter import Meter
from tests.unit.quota.test_meter import FakeSource

STANDIN = Path(__file__).parents[2] / "integration" / "pynvml_standin" / "pynvml.py"

# `sstat -a -n -P -o JobID,TRESUsageInAve -j 18194943,18194950`: the job's own line is
# empty; the batch step runs the Lab (GPU memory in bytes); one job on a GPU Slurm can't read.
SSTAT = """\
18194943||
18194943.batch|cpu=00:56:24,energy=0,fs/disk=350130624578,gres/gpumem=40777023488,gres/gpuutil=100,mem=10621726720,pages=3465,vmem=10439041024|
18194943.extern|cpu=00:00:00,energy=0,fs/disk=5273,gres/gpumem=0,gres/gpuutil=0,mem=262144,pages=0,vmem=0|
18194950.batch|cpu=00:01:00,gres/gpumem=0,gres/gpuutil=inf,mem=1M|
18194951.0|cpu=00:01:00,gres/gpumem=2G,gres/gpuutil=7,mem=1M|
"""  # noqa: E501


def test_slurm_gpu_accounting_is_read_from_the_busiest_step_of_each_job():
    readings = parse_sstat(SSTAT)
    assert readings["18194943"] == pytest.approx((100.0, 40777023488 / 2**20))
    assert "18194950" not in readings  # "inf": Slurm could not read that GPU
    assert readings["18194951"] == (7.0, 2048.0)


@pytest.fixture
def nvml(tmp_path, monkeypatch):
    """The stand-in NVML as `pynvml`, reading a file the test writes."""
    spec = importlib.util.spec_from_file_location("pynvml", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    readings = tmp_path / "nvml.json"
    monkeypatch.setenv("SZ_TEST_NVML_READINGS", str(readings))

    def write(*gpus: dict) -> None:
        readings.write_text(json.dumps({"gpus": list(gpus)}))

    return write


def test_each_session_reads_the_gpus_the_pool_gave_it(nvml):
    nvml(
        {"uuid": "GPU-a", "utilisation": 90, "memory_mib": 1000},
        {"uuid": "GPU-b", "utilisation": 10, "memory_mib": 24},
        {"uuid": "GPU-c", "utilisation": 3, "memory_mib": 0},
    )
    # The pool's index 0 is NVML's GPU-c (found by UUID); index 1 has no UUID: NVML's 1.
    node = NodeGpus([Gpu(0, "GPU-c"), Gpu(1)])
    assert node.read({"lab:a/@1": [0], "lab:b/@1": [0, 1]}) == {
        "lab:a/@1": (3.0, 0.0),
        "lab:b/@1": (6.5, 24.0),  # the mean of its GPUs, the sum of their memory
    }
    # A GPU that is not in the pool (a state from another node's config): not read.
    assert node.read({"lab:c/@1": [7]}) == {}


def test_without_nvml_nothing_is_read_and_it_is_said_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no nvidia-ml-py
    node = NodeGpus([Gpu(0)])
    assert node.read({"lab:a/@1": [0]}) == {}
    assert node.read({"lab:a/@1": [0]}) == {}
    said = [r for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert len(said) == 1


class ReadingSource(FakeSource):
    """FakeSource whose GPU sessions read `percent` (as NVML would on the node)."""

    def __init__(self):
        super().__init__()
        self.percent: dict[str, float] = {}

    async def utilisation(self, runs):
        return {r.consumer: (self.percent[r.consumer], None) for r in runs}


def test_the_meter_records_gpu_sessions_readings_and_counts_idle_gpu_hours(ledger):
    source = ReadingSource()
    meter = Meter(ledger, [source], grace_seconds=300, sample_seconds=60)
    t0 = 1_790_000_000.0
    gpu = source.start("alice", t0, gpus=2)
    cpu = source.start("bob", t0, gpus=0)
    source.percent = {gpu: 4.0, cpu: 50.0}
    reports = [asyncio.run(meter.tick(t0 + 60 * i)) for i in range(1, 4)]
    assert [r.sampled for r in reports] == [1, 1, 1]  # bob's Lab has no GPU: not read
    # alice is charged to physics (the test policy): 2 GPUs x 60 s under 10% each tick
    assert reports[-1].idle_gpu_hours == {"physics": pytest.approx(2 * 60 / 3600)}
    with ledger._read() as conn:
        assert utilisation.recent(conn, gpu, t0) == [(t0 + 60 * i, 4.0) for i in range(1, 4)]
        assert utilisation.recent(conn, cpu, t0) == []
        assert utilisation.idle_for(conn, gpu, 10, t0 + 180) == pytest.approx(120)
