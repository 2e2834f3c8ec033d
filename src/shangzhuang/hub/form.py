"""The spawn page's form: one choice per profile, with its resources and whether it is free now."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from shangzhuang.hub.gpus import GpuPool, gpus
from shangzhuang.i18n import Message, Plural, hours
from shangzhuang.settings import Profile


@dataclass(frozen=True)
class Choice:
    profile: Profile
    available: bool
    why_not: Message | str = ""


def choices(
    profiles: list[Profile], pool: GpuPool | None, affordable: dict | None = None
) -> list[Choice]:
    """Each profile with whether it can start right now, and why not.

    `affordable` (the quota service's answer for the user, by profile name) greys out
    what their quota can't pay for.
    """
    out = []
    free = len(pool.free()) if pool is not None else 0
    for p in profiles:
        short = ((affordable or {}).get(p.name) or {}).get("short") or {}
        if pool is None:  # a batch system queues what it can't start now
            why = _not_enough(short) if short else ""
            out.append(Choice(p, not short, why))
        elif p.gpus and pool.total == 0:
            out.append(Choice(p, False, Message("this node has no GPU")))
        elif p.gpus > pool.total:
            only = Message("this node has only {gpus}", gpus=gpus(pool.total))
            out.append(Choice(p, False, only))
        elif p.gpus > free:
            busy = Message("{free} of {total} GPUs free", free=free, total=pool.total)
            out.append(Choice(p, False, busy))
        elif short:
            out.append(Choice(p, False, _not_enough(short)))
        else:
            out.append(Choice(p, True))
    return out


def _not_enough(short: dict[str, float]) -> Message:
    """SHORT: what is left of each resource that can't pay (the quota service's answer)."""
    left = [hours(r, round(remaining, 2)) for r, remaining in short.items()]
    return Message("not enough quota ({left} left)", left=left)


def quota_refusal(profile: Profile, reply: dict) -> Message:
    """A spawn refused for quota, from the quota service's answer (GET users/NAME/affordable):
    what is left, what the profile costs, when the quota resets, and where to ask for more
    (the usage page's request form; the spawn page links to it), in the reader's language."""
    from datetime import datetime

    terms = reply["profiles"][profile.name]
    left = [hours(r, round(remaining, 2)) for r, remaining in terms["short"].items()]
    resets = reply.get("resets_at")
    when = (
        Message("Your quota resets on {moment}.", moment=datetime.fromisoformat(resets))
        if resets
        else Message("This site has no periodic reset.")
    )
    return Message(
        "Not enough quota to start {profile}: {left} left in account {account}. {profile} "
        "costs {cost} and needs at least {minutes} minutes. {when} You can ask for more on "
        "the usage page, under “Ask for more”.",
        profile=profile.name, left=left, account=reply["account"], cost=cost(profile),
        minutes=float(reply["min_minutes"]), when=when,
    )  # fmt: skip


def cost(p: Profile) -> Message:
    """'1 GPU-hour + 8 CPU-hours per hour' / '每小时 1 GPU 卡时 + 8 CPU 核时'."""
    from shangzhuang.quota.ledger import rates_of

    parts = [hours(r, v) for r, v in rates_of(p).items() if v]
    if len(parts) == 2:
        return Message("{first} + {second} per hour", first=parts[0], second=parts[1])
    return Message("{amount} per hour", amount=parts[0] if parts else hours("cpu_hours", 0.0))


def memory(n: int) -> str:
    """'4 GB', '512 MB': a memory size as people read it (binary units, the same in both
    languages)."""
    gib = n / 1024**3
    return f"{gib:g} GB" if gib >= 1 else f"{n // 1024**2} MB"


def resources(p: Profile) -> Message:
    """'2 cores · 4 GB · no GPU' / '2 核 · 4 GB · 无 GPU', as shown beside a profile."""
    cores = Plural("{n} core", "{n} cores", p.cores)
    graphics = gpus(p.gpus) if p.gpus else Message("no GPU")
    return Message(
        "{cores} · {memory} · {gpus}", cores=cores, memory=memory(p.memory), gpus=graphics
    )


def render(options: list[Choice]) -> str:
    """The HTML JupyterHub puts inside its spawn form."""
    first_free = next((c.profile.name for c in options if c.available), None)
    rows = []
    for c in options:
        p = c.profile
        checked = " checked" if p.name == first_free else ""
        disabled = "" if c.available else " disabled"
        status = escape(str(Message("available") if c.available else c.why_not))
        rows.append(
            f'<label class="sz-profile list-group-item{" disabled" if disabled else ""}"'
            f' data-profile="{escape(p.name)}" data-available="{str(c.available).lower()}">'
            f'<input type="radio" name="profile" value="{escape(p.name)}"{checked}{disabled}> '
            f"<strong>{escape(p.title)}</strong> "
            f'<span class="sz-resources">{escape(str(resources(p)))}</span> '
            f'<span class="sz-cost">{escape(str(cost(p)))}</span> '
            f'<span class="sz-status badge">{status}</span>'
            + (f'<div class="text-muted">{escape(p.description)}</div>' if p.description else "")
            + "</label>"
        )
    return '<div class="list-group sz-profiles">' + "".join(rows) + "</div>"
