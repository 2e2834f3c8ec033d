"""How many servers a user, and the whole site, may have: [hub] named_server_limit_per_user
and active_server_limit, applied through JupyterHub's own limits.

Apps (`app-NAME` named servers) do not count against a user's named-server limit: they have
their own (`apps.max_apps_per_user`), and the apps service starts them for their viewers.
They do count against the site's active-server limit, since they run like any session.

JupyterHub refuses a spawn over the site's limits (429) before any spawner runs, with no
hook there; `log_requests` sees the refused request and has it counted in the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from shangzhuang.apps import is_app_server
from shangzhuang.apps.registry import Registry


def named_server_limit(limit: int, app_prefix: str, registry: Registry | None) -> int | Callable:
    """JupyterHub's `named_server_limit_per_user` for `limit` Lab named servers per user.

    JupyterHub counts every named server record the user has, apps included, against the
    number this returns; so a user's number is the limit plus their published apps (only
    published ones: a server merely named `app-x`, refused at spawn, still counts)."""
    if not limit or registry is None:
        return limit

    def for_request(handler) -> int:
        caller = handler.current_user
        if caller is None or getattr(caller, "kind", "user") != "user":
            return 0  # a service (the apps service starting an app for a viewer): no limit
        # JupyterHub asks with the caller, but counts the servers of the user named in the
        # path (/users/NAME/servers/..., /spawn/NAME/...): an admin creating a server for
        # someone is held to that person's apps, not the admin's own.
        user = _user_in_path(handler) or caller
        apps = [
            name
            for name in user.orm_spawners
            if is_app_server(name, app_prefix)
            and registry.get(user.name, name[len(app_prefix) :]) is not None
        ]
        return limit + len(apps)

    return for_request


def _user_in_path(handler):
    """The user a request is about, when its path names one (None: the caller's own)."""
    args = getattr(handler, "path_args", None) or []
    return handler.find_user(args[0]) if args and isinstance(args[0], str) else None


def log_requests(quota_url: str, quota_token: str, profiles: list[str]) -> Callable:
    """JupyterHub's log function (tornado's `log_function` setting), which also records a
    spawn refused for the site's server limits (JupyterHub's 429: `active_server_limit`,
    or too many starting at once) as a refusal (quota/refusals.py), without waiting.
    PROFILES: the site's profile names, the first one the default."""
    from jupyterhub.apihandlers.users import UserServerAPIHandler
    from jupyterhub.handlers.pages import SpawnHandler
    from jupyterhub.log import log_request

    from shangzhuang.quota.api_client import hub_quota

    def log_function(handler) -> None:
        log_request(handler)
        if handler.get_status() != 429 or not isinstance(
            handler, UserServerAPIHandler | SpawnHandler
        ):
            return
        # /users/NAME/server(s)/..., /spawn/NAME/...: whose server; /spawn: the caller's
        args = getattr(handler, "path_args", None) or []
        user = args[0] if args else getattr(handler.current_user, "name", "")
        if user:
            quota = hub_quota(quota_url, quota_token)
            quota.refused(user, "server-limit", asked_profile(handler, profiles))

    return log_function


def asked_profile(handler, profiles: list[str]) -> str:
    """The profile a spawn request asked for (the form's field, or the API's JSON body), ""
    for a name the site does not have: nothing a user typed is recorded."""
    name = handler.get_argument("profile", "")
    if not name and handler.request.body:
        try:
            name = json.loads(handler.request.body).get("profile") or ""
        except (ValueError, AttributeError):
            name = ""
    if not name:
        return profiles[0] if profiles else ""
    return name if name in profiles else ""
