"""The node's GPUs and who holds them: each GPU goes to at most one session at a time.

The pool lives in the hub process. Which session holds which GPU is also written into
each spawner's state, so after a hub restart `restore` rebuilds the pool exactly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str = ""
    device: Path | None = None  # /dev/nvidiaN, guarded while allocated

    @property
    def cuda_id(self) -> str:
        """What CUDA_VISIBLE_DEVICES should name: the UUID when known (stable), else the index."""
        return self.uuid or str(self.index)


def gpus(n: int):
    """'1 GPU', '2 GPUs' (a shangzhuang.i18n.Plural, in the reader's language when shown)."""
    from shangzhuang.i18n import Plural  # not at import: GPU test hosts run this bare

    return Plural("{n} GPU", "{n} GPUs", n)


class GpusBusy(Exception):
    """Not enough free GPUs for a request; its message is a shangzhuang.i18n.Message."""

    def __init__(self, wanted: int, total: int, free: int):
        from shangzhuang.i18n import Message, Plural

        self.wanted, self.total, self.free = wanted, total, free
        if total == 0:
            msg = Message(
                "This node has no GPU; the profile asks for {wanted}.", wanted=gpus(wanted)
            )
        elif wanted > total:
            msg = Message(
                "The profile asks for {wanted} but this node has only {total}.",
                wanted=gpus(wanted), total=gpus(total),
            )  # fmt: skip
        elif free == 0:
            msg = (
                Message("The only GPU of this node is in use; try again when one is released.")
                if total == 1
                else Message(
                    "All {n} GPUs of this node are in use; try again when one is released.", n=total
                )
            )
        else:
            msg = Plural(
                "The profile asks for {wanted} but only {n} of this node's {total} is free.",
                "The profile asks for {wanted} but only {n} of this node's {total} are free.",
                free, wanted=gpus(wanted), total=gpus(total),
            )  # fmt: skip
        self.message = msg
        super().__init__(msg)


class GpuPool:
    """Exclusive allocation of a fixed set of GPUs to owners (one owner = one session)."""

    def __init__(self, gpus: list[Gpu]):
        self.gpus = sorted(gpus, key=lambda g: g.index)
        self._by_index = {g.index: g for g in self.gpus}
        self._holder: dict[int, str] = {}

    @property
    def total(self) -> int:
        return len(self.gpus)

    def free(self) -> list[Gpu]:
        return [g for g in self.gpus if g.index not in self._holder]

    def held_by(self, owner: str) -> list[Gpu]:
        return [self._by_index[i] for i, o in sorted(self._holder.items()) if o == owner]

    def holders(self) -> dict[int, str]:
        return dict(self._holder)

    def allocate(self, owner: str, count: int) -> list[Gpu]:
        """Give `owner` `count` free GPUs (lowest indices first); raise GpusBusy if too few."""
        if self.held_by(owner):
            raise ValueError(f"{owner} already holds GPUs {[g.index for g in self.held_by(owner)]}")
        free = self.free()
        if count > len(free):
            raise GpusBusy(count, self.total, len(free))
        taken = free[:count]
        for g in taken:
            self._holder[g.index] = owner
        return taken

    def restore(self, owner: str, indices: list[int]) -> list[Gpu]:
        """Take back what `owner` held before a hub restart (from its saved state).

        An index this node no longer has, or that another owner already holds, is dropped
        with a warning: giving one GPU to two sessions is worse than giving it to one.
        """
        kept = []
        for i in indices:
            holder = self._holder.get(i)
            if i not in self._by_index:
                log.warning("%s held GPU %s, which this node no longer has", owner, i)
            elif holder not in (None, owner):
                log.warning("%s held GPU %s, already restored to %s; dropped", owner, i, holder)
            else:
                self._holder[i] = owner
                kept.append(self._by_index[i])
        return kept

    def release(self, owner: str) -> list[Gpu]:
        """Give back everything `owner` holds (idempotent)."""
        gone = self.held_by(owner)
        for g in gone:
            del self._holder[g.index]
        return gone


_shared: dict[tuple[Gpu, ...], GpuPool] = {}


def shared_pool(gpus: list[Gpu]) -> GpuPool:
    """The one pool of the hub process for these GPUs, whichever spawner asks."""
    key = tuple(sorted(gpus, key=lambda g: g.index))
    if key not in _shared:
        _shared[key] = GpuPool(list(key))
    return _shared[key]


def detect_gpus() -> list[Gpu]:
    """The node's NVIDIA GPUs through NVML; an empty list where there is no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: a CPU node
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            minor = pynvml.nvmlDeviceGetMinorNumber(handle)
            gpus.append(Gpu(index=i, uuid=_text(uuid), device=Path(f"/dev/nvidia{minor}")))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def grant_device(gpu: Gpu, uid: int, gid: int) -> None:
    """Make the GPU's device file usable by one Unix user only (needs root)."""
    if gpu.device is not None and os.geteuid() == 0 and gpu.device.exists():
        os.chown(gpu.device, uid, gid)
        os.chmod(gpu.device, 0o600)


def revoke_device(gpu: Gpu) -> None:
    """Give the device file back to root, closed to everyone else (needs root)."""
    if gpu.device is not None and os.geteuid() == 0 and gpu.device.exists():
        os.chown(gpu.device, 0, 0)
        os.chmod(gpu.device, 0o600)


def lock_devices(gpus: list[Gpu]) -> None:
    """At hub start: every pool GPU root-only (the driver leaves them 0666). Sessions kept
    across a hub restart get theirs back as their state is loaded."""
    for gpu in gpus:
        revoke_device(gpu)
