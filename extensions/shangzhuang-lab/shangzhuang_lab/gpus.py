"""Live use of this session's GPUs through NVML.

The session's GPUs are the ones the workbench gave it: $CUDA_VISIBLE_DEVICES (UUIDs, or
NVML indices with CUDA_DEVICE_ORDER=PCI_BUS_ID) or, failing that, $SHANGZHUANG_GPUS (pool
indices, which are NVML indices). Never NVML index 0 by default: with neither set, the
session has no GPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from .i18n import trans

_init_lock = threading.Lock()
_initialised = False


def session_gpu_ids(env: Mapping[str, str] = os.environ) -> list[str]:
    """This session's GPUs as UUIDs or NVML indices (strings), in the order CUDA sees them."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        raw = env.get("SHANGZHUANG_GPUS", "")
    ids = [x.strip() for x in raw.split(",") if x.strip()]
    # CUDA stops at the first invalid entry ("-1" hides every GPU); do the same.
    out = []
    for x in ids:
        if x.startswith(("GPU-", "MIG-")) or x.isdigit():
            out.append(x)
        else:
            break
    return out


def _nvml():
    global _initialised
    import pynvml

    with _init_lock:
        if not _initialised:
            pynvml.nvmlInit()
            _initialised = True
    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus(env: Mapping[str, str] = os.environ) -> dict:
    """{"gpus": [...], "message": ...}: utilisation and memory of each of this session's GPUs.

    Blocking (NVML calls): run it in a thread from the event loop."""
    ids = session_gpu_ids(env)
    if not ids:
        return {"gpus": [], "message": trans.gettext("no GPU in this session")}
    try:
        nvml = _nvml()
    except Exception as e:  # no driver, no library: say so, the quota still shows
        message = trans.gettext("GPU figures unavailable: NVML could not start ({error})")
        return {"gpus": [], "message": message.format(error=e)}
    gpus, problems = [], []
    for gid in ids:
        try:
            if gid.isdigit():
                handle = nvml.nvmlDeviceGetHandleByIndex(int(gid))
            else:
                handle = nvml.nvmlDeviceGetHandleByUUID(gid)
            gpus.append(_read(nvml, handle))
        except Exception as e:
            problems.append(f"GPU {gid}: {e}")
    return {"gpus": gpus, "message": "; ".join(problems) or None}


def _read(nvml, handle) -> dict:
    def maybe(fn):
        try:
            return fn()
        except Exception:  # a figure this GPU does not report (MIG, old driver)
            return None

    util = maybe(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    mem = maybe(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    return {
        "index": maybe(lambda: int(nvml.nvmlDeviceGetIndex(handle))),
        "uuid": _text(maybe(lambda: nvml.nvmlDeviceGetUUID(handle)) or ""),
        "name": _text(maybe(lambda: nvml.nvmlDeviceGetName(handle)) or "GPU"),
        "utilization_percent": None if util is None else float(util),
        "memory_used_bytes": None if mem is None else int(mem.used),
        "memory_total_bytes": None if mem is None else int(mem.total),
    }
