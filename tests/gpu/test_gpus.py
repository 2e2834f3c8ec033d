"""On a real NVIDIA GPU: NVML detection and the CUDA_VISIBLE_DEVICES the spawner hands out.

Skipped, saying so, where NVML finds no GPU (every CI machine here). Run on the H200
test machine with `PYTHONPATH=src python -m pytest tests/gpu`.
"""

import os
import subprocess
import sys

import pytest

from shangzhuang.hub.gpus import GpuPool, detect_gpus

pytestmark = pytest.mark.gpu

GPUS = detect_gpus()
if not GPUS:
    pytest.skip("no NVIDIA GPU found through NVML on this machine", allow_module_level=True)

PROBE = """
import json, torch
n = torch.cuda.device_count()
uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(n)]
print(json.dumps({"count": n, "uuids": uuids}))
"""


def visible(cuda_visible: str) -> dict:
    pytest.importorskip("torch", reason="torch is needed to see what CUDA exposes")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": cuda_visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_nvml_finds_gpus_with_uuid_and_device_file():
    for gpu in GPUS:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.device is not None and gpu.device.exists(), gpu.device


def test_session_sees_exactly_its_gpu_by_uuid():
    pool = GpuPool(GPUS)
    (gpu,) = pool.allocate("alice/", 1)
    seen = visible(gpu.cuda_id)
    assert seen["count"] == 1
    assert gpu.uuid.removeprefix("GPU-") == seen["uuids"][0].removeprefix("GPU-")


def test_cpu_session_sees_no_gpu():
    assert visible("")["count"] == 0
