"""What a site may set for the server extension (traitlets: `c.ShangzhuangLab.*`).

In a workbench session every default comes from the environment the hub gives it.
"""

from __future__ import annotations

import os

from traitlets import Float, Int, Unicode, default
from traitlets.config import Configurable


class ShangzhuangLab(Configurable):
    """The quota service this session asks, and how."""

    quota_url = Unicode(
        help="""Base URL of the quota service, ending in /services/quota/.

        Default: $SHANGZHUANG_QUOTA_URL, which the workbench gives every session (the
        service's internal address, not through the proxy).""",
    ).tag(config=True)

    @default("quota_url")
    def _quota_url(self) -> str:
        return os.environ.get("SHANGZHUANG_QUOTA_URL", "")

    usage_url = Unicode(
        help="""The quota service's usage page as the user's browser reaches it; the panel's
        "Request more quota" opens its request form (#request) in a new tab, where the
        hub's sign-in and the page's XSRF token guard the request.

        Default: $JUPYTERHUB_HOST (the hub's origin; sessions have origins of their own)
        and $JUPYTERHUB_BASE_URL, then services/quota/; empty without a quota service.""",
    ).tag(config=True)

    @default("usage_url")
    def _usage_url(self) -> str:
        if not self.quota_url:
            return ""
        base = os.environ.get("JUPYTERHUB_BASE_URL") or "/"
        return os.environ.get("JUPYTERHUB_HOST", "") + base.rstrip("/") + "/services/quota/"

    api_token = Unicode(
        help="""Token sent to the quota service. Default: $JUPYTERHUB_API_TOKEN, the
        session's own hub token (its scopes include access to the quota service).""",
    ).tag(config=True)

    @default("api_token")
    def _api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    user = Unicode(help="The hub user of this session. Default: $JUPYTERHUB_USER.").tag(config=True)

    @default("user")
    def _user(self) -> str:
        return os.environ.get("JUPYTERHUB_USER", "")

    server_name = Unicode(
        help="This session's named server ('' for the default). Default: $JUPYTERHUB_SERVER_NAME."
    ).tag(config=True)

    @default("server_name")
    def _server_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVER_NAME", "")

    slurm_job_id = Unicode(
        help="""This session's Slurm job on the slurm backend ('' elsewhere): the quota
        service charges it as job:ID. Default: $SLURM_JOB_ID, which Slurm gives the job."""
    ).tag(config=True)

    @default("slurm_job_id")
    def _slurm_job_id(self) -> str:
        return os.environ.get("SLURM_JOB_ID", "")

    profile = Unicode(help="This session's profile. Default: $SHANGZHUANG_PROFILE.").tag(
        config=True
    )

    @default("profile")
    def _profile(self) -> str:
        return os.environ.get("SHANGZHUANG_PROFILE", "")

    grace_seconds = Float(
        None,
        allow_none=True,
        help="""Seconds a session keeps running once the quota is at zero (the site's
        quota.grace_seconds). Default: $SHANGZHUANG_QUOTA_GRACE_SECONDS; unknown (None)
        makes the notification say "stops soon".""",
    ).tag(config=True)

    @default("grace_seconds")
    def _grace_seconds(self) -> float | None:
        raw = os.environ.get("SHANGZHUANG_QUOTA_GRACE_SECONDS", "")
        try:
            return float(raw)
        except ValueError:
            return None

    request_timeout = Float(
        5.0,
        help="""Seconds to wait for the quota service before answering 503 ("quota
        unavailable"); the frontend then backs off.""",
    ).tag(config=True)

    csv_timeout = Float(300.0, help="Seconds allowed for the full usage CSV (it can be long).").tag(
        config=True
    )

    charges_shown = Int(10, help="How many of the newest charges the panel lists.").tag(config=True)
