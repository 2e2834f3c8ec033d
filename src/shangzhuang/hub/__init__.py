"""What plugs into JupyterHub. `configure(c, settings)` is the whole hub config."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # keep `shangzhuang.hub.gpus` importable without pydantic (GPU test hosts)
    from shangzhuang.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
ADMIN_PASSWORD_FILE = "admin-password"
SESSION_LAUNCHER = Path(__file__).resolve().parents[1] / "session.py"
NOT_ISOLATED = (
    "This hub does not run as root, so every session runs as the same Unix account: "
    "users are not isolated from each other: each can read the others' files and connect "
    "to their kernels and Dask clusters. Nor are sessions contained: the profiles' "
    "cores, memory and process limits are not enforced, processes a session leaves "
    "behind keep running after it stops, and GPUs are not locked to the session that "
    "holds them. Run the hub as root to give each user their own account and each "
    "session its own cgroup."
)


def proxy_command() -> str:
    """configurable-http-proxy as `make up` installs it into the project, else from PATH."""
    local = PROJECT_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(local) if local.exists() else (shutil.which("configurable-http-proxy") or str(local))


def services_on_the_hub_host(name: str, domain: str, kind: str) -> str:
    """JupyterHub's subdomain_hook: users get NAME.<hub host> (JupyterHub's own IDNA rule);
    services (ours: quota, apps, the idle culler) stay on the hub's host, under /services/."""
    from jupyterhub.utils import subdomain_hook_idna

    return domain if kind == "service" else subdomain_hook_idna(name, domain, kind)


def sign_in_on_the_hub_host(hub_url: str):
    """Authenticator.post_auth_hook: people sign in on the hub's own host only. The hub is
    the proxy's route for every host (so a stopped server's URL reaches it), so its login
    page also answers on users' hosts, where a signed-in hub session would be open to that
    user's scripts."""
    from tornado import web

    host = urlparse(hub_url).hostname

    def hook(authenticator, handler, authentication: dict) -> dict:
        if handler.request.host_name.lower() != host:
            raise web.HTTPError(
                403,
                f"Sign in at {hub_url}/hub/login: {handler.request.host_name} serves a "
                "user's own pages, not the hub's.",
            )
        return authentication

    return hook


def configure(c, settings: Settings) -> None:
    """Fill a JupyterHub config object from the site settings."""
    from shangzhuang.hub.signin import configure_signin
    from shangzhuang.hub.spawners import LocalSpawner
    from shangzhuang.settings import node_gpus

    hub, state = settings.hub, settings.hub.state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)  # hub state is never readable by user sessions

    c.JupyterHub.bind_url = hub.bind_url
    # Nothing a user wrote is served on the hub's origin: each user's servers (their Lab,
    # their apps) get http://NAME.<host>, where the hub's cookies are never sent.
    c.JupyterHub.subdomain_host = hub.url
    c.JupyterHub.subdomain_hook = services_on_the_hub_host
    # Over https, the hub's cookies get the __Host- prefix: a user's server can't toss its
    # own cookies for the hub's host (the prefix needs Secure, so not on plain http).
    c.JupyterHub.cookie_host_prefix_enabled = hub.url.startswith("https://")
    if hub.url.startswith("https://"):
        # HSTS for the hub's host and, through includeSubDomains, every NAME.<host> below it.
        c.JupyterHub.tornado_settings = {
            "headers": {"Strict-Transport-Security": "max-age=31536000; includeSubDomains"}
        }
    c.Authenticator.post_auth_hook = sign_in_on_the_hub_host(hub.url)
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub.api_port}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.command = [proxy_command()]
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    # A proxy of its own (docs/operating.md) keeps users' connections across hub restarts.
    c.ConfigurableHTTPProxy.should_start = not hub.separate_proxy
    c.JupyterHub.db_url = hub.db_url
    c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
    c.JupyterHub.pid_file = str(state / "hub.pid")
    # Hub restarts (upgrades, crashes) leave running sessions alone, as z2jh does.
    c.JupyterHub.cleanup_servers = not hub.keep_sessions_on_restart
    c.JupyterHub.template_vars = {"site_name": settings.site.name}

    # --- sign-in: native, LDAP or OpenID Connect (hub/signin.py) -------------------------
    configure_signin(c, settings)

    # --- sessions --------------------------------------------------------------------
    accounts = settings.backend.accounts
    c.WorkbenchSpawner.profiles = list(settings.profiles)
    c.WorkbenchSpawner.user_prefix = accounts.user_prefix
    c.WorkbenchSpawner.home_root = str(accounts.home_root)
    c.WorkbenchSpawner.tutorials = [str(p) for p in settings.tutorials.files]
    c.WorkbenchSpawner.tutorials_folder = settings.tutorials.folder
    # A deleted hub user's traces (hub/accounts.py): a name signed up again starts afresh.
    c.UserAccounts.on_delete = accounts.on_delete
    c.UserAccounts.user_prefix = accounts.user_prefix
    c.UserAccounts.home_root = str(accounts.home_root)
    c.UserAccounts.archive_dir = str(state / "archived-homes")
    c.UserAccounts.apps_dir = str(settings.apps_folder) if settings.apps.enabled else ""
    c.UserAccounts.site_config = (
        str(Path(settings.source).resolve()) if settings.quota.enabled else ""
    )
    # The session launcher (kernels on IPC sockets, Dask TLS credentials), which becomes
    # jupyterhub-singleuser: see shangzhuang/session.py. By its path: `-m` would import the
    # shangzhuang package first (SQLAlchemy and more, ~0.1 s of every spawn).
    c.Spawner.cmd = [sys.executable, str(SESSION_LAUNCHER)]
    c.Spawner.default_url = "/lab"
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 120
    c.Spawner.environment = dask_environment(settings)
    c.Spawner.disable_user_config = hub.disable_user_config
    c.JupyterHub.active_server_limit = hub.active_server_limit
    if settings.backend.kind == "slurm":
        configure_slurm(c, settings)
    else:
        c.JupyterHub.spawner_class = LocalSpawner
        c.LocalSpawner.gpus = node_gpus(settings)
        c.LocalSpawner.log_dir = str(state / "sessions")
        configure_containment(c, settings)
    if os.geteuid() != 0:
        c.JupyterHub.template_vars["announcement_home"] = NOT_ISOLATED
        c.JupyterHub.template_vars["announcement_spawn"] = NOT_ISOLATED

    # --- services --------------------------------------------------------------------
    services, roles = [], []
    if hub.idle_timeout_seconds:
        services.append(
            {
                "name": "idle-culler",
                "command": [
                    sys.executable, "-m", "jupyterhub_idle_culler",
                    f"--timeout={hub.idle_timeout_seconds}",
                ],
            }
        )  # fmt: skip
        roles.append(
            {
                "name": "idle-culler",
                "services": ["idle-culler"],
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            }
        )
    user_scopes = ["self"]
    if settings.quota.enabled:
        configure_quota(c, settings, services, roles)
        user_scopes.append("access:services!service=quota")
    # Users (and their sessions' tokens) may call the quota service; nothing else changes.
    roles.append({"name": "user", "scopes": user_scopes})
    c.Spawner.server_token_scopes = [
        "users:activity!user", "access:servers!server", *user_scopes[1:],
    ]  # fmt: skip
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    if settings.apps.enabled:
        configure_apps(c, settings)


NOT_CONTAINED = (
    "Sessions on this hub are not contained (backend.local.containment.cgroups is off, or "
    "this machine has no cgroup file system): the profiles' cores, memory and process "
    "limits are not enforced, and processes a session leaves behind keep running after "
    "it stops."
)


def configure_containment(c, settings: Settings) -> None:
    """Local sessions in cgroups (as root), and every pool GPU root-only until handed out."""
    from shangzhuang.hub import containment
    from shangzhuang.hub.gpus import lock_devices
    from shangzhuang.hub.spawners import memory_notices

    if os.geteuid() != 0:
        return  # no cgroups, no device files to guard: NOT_ISOLATED says so
    lock_devices(c.LocalSpawner.gpus)
    wanted = settings.backend.local.containment
    kind = containment.detect() if wanted.cgroups == "auto" else wanted.cgroups
    c.LocalSpawner.cgroups = "" if kind == "off" else kind
    c.LocalSpawner.cgroup_parent = containment.hub_parent(
        wanted.cgroup_parent, settings.hub.state_dir
    )
    c.LocalSpawner.pids_limit = wanted.pids_limit
    c.JupyterHub.template_vars["memory_notices"] = memory_notices
    if not c.LocalSpawner.cgroups:
        c.JupyterHub.template_vars["announcement_home"] = NOT_CONTAINED


def configure_quota(c, settings: Settings, services: list, roles: list) -> None:
    """The quota service, its hub permissions, and what the hub pages show of it."""
    from shangzhuang.quota import open_ledger
    from shangzhuang.services import ADMIN_SCOPE, ADMIN_SCOPE_WITHHELD

    q = settings.quota
    url = f"http://127.0.0.1:{q.port}"
    # The schema before the service starts; an older one stops the hub here, naming
    # `shangzhuang upgrade-db` (quota.schema.OutdatedSchema).
    open_ledger(settings)
    services.append(
        {
            "name": "quota",
            "url": url,
            "command": [sys.executable, "-m", "shangzhuang.quota.service"],
            "environment": {
                "SHANGZHUANG_CONFIG": str(Path(settings.source).resolve()),
                # quota.database_url_env: the service reads the URL where the hub does
                **({q.database_url_env: q.url} if q.database_url_env else {}),
            },
            "oauth_no_confirm": True,
            # The admin's browser is an admin here too (services.ADMIN_SCOPE says why).
            "oauth_client_allowed_scopes": [ADMIN_SCOPE],
        }
    )
    logging.getLogger("JupyterHub").addFilter(ADMIN_SCOPE_WITHHELD)  # a user's: INFO
    roles.append(
        {
            "name": "quota-service",
            "services": ["quota"],
            "scopes": ["list:users", "read:users", "read:servers", "delete:servers"],
        }
    )
    c.WorkbenchSpawner.site_config = str(Path(settings.source).resolve())
    c.Spawner.environment["SHANGZHUANG_QUOTA_URL"] = f"{url}/services/quota/"
    # For the Lab extension's "this session stops in N minutes" at zero quota.
    c.Spawner.environment["SHANGZHUANG_QUOTA_GRACE_SECONDS"] = f"{q.grace_seconds:g}"
    c.JupyterHub.template_paths = [str(Path(__file__).parent / "templates")]
    c.JupyterHub.template_vars["quota"] = home_quota(settings)
    c.JupyterHub.template_vars["quota_warn"] = q.warn_fraction


def configure_apps(c, settings: Settings) -> None:
    """Voila apps (shangzhuang.apps): named servers running standalone Voila, the apps
    service (API, apps page, open-on-visit), idle stop, and what sessions may do."""
    from shangzhuang.apps.culling import culler_timeout
    from shangzhuang.apps.spawn import AppServers
    from shangzhuang.hub.limits import named_server_limit
    from shangzhuang.services import ADMIN_SCOPE, ADMIN_SCOPE_WITHHELD

    apps = settings.apps
    config = str(Path(settings.source).resolve())
    app_servers = AppServers(settings)
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = named_server_limit(
        settings.hub.named_server_limit_per_user, apps.server_prefix, app_servers.registry
    )
    c.Spawner.pre_spawn_hook = app_servers  # app servers run our Voila launcher
    c.WorkbenchSpawner.app_server_prefix = apps.server_prefix  # no renames into or out of it
    c.JupyterHub.services.append(
        {
            "name": "apps",
            "url": f"http://127.0.0.1:{apps.port}",
            "command": [sys.executable, "-m", "shangzhuang.apps.service"],
            "environment": {"SHANGZHUANG_CONFIG": config},
            "oauth_no_confirm": True,
            # The apps page's unpublish button acts on the signed-in user's own servers;
            # an admin's browser is an admin here too (services.ADMIN_SCOPE says why).
            "oauth_client_allowed_scopes": ["servers!user", ADMIN_SCOPE],
        }
    )
    logging.getLogger("JupyterHub").addFilter(ADMIN_SCOPE_WITHHELD)  # a user's: INFO
    c.JupyterHub.load_roles.append(
        {
            "name": "apps-service",
            "services": ["apps"],
            # Start apps for their viewers, share them, remove them when unpublished.
            "scopes": ["servers", "shares", "read:users", "read:groups:name"],
        }
    )
    for role in c.JupyterHub.load_roles:
        if role["name"] == "user":
            role["scopes"].append("access:services!service=apps")
    # Sessions may publish from Lab (the apps service wants servers!user); apps get the least.
    lab = [*c.Spawner.server_token_scopes, "access:services!service=apps", "servers!user"]
    c.Spawner.server_token_scopes = app_servers.token_scopes(lab)
    c.Spawner.environment["SHANGZHUANG_APPS_URL"] = f"http://127.0.0.1:{apps.port}/services/apps/"
    # Viewers aren't asked to authorize each app again after every idle stop (see
    # NoConfirmClients); services keep JupyterHub's own rule (oauth_no_confirm).
    no_confirm = {
        s.get("oauth_client_id") or f"service-{s['name']}"
        for s in c.JupyterHub.services
        if s.get("oauth_no_confirm")
    }
    tornado = c.JupyterHub.tornado_settings if "tornado_settings" in c.JupyterHub else {}
    c.JupyterHub.tornado_settings = {
        **tornado, "oauth_no_confirm_list": app_servers.no_confirm(no_confirm)
    }
    c.JupyterHub.template_paths = [
        *(c.JupyterHub.template_paths or []), str(Path(__file__).parents[1] / "apps" / "templates")
    ]
    c.JupyterHub.template_vars["apps_prefix"] = apps.server_prefix
    c.JupyterHub.template_vars["apps_open"] = "/services/apps/open/"

    # One idle culler for both: Lab sessions after hub.idle_timeout_seconds, apps after
    # apps.idle_stop_seconds (always-on apps never), through its arbiter hook.
    timeout = culler_timeout(settings)
    services = [s for s in c.JupyterHub.services if s["name"] != "idle-culler"]
    if timeout:
        services.append(
            {
                "name": "idle-culler",
                "command": [
                    sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}",
                    f"--cull-every={max(1, timeout // 2)}",
                    f"--config={Path(__file__).parents[1] / 'apps' / 'culler_config.py'}",
                ],
                "environment": {"SHANGZHUANG_CONFIG": config},
            }
        )  # fmt: skip
        if not any(r["name"] == "idle-culler" for r in c.JupyterHub.load_roles):
            c.JupyterHub.load_roles.append(
                {
                    "name": "idle-culler",
                    "services": ["idle-culler"],
                    "scopes": [
                        "list:users", "read:users:activity", "read:servers", "delete:servers",
                    ],
                }
            )  # fmt: skip
    c.JupyterHub.services = services


def configure_slurm(c, settings: Settings) -> None:
    """Lab sessions as Slurm jobs (batchspawner); the hub and the quota service use Slurm's
    clients with the site's SLURM_CONF."""
    from shangzhuang.hub.spawners import SlurmSpawner

    slurm = settings.backend.slurm
    c.JupyterHub.spawner_class = SlurmSpawner
    # batchspawner-singleuser runs its first argument as a Python file (runpy).
    c.SlurmSpawner.cmd = [str(SESSION_LAUNCHER)]
    if slurm.conf:
        os.environ["SLURM_CONF"] = str(slurm.conf)  # for the hub and what it starts
        c.SlurmSpawner.slurm_conf = str(slurm.conf)
    c.SlurmSpawner.default_partition = slurm.partition
    c.SlurmSpawner.default_walltime = slurm.walltime
    c.SlurmSpawner.ip = slurm.bind_ip
    # A job may wait in the queue: the spawn page shows why, for up to ten minutes.
    c.Spawner.start_timeout = 600


def dask_environment(settings: Settings) -> dict:
    """What sessions get so that `shangzhuang.cluster.cluster()` and a bare
    `dask_jobqueue.SLURMCluster()` follow the site config (Dask reads DASK_* variables).
    Values are strings, or functions of the spawner (JupyterHub calls them at each spawn)."""
    cl, slurm = settings.cluster, settings.backend.slurm
    env = {
        "SHANGZHUANG_BACKEND": settings.backend.kind,
        "SHANGZHUANG_MIN_MINUTES": f"{settings.quota.min_minutes_to_spawn:g}",
        "SHANGZHUANG_MAX_WORKERS": str(cl.max_workers),
        # Dashboards through jupyter-server-proxy, under the session's own URL.
        "DASK_DISTRIBUTED__DASHBOARD__LINK": "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status",
        "DASK_LABEXTENSION__FACTORY__MODULE": "shangzhuang.cluster",
        "DASK_LABEXTENSION__FACTORY__CLASS": "cluster",  # either backend, TLS, quota-checked
        "DASK_LABEXTENSION__FACTORY__KWARGS": "{'workers': 0}",  # the sidebar scales it
    }
    jq = {
        "CORES": str(cl.worker_cores),
        "PROCESSES": "1",
        "MEMORY": f"{cl.worker_memory // 1024**2}MiB",
        "WALLTIME": cl.worker_walltime,
        "LOG_DIRECTORY": in_home(cl.log_dir),
        # A bare SLURMCluster() speaks TLS with the session's credentials too.
        "SCHEDULER_OPTIONS": "{'protocol': 'tls://', 'dashboard_address': '127.0.0.1:0'}",
        "LOCAL_DIRECTORY": in_home(cl.local_dir),
    }
    if cl.interface:
        jq["INTERFACE"] = cl.interface
    if slurm.partition:
        jq["QUEUE"] = slurm.partition
    if settings.backend.kind == "slurm":
        env.update({f"DASK_JOBQUEUE__SLURM__{k}": v for k, v in jq.items()})
        if slurm.conf:
            env["SLURM_CONF"] = str(slurm.conf)
    return env


def in_home(path: str):
    """A site path for each user: "~/x" becomes x in the spawning user's home (dask-jobqueue
    does not expand "~": it made a folder named "~" beside the notebook)."""
    if not path.startswith("~/"):
        return path

    def for_spawner(spawner) -> str:
        return os.path.join(spawner.home, path[2:])

    return for_spawner


def home_quota(settings: Settings):
    """For the home page: the signed-in user's balance (None when they have none yet)."""

    def for_user(user):
        if user is None:
            return None
        from shangzhuang.quota import open_ledger

        return open_ledger(settings).balance(user.name).as_dict()

    return for_user
