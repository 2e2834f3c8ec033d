"""A session at work is active, even with the browser closed.

The hub's idle culler (jupyterhub-idle-culler) stops a session by the activity that
jupyterhub-singleuser reports, and jupyter_server 2 counts a kernel's messages as activity:
a cell that computes for hours without printing sends one "busy" at its start and nothing
more, so a long training run looked idle and was culled once its browser was closed.

Every `check_seconds` this marks the session active while one of its kernels is busy or
one of its GPUs is used at or over `busy_gpu_percent` (a training script run from a
terminal): `ServerApp.last_activity()` counts every web_app setting whose name ends in
`_last_activity` (jupyter_server 2.x, serverapp.py), which is that hook's documented use.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from tornado.ioloop import IOLoop, PeriodicCallback

from .gpus import read_gpus

SETTING = "shangzhuang_busy_last_activity"


def check_seconds(env=os.environ) -> float:
    """Half the interval at which the session tells the hub (JUPYTERHUB_ACTIVITY_INTERVAL,
    300 s by default), at most 30 s: a busy stretch reaches the hub's next report."""
    try:
        interval = float(env.get("JUPYTERHUB_ACTIVITY_INTERVAL", "300"))
    except ValueError:
        interval = 300.0
    return min(30.0, max(1.0, interval / 2))


def busy_gpu_percent(env=os.environ) -> float | None:
    """The site's line between idle and busy GPUs (quota.reclaim.idle_threshold_percent,
    which the hub passes as SHANGZHUANG_GPU_BUSY_PERCENT); None: GPUs are not watched."""
    try:
        return float(env["SHANGZHUANG_GPU_BUSY_PERCENT"])
    except (KeyError, ValueError):
        return None


def kernels_busy(kernel_manager) -> bool:
    return any(k.get("execution_state") == "busy" for k in kernel_manager.list_kernels())


def gpus_busy(threshold: float | None) -> bool:
    if threshold is None:
        return False
    readings = read_gpus().get("gpus") or []
    return any((g.get("utilization_percent") or 0) >= threshold for g in readings)


def watch(web_app, kernel_manager, log) -> PeriodicCallback:
    """Start marking the session active while it works; returns the running callback."""
    threshold = busy_gpu_percent()

    async def check() -> None:
        try:
            busy = kernels_busy(kernel_manager) or await IOLoop.current().run_in_executor(
                None, gpus_busy, threshold
            )
        except Exception as e:  # a failed look is no activity; the next one may work
            log.debug("shangzhuang_lab: activity check failed: %s", e)
            return
        if busy:
            web_app.settings[SETTING] = datetime.now(UTC)

    callback = PeriodicCallback(check, check_seconds() * 1000)
    callback.start()
    return callback
