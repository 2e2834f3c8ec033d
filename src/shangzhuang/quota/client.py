"""`shangzhuang.quota()` for notebooks: the session's own balance from the quota service."""

from __future__ import annotations

import json
import os
import urllib.request
from urllib.parse import quote


def _states():
    from shangzhuang.i18n import Message

    return {"ok": Message("ok"), "low": Message("running low"), "exhausted": Message("used up")}


def _used_of(limit: dict) -> dict:
    return {"used": float(limit["used"]), "total": float(limit["allocated"] + limit["granted"])}


class QuotaReport(dict):
    """GET me's answer as a dict, with a repr a person can read, in the session's language
    ($SHANGZHUANG_LANGUAGE, which the hub sets: zh_CN or en)."""

    def __repr__(self) -> str:
        from shangzhuang import i18n

        return self.text(os.environ.get(i18n.ENVIRONMENT, "en"))

    def text(self, language: str) -> str:
        """The report in `language` (`shangzhuang quota show USER`: the operator's)."""
        from shangzhuang import i18n

        def say(message: i18n.Message) -> str:
            return message.render(language)

        def when(iso: str) -> str:  # in the site's time zone: the offset the service gave
            return i18n.when(iso, language, timezone=i18n.OWN_OFFSET)

        states = _states()
        period = self.get("period", {})
        resets = period.get("resets_at")
        start = when(period["start"]) if period.get("start") else "—"
        lines = [
            say(i18n.Message("Quota of {user} (account {account}): {state}",
                             user=self.get("user"), account=self.get("account"),
                             state=states.get(self.get("state"), self.get("state")))),
            "  " + say(i18n.Message("period from {start}, resets {resets}", start=start,
                                    resets=when(resets)) if resets else
                       i18n.Message("period from {start}, no reset (grants only)", start=start)),
        ]  # fmt: skip
        for name, r in self.get("resources", {}).items():
            resource = i18n.resource_name(name)
            if r.get("remaining") is None:
                lines.append("  " + say(i18n.Message("{resource}: not limited", resource=resource)))
                continue
            parts = [say(i18n.Message("{resource}: {left} left", resource=resource,
                                      left=float(r["remaining"])))]  # fmt: skip
            if lim := r.get("account"):
                parts.append(say(i18n.Message("account {used} used of {total}",
                                              **_used_of(lim))))  # fmt: skip
            if lim := r.get("personal"):
                parts.append(say(i18n.Message("personal {used} used of {total}",
                                              **_used_of(lim))))  # fmt: skip
            lines.append("  " + " · ".join(parts))
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the readable form too
        p.text(repr(self))


def my_quota(url: str | None = None, token: str | None = None, timeout: float = 10) -> QuotaReport:
    """Ask the quota service for this session's user's balance."""
    return QuotaReport(_call("me", None, url, token, timeout))


def affords(rates: dict[str, float], timeout: float = 10) -> dict:
    """Ask the quota service whether this session's user can pay for one unit of work at
    RATES (resource -> per hour) for the site's minimum time, and for how many (`fits`)."""
    user = os.environ.get("JUPYTERHUB_USER") or _call("me", None, None, None, timeout)["user"]
    return _call(f"users/{quote(user, safe='')}/affordable", {"rates": rates}, None, None,
                 timeout)  # fmt: skip


def _call(path: str, body: dict | None, url: str | None, token: str | None, timeout: float):
    url = url or os.environ.get("SHANGZHUANG_QUOTA_URL")
    token = token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        raise RuntimeError(
            "shangzhuang.quota() runs inside a workbench session "
            "(it needs $SHANGZHUANG_QUOTA_URL and $JUPYTERHUB_API_TOKEN)"
        )
    req = urllib.request.Request(
        url.rstrip("/") + "/api/v1/" + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)
