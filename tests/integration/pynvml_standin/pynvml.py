"""A stand-in for NVML's Python bindings (nvidia-ml-py's `pynvml`), because the test
machines have no GPU: the test hub puts this folder first on the quota service's
PYTHONPATH (tests/integration/hub.py, `nvml_readings`), and the product's code imports
`pynvml` as it would on a GPU node.

Readings come from the JSON file named by $SZ_TEST_NVML_READINGS, read again whenever it
changes, so a test can change them:
{"gpus": [{"uuid": "GPU-...", "utilisation": 3, "memory_mib": 512}, ...]}, one per NVML
index. Only the calls the workbench makes are here.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


_read: dict[tuple[str, int], list[dict]] = {}  # the file, by path and mtime


def _gpus() -> list[dict]:
    path = os.environ.get("SZ_TEST_NVML_READINGS", "")
    if not path:
        raise NVMLError("no driver (the stand-in has no readings file)")
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _read:
        with open(path) as f:
            _read.clear()
            _read[key] = json.load(f)["gpus"]
    return _read[key]


def nvmlInit() -> None:
    _gpus()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus()):
        raise NVMLError(f"no GPU at index {index}")
    return index


def nvmlDeviceGetHandleByUUID(uuid: str | bytes) -> int:
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    for i, g in enumerate(_gpus()):
        if g.get("uuid") == uuid:
            return i
    raise NVMLError(f"no GPU {uuid}")


def nvmlDeviceGetUUID(handle: int) -> str:
    return _gpus()[handle].get("uuid", f"GPU-standin-{handle}")


def nvmlDeviceGetMinorNumber(handle: int) -> int:
    return handle


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=int(_gpus()[handle]["utilisation"]), memory=0)


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    used = int(_gpus()[handle].get("memory_mib", 0)) * 2**20
    total = 80 * 2**30
    return SimpleNamespace(used=used, total=total, free=total - used)
