"""This session's GPUs through real NVML, as the quota panel reads them (shangzhuang_lab.gpus).

Runs where an NVIDIA GPU and its driver are present and is skipped elsewhere; on the H200
test machine: `bash tests/lab/run-on-device.sh` (no jupyter_server there, so it imports
only the NVML module, from the source tree, and runs with --noconftest).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

pynvml = pytest.importorskip("pynvml")


def _gpus_module():
    """shangzhuang_lab/gpus.py from the source tree, by path: no jupyter_server needed, and
    sys.path stays as it was (other tests check the installed package). Its package is
    loaded under another name first, for gpus.py's relative import of .i18n."""
    package = ROOT / "extensions" / "shangzhuang-lab" / "shangzhuang_lab"
    name = "shangzhuang_lab_source"
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
    return importlib.import_module(f"{name}.gpus")


ROOT = Path(__file__).resolve().parents[2]
_gpus = _gpus_module()
read_gpus = _gpus.read_gpus
NO_GPU = "no GPU in this session"

MiB = 2**20


def smi() -> list[dict]:
    """What nvidia-smi says about every GPU: the reference the panel must agree with."""
    if not shutil.which("nvidia-smi"):
        pytest.skip("no nvidia-smi: no NVIDIA driver here")
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.used",
         "--format=csv,noheader,nounits"],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"nvidia-smi failed: {out.stderr.strip()}")
    gpus = []
    for line in out.stdout.strip().splitlines():
        index, uuid, name, total, used = (x.strip() for x in line.split(","))
        gpus.append({"index": int(index), "uuid": uuid, "name": name,
                     "total": int(total) * MiB, "used": int(used) * MiB})  # fmt: skip
    if not gpus:
        pytest.skip("nvidia-smi lists no GPU")
    return gpus


def test_the_session_gpu_by_uuid_is_that_gpu():
    for gpu in smi():
        got = read_gpus({"CUDA_VISIBLE_DEVICES": gpu["uuid"], "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                         "SHANGZHUANG_GPUS": str(gpu["index"])})  # fmt: skip
        assert got["message"] is None, got
        (g,) = got["gpus"]
        assert (g["index"], g["uuid"], g["name"]) == (gpu["index"], gpu["uuid"], gpu["name"])
        assert abs(g["memory_total_bytes"] - gpu["total"]) < MiB
        assert 0 <= g["utilization_percent"] <= 100
        assert 0 <= g["memory_used_bytes"] <= g["memory_total_bytes"]


def test_pool_index_and_numeric_cuda_ids_are_nvml_indices():
    gpu = smi()[-1]
    by_pool = {"SHANGZHUANG_GPUS": str(gpu["index"])}
    by_cuda = {"CUDA_VISIBLE_DEVICES": str(gpu["index"]), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    for env in (by_pool, by_cuda):
        (g,) = read_gpus(env)["gpus"]
        assert g["uuid"] == gpu["uuid"]


def test_a_cpu_session_sees_no_gpu_on_a_gpu_node():
    smi()
    assert read_gpus({"CUDA_VISIBLE_DEVICES": ""}) == {"gpus": [], "message": NO_GPU}
    assert read_gpus({}) == {"gpus": [], "message": NO_GPU}


def test_live_figures_follow_work_on_the_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    gpu = smi()[0]
    env = {"CUDA_VISIBLE_DEVICES": gpu["uuid"]}
    before = read_gpus(env)["gpus"][0]["memory_used_bytes"]
    block = torch.empty(8 * 2**30, dtype=torch.uint8, device="cuda")  # 8 GiB held
    a = torch.randn(8192, 8192, device="cuda")
    done = threading.Event()

    def burn():
        while not done.is_set():
            a @ a
            torch.cuda.synchronize()

    t = threading.Thread(target=burn)
    t.start()
    samples = []
    try:
        for _ in range(12):
            time.sleep(0.25)
            samples.append(read_gpus(env)["gpus"][0])
    finally:
        done.set()
        t.join()
    del block
    print("utilisation samples:", [s["utilization_percent"] for s in samples])
    assert max(s["memory_used_bytes"] for s in samples) >= before + 8 * 2**30 - 64 * MiB
    assert max(s["utilization_percent"] for s in samples) >= 50
