"""`shangzhuang.quota()` for notebooks: the session's own balance from the quota service."""

from __future__ import annotations

import json
import os
import urllib.request


class QuotaReport(dict):
    """GET me's answer as a dict, with a repr a person can read."""

    def __repr__(self) -> str:
        period = self.get("period", {})
        resets = period.get("resets_at")
        lines = [
            f"Quota of {self.get('user')} (account {self.get('account')}): {self.get('state')}",
            f"  period from {period.get('start')}"
            + (f", resets {resets}" if resets else ", no reset (grants only)"),
        ]
        for name, r in self.get("resources", {}).items():
            if r.get("remaining") is None:
                lines.append(f"  {name}: not limited")
                continue
            parts = [f"  {name}: {r['remaining']:.2f} left"]
            for kind in ("account", "personal"):
                if r.get(kind):
                    lim = r[kind]
                    parts.append(
                        f"{kind} {lim['used']:.2f} used of {lim['allocated'] + lim['granted']:.2f}"
                    )
            lines.append(" · ".join(parts))
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the readable form too
        p.text(repr(self))


def my_quota(url: str | None = None, token: str | None = None, timeout: float = 10) -> QuotaReport:
    """Ask the quota service for this session's user's balance."""
    url = url or os.environ.get("SHANGZHUANG_QUOTA_URL")
    token = token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        raise RuntimeError(
            "shangzhuang.quota() runs inside a workbench session "
            "(it needs $SHANGZHUANG_QUOTA_URL and $JUPYTERHUB_API_TOKEN)"
        )
    req = urllib.request.Request(
        url.rstrip("/") + "/api/v1/me", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return QuotaReport(json.load(resp))
