"""The status bar's text, computed in Python the way src/format.ts computes it in the browser,
so that the e2e test can check the bar against the quota API's `GET me`.

Same IEEE doubles, same floor-then-fixed steps: the two agree digit for digit (the cases in
extensions/shangzhuang-lab/src/__tests__/format-cases.json are checked against both).
"""

from __future__ import annotations

import math

EPSILON = 1e-6  # as in format.ts: the API rounds hours to 6 decimals
LABELS = {"gpu_hours": "GPU", "cpu_hours": "CPU"}
ORDER = ("gpu_hours", "cpu_hours")


def format_hours(hours: float) -> str:
    if not hours > 0:
        return "0 h"
    if hours >= 100:
        return f"{math.floor(hours + EPSILON)} h"
    if hours >= 1:
        return f"{math.floor(hours * 10 + EPSILON) / 10:.1f} h"
    minutes = math.floor(hours * 60 + EPSILON)
    return f"{minutes} min" if minutes >= 1 else "< 1 min"


def label(resource: str) -> str:
    return LABELS.get(resource) or resource.removesuffix("_hours").upper()


def status_text(resources: dict[str, dict | float | None]) -> str:
    """`GPU 12.4 h · CPU 310 h left` from GET me's `resources` (or resource -> remaining)."""

    def remaining(value):
        return value.get("remaining") if isinstance(value, dict) else value

    names = [r for r in ORDER if r in resources] + sorted(r for r in resources if r not in ORDER)
    parts = [
        f"{label(r)} {format_hours(remaining(resources[r]))}"
        for r in names
        if remaining(resources[r]) is not None
    ]
    return f"{' · '.join(parts)} left" if parts else ""
