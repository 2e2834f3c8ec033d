"""App servers' idle stop: the arbiter jupyterhub-idle-culler asks about every server.

Lab sessions keep the site's `hub.idle_timeout_seconds` (0: never culled); app servers stop
after `apps.idle_stop_seconds` without a viewer (and start again on the next visit), unless
an admin marked the app always on.
"""

from __future__ import annotations

import os

from shangzhuang.apps import is_app_server
from shangzhuang.apps.registry import Registry
from shangzhuang.settings import Settings, load_settings


def culler_timeout(settings: Settings) -> int:
    """The culler's --timeout: the shortest limit in use (it checks every half of it)."""
    limits = [settings.hub.idle_timeout_seconds, settings.apps.idle_stop_seconds]
    return min(x for x in limits if x) if any(limits) else 0


def make_arbiter(settings: Settings):
    registry = Registry(settings.apps_folder)
    prefix = settings.apps.server_prefix
    lab_limit = settings.hub.idle_timeout_seconds
    app_limit = settings.apps.idle_stop_seconds

    def arbiter(*, inactive, inactive_limit, server, **kwargs) -> bool:
        name = server.get("name", "")
        if not is_app_server(name, prefix):
            return bool(lab_limit) and inactive.total_seconds() >= lab_limit
        owner = server.get("full_name", "/").split("/", 1)[0]
        app = registry.get(owner, name[len(prefix) :])
        if app is not None and app.always_on:
            return False
        return bool(app_limit) and inactive.total_seconds() >= app_limit

    return arbiter


def culler_config(c) -> None:
    """Loaded by the culler through --config (culler_config.py)."""
    c.IdleCuller.cull_arbiter_hook = make_arbiter(load_settings(os.environ["SHANGZHUANG_CONFIG"]))
