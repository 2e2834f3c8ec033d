"""The spawn page's form: one choice per profile, with its resources and whether it is free now."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from shangzhuang.hub.gpus import GpuPool, gpus
from shangzhuang.settings import Profile


@dataclass(frozen=True)
class Choice:
    profile: Profile
    available: bool
    why_not: str = ""


def choices(
    profiles: list[Profile], pool: GpuPool | None, balance=None, min_hours: float = 0.0
) -> list[Choice]:
    """Each profile with whether it can start right now, and why not.

    `balance` (a quota Balance) greys out what it can't pay for `min_hours`.
    """
    from shangzhuang.quota.ledger import rates_of

    out = []
    free = len(pool.free()) if pool is not None else 0
    for p in profiles:
        short = balance.can_afford(rates_of(p), min_hours) if balance is not None else []
        if pool is None:  # a batch system queues what it can't start now
            why = f"not enough quota ({_left(balance, short)} left)" if short else ""
            out.append(Choice(p, not short, why))
        elif p.gpus and pool.total == 0:
            out.append(Choice(p, False, "this node has no GPU"))
        elif p.gpus > pool.total:
            out.append(Choice(p, False, f"this node has only {gpus(pool.total)}"))
        elif p.gpus > free:
            out.append(Choice(p, False, f"{free} of {pool.total} GPUs free"))
        elif short:
            out.append(Choice(p, False, f"not enough quota ({_left(balance, short)} left)"))
        else:
            out.append(Choice(p, True))
    return out


def _left(balance, short: list[str]) -> str:
    return ", ".join(f"{balance.remaining(r):.2f} {r}" for r in short)


def cost(p: Profile) -> str:
    """'1 gpu_hours + 8 cpu_hours per hour': what a profile burns."""
    from shangzhuang.quota.ledger import rates_of

    parts = [f"{v:g} {r}" for r, v in rates_of(p).items() if v]
    return " + ".join(parts) + " per hour"


def memory(n: int) -> str:
    """'4 GB', '512 MB': a memory size as people read it (binary units)."""
    gib = n / 1024**3
    return f"{gib:g} GB" if gib >= 1 else f"{n // 1024**2} MB"


def resources(p: Profile) -> str:
    """'2 cores · 4 GB · no GPU' as shown beside a profile."""
    cores = "1 core" if p.cores == 1 else f"{p.cores:g} cores"
    return f"{cores} · {memory(p.memory)} · {gpus(p.gpus) if p.gpus else 'no GPU'}"


def render(options: list[Choice]) -> str:
    """The HTML JupyterHub puts inside its spawn form."""
    first_free = next((c.profile.name for c in options if c.available), None)
    rows = []
    for c in options:
        p = c.profile
        checked = " checked" if p.name == first_free else ""
        disabled = "" if c.available else " disabled"
        status = "available" if c.available else escape(c.why_not)
        rows.append(
            f'<label class="sz-profile list-group-item{" disabled" if disabled else ""}"'
            f' data-profile="{escape(p.name)}" data-available="{str(c.available).lower()}">'
            f'<input type="radio" name="profile" value="{escape(p.name)}"{checked}{disabled}> '
            f"<strong>{escape(p.title)}</strong> "
            f'<span class="sz-resources">{escape(resources(p)).replace("·", "&middot;")}</span> '
            f'<span class="sz-cost">{escape(cost(p))}</span> '
            f'<span class="sz-status badge">{status}</span>'
            + (f'<div class="text-muted">{escape(p.description)}</div>' if p.description else "")
            + "</label>"
        )
    return '<div class="list-group sz-profiles">' + "".join(rows) + "</div>"
