"""The hub's configuration as data: `hub_config(settings, host)` builds it, `apply` sets it.

The Littlest JupyterHub's rule: config is set, never appended to or mutated. So every
trait is computed once, here, from the settings and from `Host` (what the machine is like:
root or not, its GPUs, its cgroups, secrets kept in files), and `apply` assigns each one
once. `hub_config` reads no file and no environment and changes nothing, so two calls give
equal configs and a test can build one for any kind of site without a hub. What does
change the machine (the state folder, GPU device files, the ledger's schema) is done by the
named steps of `shangzhuang.hub.configure`, before.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shangzhuang import i18n
from shangzhuang.hub import (
    DASHBOARDS_OPEN,
    GPUS_BY_FILE_MODE,
    NOT_CONTAINED,
    NOT_ISOLATED,
    SESSION_LAUNCHER,
    SLURM_DASHBOARDS_OPEN,
    dask_environment,
    database,
    home_quota,
    language,
    quota_as_service_account,
    services_on_the_hub_host,
    sign_in_on_the_hub_host,
)
from shangzhuang.quota.api_client import HUB_CLIENT

if TYPE_CHECKING:
    from shangzhuang.settings import Settings

APPS_TEMPLATES = Path(__file__).parents[1] / "apps" / "templates"
HUB_TEMPLATES = Path(__file__).parent / "templates"
CULLER_CONFIG = Path(__file__).parents[1] / "apps" / "culler_config.py"
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


@dataclass(frozen=True)
class Host:
    """What the hub's config depends on besides the settings: found on the machine by
    `shangzhuang.hub.look_at_host`, made up in tests."""

    is_root: bool = False
    python: str = sys.executable  # runs the services and the sessions' launcher
    proxy: str = "configurable-http-proxy"  # the proxy's command, when the hub starts it
    gpus: tuple = ()  # the local backend's GPU pool
    cgroups: str = ""  # "v1", "v2" or "" (sessions not contained)
    iptables: bool = False  # whether the hub can keep dashboards to their owners
    admin_password: str = ""  # the first admin's, kept in the state folder (native sign-in)
    reset_admin_password: str = ""  # $SHANGZHUANG_ADMIN_PASSWORD
    signin_secret: str = ""  # the LDAP search password or the OIDC client secret
    oidc_endpoints: dict = field(default_factory=dict)  # discovered from auth.oidc.issuer
    service_account: str = ""  # the platform's unprivileged account (site.service_account)
    quota_token: str = ""  # the hub's token for the quota service (state folder)


def merge(*parts: dict) -> dict:
    """One config from parts that each set their own traits; a trait set by two parts is
    a mistake (which one wins would depend on order), so it raises."""
    config: dict = {}
    for part in parts:
        for section, traits in part.items():
            merged = config.setdefault(section, {})
            for name, value in traits.items():
                if name in merged:
                    raise ValueError(f"{section}.{name} is set twice")
                merged[name] = value
    return config


def apply(c, config: dict) -> None:
    """Assign each trait of `config` (from hub_config) to the JupyterHub config object."""
    for section, traits in config.items():
        for name, value in traits.items():
            setattr(c[section], name, value)


def hub_config(settings: Settings, host: Host) -> dict:
    """The whole JupyterHub configuration of a site, as {section: {trait: value}}."""
    from shangzhuang.hub.signin import signin_config

    local = settings.backend.kind != "slurm"
    return merge(
        proxy_and_hub(settings, host),
        signin_config(settings, host),
        sessions(settings, host),
        local_sessions(settings, host) if local else slurm_sessions(settings),
        services(settings, host),
        apps(settings) if settings.apps.enabled else {},
        pages(settings, host),
        language.pages(settings),
    )


def proxy_and_hub(settings: Settings, host: Host) -> dict:
    hub, state = settings.hub, settings.hub.state_dir
    https = hub.url.startswith("https://")
    return {
        "JupyterHub": {
            "bind_url": hub.bind_url,
            # Nothing a user wrote is served on the hub's origin: each user's servers (their
            # Lab, their apps) get http://NAME.<host>, where the hub's cookies are never sent.
            "subdomain_host": hub.url,
            "subdomain_hook": services_on_the_hub_host,
            # Over https, the hub's cookies get the __Host- prefix: a user's server can't toss
            # its own cookies for the hub's host (the prefix needs Secure, so not on http).
            "cookie_host_prefix_enabled": https,
            "hub_bind_url": f"http://127.0.0.1:{hub.api_port}",
            "db_url": hub.db_url,
            "db_kwargs": database.engine_options(hub.db_url),  # SQLite: WAL (database.py)
            "cookie_secret_file": str(state / "cookie_secret"),
            "pid_file": str(state / "hub.pid"),
            # Hub restarts (upgrades, crashes) leave running sessions alone, as z2jh does.
            "cleanup_servers": not hub.keep_sessions_on_restart,
            "active_server_limit": hub.active_server_limit,
        },
        "ConfigurableHTTPProxy": {
            "api_url": f"http://127.0.0.1:{hub.proxy_api_port}",
            "command": [host.proxy, *proxy_options(settings)],
            "pid_file": str(state / "proxy.pid"),
            # A proxy of its own (docs/operating.md) keeps connections across hub restarts.
            "should_start": not hub.separate_proxy,
        },
        "Authenticator": {
            # ... and a language chosen in this browser becomes the user's, or theirs this one's
            "post_auth_hook": sign_in_on_the_hub_host(
                hub.url, language.keep_choice_at_login(language.choices(settings))
            )
        },
    }


def proxy_options(settings: Settings) -> list[str]:
    """configurable-http-proxy's options of ours, wherever it runs (the hub's child, or
    shangzhuang-proxy.service): the keep-alive timeout (settings.Hub says why)."""
    return ["--keep-alive-timeout", str(settings.hub.proxy_keep_alive_seconds * 1000)]


def sessions(settings: Settings, host: Host) -> dict:
    """What every Lab session gets, whatever runs it."""
    accounts, state = settings.backend.accounts, settings.hub.state_dir
    # The hub's spawners and authenticator ask the quota service (quota/api_client.py).
    quota = {"quota_url": f"{quota_url(settings)}/services/quota/", "quota_token": host.quota_token}
    quota = quota if settings.quota.enabled else {}
    environment = dask_environment(settings)
    # The session's language (zh_CN or en), for its Lab (session.py): hub/language.py.
    environment[i18n.ENVIRONMENT] = language.session_language(
        language.choices(settings), settings.site.language
    )
    if settings.quota.enabled:
        environment["SHANGZHUANG_QUOTA_URL"] = f"{quota_url(settings)}/services/quota/"
        # For the Lab extension's "this session stops in N minutes" at zero quota.
        environment["SHANGZHUANG_QUOTA_GRACE_SECONDS"] = f"{settings.quota.grace_seconds:g}"
        # A session's GPUs at or over this are busy: the session is active (the Lab
        # extension's activity.py), whatever its browser does.
        environment["SHANGZHUANG_GPU_BUSY_PERCENT"] = (
            f"{settings.quota.reclaim.idle_threshold_percent:g}"
        )
    if settings.hub.idle_timeout_seconds:
        # The session tells the hub of its activity (busy kernels included) often enough
        # for the culler: every quarter of the timeout, at most JupyterHub's 300 s.
        interval = min(300, max(5, settings.hub.idle_timeout_seconds // 4))
        environment["JUPYTERHUB_ACTIVITY_INTERVAL"] = str(interval)
    if settings.apps.enabled:
        environment["SHANGZHUANG_APPS_URL"] = f"{apps_url(settings)}/services/apps/"
    spawner = {
        "profiles": list(settings.profiles),
        "user_prefix": accounts.user_prefix,
        "home_root": str(accounts.home_root),
        "tutorials": [str(p) for p in settings.tutorials.files],
        "tutorials_folder": settings.tutorials.folder,
        **quota,
    }
    if settings.apps.enabled:
        spawner["app_server_prefix"] = settings.apps.server_prefix  # no renames into or out
    return {
        "WorkbenchSpawner": spawner,
        # A deleted hub user's traces (hub/accounts.py): a name signed up again starts afresh.
        "UserAccounts": {
            "on_delete": accounts.on_delete,
            "user_prefix": accounts.user_prefix,
            "home_root": str(accounts.home_root),
            "archive_dir": str(state / "archived-homes"),
            "apps_dir": str(settings.apps_folder) if settings.apps.enabled else "",
            **quota,
        },
        "Spawner": {
            # The session launcher (kernels on IPC sockets, Dask TLS credentials), which
            # becomes jupyterhub-singleuser: see shangzhuang/session.py. By its path: `-m`
            # would import the shangzhuang package first (~0.1 s of every spawn).
            "cmd": [host.python, str(SESSION_LAUNCHER)],
            "default_url": "/lab",
            # A Slurm job may wait in the queue: the spawn page shows why, for ten minutes.
            "start_timeout": 600 if settings.backend.kind == "slurm" else 120,
            "http_timeout": 120,
            "environment": environment,
            "disable_user_config": settings.hub.disable_user_config,
            "server_token_scopes": server_token_scopes(settings),
        },
    }


def local_sessions(settings: Settings, host: Host) -> dict:
    """Lab sessions as local processes; as root, each in a cgroup made from its profile."""
    from shangzhuang.hub import containment
    from shangzhuang.hub.spawners import LocalSpawner

    spawner = {"gpus": list(host.gpus), "log_dir": str(settings.hub.state_dir / "sessions")}
    if host.is_root:
        wanted = settings.backend.local.containment
        spawner["cgroups"] = containment_kind(settings, host.cgroups)
        spawner["cgroup_parent"] = containment.hub_parent(
            wanted.cgroup_parent, settings.hub.state_dir
        )
        spawner["pids_limit"] = wanted.pids_limit
        if host.iptables:
            spawner["dashboard_chain"] = containment.firewall_chain(settings.hub.state_dir)
    return {"JupyterHub": {"spawner_class": LocalSpawner}, "LocalSpawner": spawner}


def containment_kind(settings: Settings, detected: str) -> str:
    """How a root hub's local sessions are contained: "v1", "v2", "systemd", or "" (not at
    all); `detected` is containment.detect()'s answer, taken when the setting is "auto"."""
    wanted = settings.backend.local.containment.cgroups
    kind = detected if wanted == "auto" else wanted
    return "" if kind == "off" else kind


def slurm_sessions(settings: Settings) -> dict:
    """Lab sessions as Slurm jobs (batchspawner), with the site's SLURM_CONF."""
    from shangzhuang.hub.spawners import SlurmSpawner

    slurm = settings.backend.slurm
    spawner = {
        # batchspawner-singleuser runs its first argument as a Python file (runpy).
        "cmd": [str(SESSION_LAUNCHER)],
        "default_partition": slurm.partition,
        "default_walltime": slurm.walltime,
        "ip": slurm.bind_ip,
    }
    if slurm.conf:
        spawner["slurm_conf"] = str(slurm.conf)
    return {"JupyterHub": {"spawner_class": SlurmSpawner}, "SlurmSpawner": spawner}


def quota_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.quota.port}"


def apps_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.apps.port}"


def user_scopes(settings: Settings) -> list[str]:
    """What users (and their sessions' tokens) may call besides their own things."""
    scopes = []
    if settings.quota.enabled:
        scopes.append("access:services!service=quota")
    if settings.apps.enabled:
        scopes.append("access:services!service=apps")
    return scopes


def server_token_scopes(settings: Settings):
    lab = ["users:activity!user", "access:servers!server", *user_scopes(settings)]
    if not settings.apps.enabled:
        return lab
    from shangzhuang.apps.spawn import AppServers

    # Sessions may publish from Lab (the apps service wants servers!user); apps get the least.
    return AppServers(settings).token_scopes([*lab, "servers!user"])


def services(settings: Settings, host: Host) -> dict:
    """The hub-managed services (quota, apps, the idle culler) and their roles."""
    from shangzhuang.apps.culling import culler_timeout
    from shangzhuang.services import ADMIN_SCOPE

    config = str(Path(settings.source).resolve())
    listed, roles = [], [{"name": "user", "scopes": ["self", *user_scopes(settings)]}]
    q = settings.quota
    if q.enabled:
        listed.append(
            {
                "name": "quota",
                "url": quota_url(settings),
                "command": [host.python, "-m", "shangzhuang.quota.service"],
                "environment": {
                    "SHANGZHUANG_CONFIG": config,
                    # quota.database_url_env: the service reads the URL where the hub does
                    **({q.database_url_env: q.url} if q.database_url_env else {}),
                },
                "oauth_no_confirm": True,
                # The admin's browser is an admin here too (services.ADMIN_SCOPE says why).
                "oauth_client_allowed_scopes": [ADMIN_SCOPE],
            }
        )
        # `servers`: stop what can't pay or sits idle, and start a session again on the
        # CPU profile when its user asks to continue on CPU (quota/continue_on_cpu.py).
        # `admin:server_state`: the spawners' own record of each session, never the
        # user's user_options: the GPUs the pool gave it (local: what the quota service
        # reads with NVML, quota/gpu_readings.py), its Slurm job (slurm: which jobs are Lab
        # sessions, quota/sources.py SlurmJobs).
        scopes = ["list:users", "read:users", "servers", "admin:server_state"]
        roles.append({"name": "quota-service", "services": ["quota"], "scopes": scopes})
        # The hub's own token for the quota service: spawns, logins, deletions, home page.
        listed.append({"name": HUB_CLIENT, "api_token": host.quota_token})
        roles.append(
            {
                "name": f"{HUB_CLIENT}-service",
                "services": [HUB_CLIENT],
                "scopes": ["access:services!service=quota"],
            }
        )
    if settings.apps.enabled:
        listed.append(
            {
                "name": "apps",
                "url": apps_url(settings),
                "command": [host.python, "-m", "shangzhuang.apps.service"],
                "environment": {"SHANGZHUANG_CONFIG": config},
                "oauth_no_confirm": True,
                # The apps page's unpublish button acts on the signed-in user's own servers;
                # an admin's browser is an admin here too (services.ADMIN_SCOPE says why).
                "oauth_client_allowed_scopes": ["servers!user", ADMIN_SCOPE],
            }
        )
        roles.append(
            {
                "name": "apps-service",
                "services": ["apps"],
                # Start apps for their viewers, share them, remove them when unpublished.
                "scopes": ["servers", "shares", "read:users", "read:groups:name"],
            }
        )
    # The apps service and the culler need nothing of root: as root, they run as the
    # platform's account, which owns the apps folder (configure's hand_over_folder). So
    # does the quota service on the local backend (it owns the ledger's folder); on Slurm
    # it stays root (quota_as_service_account, docs/operating.md say why).
    unprivileged = {"user": host.service_account, "cwd": "/"} if host.service_account else {}
    for service in listed:
        if service["name"] == "apps" or (
            service["name"] == "quota" and quota_as_service_account(settings, host)
        ):
            service.update(unprivileged)
    # One idle culler: Lab sessions after hub.idle_timeout_seconds and, with apps, apps
    # after apps.idle_stop_seconds (always-on apps never), through its arbiter hook.
    timeout = settings.hub.idle_timeout_seconds
    if settings.apps.enabled:
        timeout = culler_timeout(settings)
    if timeout:
        command = [host.python, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}"]
        culler = {"name": "idle-culler", "command": command, **unprivileged}
        if settings.apps.enabled:
            command += [f"--cull-every={max(1, timeout // 2)}", f"--config={CULLER_CONFIG}"]
            culler["environment"] = {"SHANGZHUANG_CONFIG": config}
        listed.append(culler)
        roles.append({"name": "idle-culler", "services": ["idle-culler"], "scopes": CULLER_SCOPES})
    return {"JupyterHub": {"services": listed, "load_roles": roles}}


def apps(settings: Settings) -> dict:
    """Voila apps (shangzhuang.apps): named servers running standalone Voila, started by
    the apps service, opened on a visit, stopped when idle."""
    from shangzhuang.apps.spawn import AppServers
    from shangzhuang.hub.limits import named_server_limit

    app_servers = AppServers(settings)
    return {
        "JupyterHub": {
            "allow_named_servers": True,
            "named_server_limit_per_user": named_server_limit(
                settings.hub.named_server_limit_per_user,
                settings.apps.server_prefix,
                app_servers.registry,
            ),
        },
        "Spawner": {"pre_spawn_hook": app_servers},  # app servers run our Voila launcher
    }


def pages(settings: Settings, host: Host) -> dict:
    """The hub's templates, what they are given, and tornado's settings."""
    from shangzhuang.hub.limits import log_requests
    from shangzhuang.hub.spawners import memory_notices

    site, https = settings.site, settings.hub.url.startswith("https://")
    # Each request's language, from its cookie and Accept-Language (shangzhuang.i18n).
    tornado = {"transforms": [i18n.request_language(site.language, site.timezone)]}
    if https:
        # HSTS for the hub's host and, through includeSubDomains, every NAME.<host> below it.
        tornado["headers"] = {"Strict-Transport-Security": "max-age=31536000; includeSubDomains"}
    template_vars = {"site_name": site.name, "site_logo": site.logo is not None}
    paths = [str(HUB_TEMPLATES)]
    if not host.is_root:
        # Messages: in the reader's language where the pages show them
        template_vars["announcement_home"] = i18n.Message(NOT_ISOLATED)
        template_vars["announcement_spawn"] = i18n.Message(NOT_ISOLATED)
    elif settings.backend.kind != "slurm":
        template_vars["memory_notices"] = memory_notices
        spawner = local_sessions(settings, host)["LocalSpawner"]
        not_enforced = [i18n.Message(NOT_CONTAINED)] if not spawner["cgroups"] else []
        if spawner["cgroups"] == "v2" and host.gpus:
            not_enforced.append(i18n.Message(GPUS_BY_FILE_MODE))
        if not spawner.get("dashboard_chain"):
            not_enforced.append(i18n.Message(DASHBOARDS_OPEN))
        if not_enforced:
            template_vars["announcement_home"] = i18n.sentences(not_enforced)
    elif not settings.backend.slurm.dashboard_prolog:
        template_vars["announcement_home"] = i18n.Message(SLURM_DASHBOARDS_OPEN)
    if settings.quota.enabled:
        template_vars["quota"] = home_quota(f"{quota_url(settings)}/services/quota/",
                                            host.quota_token)  # fmt: skip
        template_vars["quota_warn"] = settings.quota.warn_fraction
        # JupyterHub's request log, which also counts spawns its server limits refused
        tornado["log_function"] = log_requests(
            f"{quota_url(settings)}/services/quota/", host.quota_token,
            [p.name for p in settings.profiles],
        )  # fmt: skip
    if settings.apps.enabled:
        paths.append(str(APPS_TEMPLATES))
        template_vars["apps_prefix"] = settings.apps.server_prefix
        template_vars["apps_open"] = "/services/apps/open/"
        from shangzhuang.apps.spawn import AppServers

        # Viewers aren't asked to authorize each app again after every idle stop (see
        # NoConfirmClients); services keep JupyterHub's own rule (oauth_no_confirm).
        no_confirm = {f"service-{s['name']}" for s in services(settings, host)["JupyterHub"][
            "services"] if s.get("oauth_no_confirm")}  # fmt: skip
        tornado["oauth_no_confirm_list"] = AppServers(settings).no_confirm(no_confirm)
    hub = {"template_paths": paths, "template_vars": template_vars}
    if tornado:
        hub["tornado_settings"] = tornado
    if site.logo is not None:
        hub["logo_file"] = str(site.logo)  # served at /hub/logo, shown on every page
    return {"JupyterHub": hub}
