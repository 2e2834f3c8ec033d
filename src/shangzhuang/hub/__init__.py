"""What plugs into JupyterHub. `configure(c, settings)` is the whole hub config."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import sys
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # keep `shangzhuang.hub.gpus` importable without pydantic (GPU test hosts)
    from shangzhuang.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
ADMIN_PASSWORD_FILE = "admin-password"
QUOTA_TOKEN_FILE = "quota-hub-token"  # api_client.HUB_CLIENT's
SESSION_LAUNCHER = Path(__file__).resolve().parents[1] / "session.py"


def N_(message: str) -> str:
    """Marks a message for the catalog (`make i18n`); shangzhuang.i18n.Message(it) shows it
    in the reader's language. Not translated here: this module loads without Babel."""
    return message


NOT_ISOLATED = N_(
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


def sign_in_on_the_hub_host(hub_url: str, at_login=None):
    """Authenticator.post_auth_hook: people sign in on the hub's own host only. The hub is
    the proxy's route for every host (so a stopped server's URL reaches it), so its login
    page also answers on users' hosts, where a signed-in hub session would be open to that
    user's scripts. Then `at_login(handler, name)` (hub.language: their language)."""
    from tornado import web

    host, login_page = urlparse(hub_url).hostname, f"{hub_url}/hub/login"

    def hook(authenticator, handler, authentication: dict) -> dict:
        if handler.request.host_name.lower() != host:
            from shangzhuang.i18n import Message  # the hub has Babel; this module loads without

            raise web.HTTPError(
                403,
                Message(
                    "Sign in at {hub}: {host} serves a user's own pages, not the hub's.",
                    hub=login_page, host=handler.request.host_name,
                ),
            )
        if at_login is not None:
            at_login(handler, authenticator.normalize_username(authentication["name"]))
        return authentication

    return hook


NOT_CONTAINED = N_(
    "Sessions on this hub are not contained (backend.local.containment.cgroups is off, or "
    "this machine has no cgroup file system): the profiles' cores, memory and process "
    "limits are not enforced, and processes a session leaves behind keep running after "
    "it stops."
)
GPUS_BY_FILE_MODE = N_(
    "GPUs on this hub are guarded by their device files' owner and mode only (cgroup v2 "
    "without systemd has no device rules): a device node re-created with an open mode "
    "would let another session use a GPU it does not hold."
)
DASHBOARDS_OPEN = N_(
    "Dask dashboards on this hub are not protected (iptables is missing or does not work "
    "here): any user of this machine can read the dashboard of another's cluster, its "
    "task stream, logs and call stacks included."
)
SLURM_DASHBOARDS_OPEN = N_(
    "Dask dashboards of Slurm sessions on this hub are not protected "
    "(backend.slurm.dashboard_prolog is off: the nodes do not run the shipped dashboard "
    "prolog): any job on a session's node can read its dashboard, its task stream, logs and "
    "call stacks included."
)


def configure(c, settings: Settings) -> None:
    """Fill a JupyterHub config object from the site settings: the steps that change the
    machine, in order, then the config as data (hub/config.py), each trait assigned once."""
    from jupyterhub.app import JupyterHub

    from shangzhuang.hub.config import apply, hub_config

    prepare_state(settings)
    host = look_at_host(settings)
    if JupyterHub.initialized():  # the hub's own process, not a script or test building a config
        serve_hub_first(settings, host.cgroups)  # before it starts its proxy and services
    if settings.backend.kind == "local" and host.is_root:
        from shangzhuang.hub.gpus import lock_devices

        lock_devices(list(host.gpus))  # every pool GPU root-only until handed out
    if settings.backend.kind == "slurm" and settings.backend.slurm.conf:
        os.environ["SLURM_CONF"] = str(settings.backend.slurm.conf)  # for the hub's own calls
    if settings.quota.enabled:
        from shangzhuang.quota import ledger_file, open_ledger

        # The schema before the service starts (and a ledger from the state folder moved
        # out); an older one stops the hub here, naming `shangzhuang upgrade-db`
        # (quota.schema.OutdatedSchema). Closed again: no -wal or -shm of root's stays.
        open_ledger(settings).engine.dispose()
        if quota_as_service_account(settings, host) and not settings.quota.url:
            hand_over_folder(ledger_file(settings).parent, host.service_account, 0o700)
    if settings.quota.enabled or settings.apps.enabled:
        from shangzhuang.services import ADMIN_SCOPE_WITHHELD

        logging.getLogger("JupyterHub").addFilter(ADMIN_SCOPE_WITHHELD)  # a user's: INFO
    if settings.apps.enabled and host.service_account:
        hand_over_folder(settings.apps_folder, host.service_account, 0o711)  # as Registry
    apply(c, hub_config(settings, host))


def serve_hub_first(settings: Settings, detected: str) -> str:
    """A root hub with local sessions in cgroups (v1, v2) moves this process into a cgroup
    of its own, where the proxy and services it starts join it, at the highest CPU weight
    (containment.SessionCgroup.serve_first). Returns the cgroup's path, or "" where there
    is none: another backend, a hub that is not root, sessions not contained, or systemd
    (its unit's cgroup in system.slice, which weighs as much as all sessions' slice).
    `detected`: containment.detect()'s answer."""
    from shangzhuang.hub import containment
    from shangzhuang.hub.config import containment_kind

    if settings.backend.kind != "local" or os.geteuid() != 0:
        return ""
    kind = containment_kind(settings, detected)
    if kind not in ("v1", "v2"):
        return ""
    wanted = settings.backend.local.containment
    cgroup = containment.session_cgroup(
        kind, containment.hub_cgroup(wanted.cgroup_parent, settings.hub.state_dir)
    )
    try:
        return cgroup.path if cgroup.serve_first() else ""
    except OSError as e:  # the hub runs on, served as one process among the node's others
        logging.getLogger("JupyterHub").warning("no cgroup of its own for the hub: %s", e)
        return ""


def prepare_state(settings: Settings) -> None:
    """The hub's state folder, never readable by user sessions."""
    state = settings.hub.state_dir
    state.mkdir(parents=True, exist_ok=True)
    token = state / QUOTA_TOKEN_FILE  # the hub's token for the quota service, made once
    if settings.quota.enabled and not token.exists():
        token.touch(mode=0o600)
        token.write_text(token_hex(32))
    os.chmod(state, 0o700)


def hand_over_folder(folder: Path, account: str, mode: int) -> None:
    """A service's folder (apps, ledger) and what is in it owned by the account the service
    runs as (groups kept: each owner's group reads their apps); the folder gets MODE."""
    uid = pwd.getpwnam(account).pw_uid
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, mode)
    os.chown(folder, uid, -1)
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, -1)


def quota_as_service_account(settings: Settings, host) -> bool:
    """The quota service runs as the platform's account on the local backend; on Slurm it
    stays root: it holds and cancels jobs (scontrol, scancel: root or a Slurm operator).
    A quota.database_url_file is root's to read: with one, the service stays root too."""
    local = settings.backend.kind == "local"
    return bool(host.service_account) and local and not settings.quota.database_url_file


def service_account(settings: Settings, is_root: bool) -> str:
    """site.service_account when the hub is root and the account exists, else ""."""
    if not is_root or not settings.site.service_account:
        return ""
    try:
        pwd.getpwnam(settings.site.service_account)
    except KeyError:
        logging.getLogger("JupyterHub").info(
            "no account %s (site.service_account): the apps service and the idle culler run "
            "as root", settings.site.service_account,
        )  # fmt: skip
        return ""
    return settings.site.service_account


def look_at_host(settings: Settings):
    """What the config depends on besides the settings: this machine, secrets in files."""
    from shangzhuang.hub import containment
    from shangzhuang.hub.config import Host
    from shangzhuang.hub.signin import signin_facts
    from shangzhuang.settings import node_gpus

    local = settings.backend.kind == "local"
    is_root = os.geteuid() == 0
    password_file = settings.hub.state_dir / ADMIN_PASSWORD_FILE
    state, quota = settings.hub.state_dir, settings.quota.enabled
    return Host(
        is_root=is_root,
        python=sys.executable,
        proxy=proxy_command(),
        gpus=tuple(node_gpus(settings)) if local else (),
        cgroups=containment.detect() if local and is_root else "",
        iptables=containment.iptables_works() if local and is_root else False,
        admin_password=password_file.read_text().strip() if password_file.exists() else "",
        quota_token=(state / QUOTA_TOKEN_FILE).read_text().strip() if quota else "",
        reset_admin_password=os.environ.get("SHANGZHUANG_ADMIN_PASSWORD", ""),
        service_account=service_account(settings, is_root),
        **signin_facts(settings),
    )


def dask_environment(settings: Settings) -> dict:
    """What sessions get so that `shangzhuang.cluster.cluster()` and a bare
    `dask_jobqueue.SLURMCluster()` follow the site config (Dask reads DASK_* variables).
    Values are strings, or functions of the spawner (JupyterHub calls them at each spawn)."""
    cl, slurm = settings.cluster, settings.backend.slurm
    env = {
        "SHANGZHUANG_BACKEND": settings.backend.kind,
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
        # ... and its workers serve no dashboard (one would listen on every interface).
        "WORKER_EXTRA_ARGS": "['--no-dashboard']",
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


def home_quota(url: str, token: str):
    """For the home page: `quota()` there is the signed-in user's balance, asked of the
    quota service when the page shows it (None when it does not answer)."""
    from shangzhuang.quota.api_client import QuotaRefused, QuotaUnavailable, hub_quota

    def for_user(user):
        if user is None:
            return None

        async def balance() -> dict | None:
            try:
                return await hub_quota(url, token).balance(user.name)
            except (QuotaUnavailable, QuotaRefused) as e:
                logging.getLogger("JupyterHub").warning("home page without quota: %s", e)
                return None

        return balance

    return for_user
