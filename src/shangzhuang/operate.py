"""Running a site for real: `shangzhuang upgrade-db | backup | restore` (docs/operating.md).

The state that matters is the hub's database (users, tokens, running servers), the quota
ledger, the cookie secret, the first admin's password and the published apps. SQLite
databases are copied with SQLite's online backup API: one read transaction, so the copy is
a consistent snapshot even while the meter writes (WAL: writers are not blocked), never a
half-written file as `cp` could give. PostgreSQL databases are the operator's `pg_dump`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tarfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from sqlalchemy.engine import make_url

from shangzhuang.i18n import Message
from shangzhuang.settings import Settings

# Files of the state folder worth keeping (pid files and session logs are not).
STATE_FILES = ("cookie_secret", "admin-password")
MANIFEST = "backup.json"


def refused_config(refused) -> Message:
    """A SettingsError for the operator: the file, then each 'key: reason' line."""
    lines = "\n".join(f"  {problem}" for problem in refused.problems)
    return Message("{config} is not a valid Shangzhuang config:\n{problems}",
                   config=str(refused.source), problems=lines)  # fmt: skip


class OperateError(Exception):
    """A step that can't be done as asked; the message (a Message, in the operator's
    language where it is printed) says what to do instead. What the steps `say` are
    Messages too."""


def _sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database else None


def _hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def databases(settings: Settings) -> dict[str, str]:
    """The site's databases by the name their SQLite file has in a backup."""
    from shangzhuang.quota import database_url, move_ledger_out_of_state_folder

    move_ledger_out_of_state_folder(settings)
    return {"jupyterhub.sqlite": settings.hub.db_url, "quota.sqlite": database_url(settings)}


def copy_sqlite(src: Path, dest: Path) -> None:
    """An online, consistent copy of a SQLite database (WAL-safe: the backup API reads one
    snapshot; the database's own -wal file is part of what it reads)."""
    source = sqlite3.connect(src, timeout=30)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)  # all pages in one step: one read transaction
        ok = target.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise OperateError(Message("the copy of {file} failed SQLite's check: {result}",
                                       file=str(src), result=ok))  # fmt: skip
    finally:
        source.close()
        target.close()
    dest.chmod(0o600)


def hub_running(settings: Settings) -> int | None:
    """The pid of a hub running on this state folder, if any (its pid file, still alive)."""
    pid_file = settings.hub.state_dir / "hub.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


# --- backup and restore -------------------------------------------------------------------
def backup(settings: Settings, dest: Path, say: Callable[[str], None] = print) -> dict:
    """Copy the site's state into DEST (a new folder, 0700); online, while the hub runs."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise OperateError(Message("{folder} is not empty: back up into a new folder",
                                   folder=str(dest)))  # fmt: skip
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = settings.hub.state_dir
    manifest: dict = {"version": version("shangzhuang"), "created": time.time(), "files": []}
    manifest["postgresql"] = []
    for name, url in databases(settings).items():
        path = _sqlite_file(url)
        if path is None:
            manifest["postgresql"].append(name)
            say(Message("{database} database on {url}: not in this backup; back it up with "
                        "pg_dump (docs/operating.md, Backups)", database=name.split(".")[0],
                        url=_hide_password(url)))  # fmt: skip
            continue
        if not path.exists():
            continue
        copy_sqlite(path, dest / name)
        manifest["files"].append(name)
    for name in STATE_FILES:
        if (state / name).exists():
            shutil.copy2(state / name, dest / name)
            (dest / name).chmod(0o600)
            manifest["files"].append(name)
    apps = settings.apps_folder
    if apps.is_dir():
        # A tar keeps owners and modes (owners' groups guard their snapshots).
        with tarfile.open(dest / "apps.tar", "w") as tar:
            tar.add(apps, arcname="apps")
        (dest / "apps.tar").chmod(0o600)
        manifest["files"].append("apps.tar")
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if manifest["files"]:
        say(Message("backed up {files} into {folder}", files=manifest["files"],
                    folder=str(dest)))  # fmt: skip
    else:
        say(Message("nothing to back up: {folder} holds only the manifest", folder=str(dest)))
    return manifest


def restore(settings: Settings, src: Path, say: Callable[[str], None] = print) -> list[str]:
    """Put a backup made by `backup` into this site's state folder, which must hold no
    databases yet (a fresh folder: move the old one aside first), with the hub stopped."""
    src = Path(src)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError):
        raise OperateError(Message("{folder} is not a backup made by `shangzhuang backup` "
                                   "(no readable {manifest})", folder=str(src),
                                   manifest=MANIFEST)) from None  # fmt: skip
    if pid := hub_running(settings):
        raise OperateError(Message("the hub is running (pid {pid}): stop it before restoring",
                                   pid=str(pid)))  # fmt: skip
    state = settings.hub.state_dir
    dbs = databases(settings)
    for name in manifest["files"]:
        if name in dbs:
            path = _sqlite_file(dbs[name])
            if path is None:
                raise OperateError(Message(
                    "the backup holds {file}, but this site's config puts that database on "
                    "{url}: restore into a site that uses SQLite", file=name,
                    url=_hide_password(dbs[name])))  # fmt: skip
            if path.exists():
                raise OperateError(Message(
                    "{file} exists: restore into a fresh state folder (move {folder} aside)",
                    file=str(path), folder=str(state)))  # fmt: skip
    apps = settings.apps_folder
    if "apps.tar" in manifest["files"] and apps.exists() and any(apps.iterdir()):
        raise OperateError(Message("{folder} is not empty: move it aside before restoring",
                                   folder=str(apps)))  # fmt: skip
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    restored = []
    for name in manifest["files"]:
        if name in dbs:
            path = _sqlite_file(dbs[name])
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the ledger's own
            copy_sqlite(src / name, path)
        elif name == "apps.tar":
            apps.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(src / name) as tar:
                # Our own backup (0700 folder); numeric_owner: the uids of the backup's host.
                # (No extraction `filter`: Debian 12's Python 3.11.2 predates it.)
                tar.extractall(apps.parent, numeric_owner=True)
            if apps.name != "apps":  # apps.folder named otherwise in this config
                (apps.parent / "apps").rename(apps)
        else:
            shutil.copy2(src / name, state / name)
            (state / name).chmod(0o600)
        restored.append(name)
    say(Message("restored {files} from {folder} (made by version {version})",
                files=restored, folder=str(src), version=manifest["version"]))
    for name in manifest.get("postgresql", []):
        say(Message("{database} database: was on PostgreSQL; restore it with pg_restore",
                    database=name.split(".")[0]))  # fmt: skip
    return restored


# --- upgrade-db ---------------------------------------------------------------------------
def _hub_needs_upgrade(url: str) -> bool:
    from jupyterhub import orm
    from sqlalchemy import create_engine, inspect

    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return False  # a first start: JupyterHub creates it
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("users"):
            return False
        orm.check_db_revision(engine)
    except orm.DatabaseSchemaMismatch:
        return True
    finally:
        engine.dispose()
    return False


def _ledger_needs_upgrade(url: str) -> bool:
    from shangzhuang.quota.db import make_engine
    from shangzhuang.quota.schema import needs_upgrade

    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return False
    engine = make_engine(url)
    try:
        return needs_upgrade(engine)
    finally:
        engine.dispose()


def pending_upgrades(settings: Settings) -> list[str]:
    """The site's databases at an older schema than this version's."""
    urls = databases(settings)
    pending = []
    if _hub_needs_upgrade(urls["jupyterhub.sqlite"]):
        pending.append("jupyterhub.sqlite")
    if settings.quota.enabled and _ledger_needs_upgrade(urls["quota.sqlite"]):
        pending.append("quota.sqlite")
    return pending


def upgrade_db(settings: Settings, say: Callable[[str], None] = print) -> Path | None:
    """Bring the hub's database (JupyterHub's own Alembic) and the ledger (ours) to this
    version's schema, after an online backup of the SQLite ones into
    STATE/backups/pre-upgrade-TIME; returns that backup folder (None if nothing was due)."""
    import logging

    from jupyterhub import dbutil

    from shangzhuang.quota.db import make_engine, migrate
    from shangzhuang.quota.schema import head_revision, schema_revision

    pending = pending_upgrades(settings)
    if not pending:
        say(Message("the databases are at this version's schema: nothing to upgrade"))
        return None
    if pid := hub_running(settings):
        say(Message("note: a hub is running (pid {pid}); it keeps the old schema until "
                    "restarted", pid=str(pid)))  # fmt: skip
    urls = databases(settings)
    folder = settings.hub.state_dir / "backups" / time.strftime("pre-upgrade-%Y%m%dT%H%M%S")
    folder.mkdir(mode=0o700, parents=True)
    for name in pending:
        if path := _sqlite_file(urls[name]):
            copy_sqlite(path, folder / name)
            say(Message("backed up {file} to {copy}", file=str(path), copy=str(folder / name)))
        else:
            say(Message("{url} is on PostgreSQL: not backed up by this command; your pg_dump "
                        "from before the upgrade is the way back (docs/operating.md, Upgrades)",
                        url=_hide_password(urls[name])))  # fmt: skip
    if "jupyterhub.sqlite" in pending:
        # What `jupyterhub upgrade-db` does, without loading our config (and backing up twice).
        log = logging.getLogger("shangzhuang.upgrade-db")
        # jupyterhub 6.1.1's dbutil.upgrade runs the `alembic` command from PATH, and a
        # service manager's or cron's PATH lacks our venv: FileNotFoundError. Put it first.
        bin_dir = str(Path(sys.executable).parent)
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        dbutil.upgrade_if_needed(urls["jupyterhub.sqlite"], backup=False, log=log)
        say(Message("upgraded the hub database"))
    if "quota.sqlite" in pending:
        engine = make_engine(urls["quota.sqlite"])
        try:
            before = schema_revision(engine)
            migrate(engine)
            say(Message("upgraded the quota database from revision {before} to {after}",
                        before=str(before), after=head_revision()))  # fmt: skip
        finally:
            engine.dispose()
    return folder


# --- install ------------------------------------------------------------------------------
UNITS = Path(__file__).parent / "units"
HUB_CONFIG = '''"""JupyterHub config for Shangzhuang (written by `shangzhuang install`): everything
comes from the site config in $SHANGZHUANG_CONFIG."""

from shangzhuang.hub import configure
from shangzhuang.settings import load_settings

c = get_config()  # noqa: F821 (provided by JupyterHub)
configure(c, load_settings())
'''


def proxy_command(given: str | None = None) -> str:
    """configurable-http-proxy: as given, else from PATH (Debian: node-configurable-http-proxy)."""
    found = given or shutil.which("configurable-http-proxy")
    if not found or not os.access(found, os.X_OK):
        raise OperateError(Message(
            "configurable-http-proxy not found: install it (apt install "
            "node-configurable-http-proxy, or npm install -g configurable-http-proxy) or name "
            "it with --proxy-command"))  # fmt: skip
    return str(Path(found).resolve())


def render_unit(name: str, values: dict[str, str]) -> str:
    from string import Template

    return Template((UNITS / name).read_text()).substitute(values)


def install(
    config: Path,
    *,
    root: Path = Path("/"),
    account: str | None = None,
    proxy: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    http_port: int = 80,
    say: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Lay down a server install for the site config CONFIG (docs/operating.md, Install).

    Next to CONFIG: jupyterhub_config.py and proxy.env (the proxy's token, 0640). The state
    folder (0700). With TLS, the proxy also answers HTTP_PORT with redirects to https.
    Under ROOT/etc/systemd/system: shangzhuang-proxy.service and
    shangzhuang-hub.service. The platform's system account is made when ROOT is /.
    Nothing is started: the operator enables the units.
    """
    import pwd
    import secrets
    import shlex
    import subprocess

    from shangzhuang.hub.config import proxy_options
    from shangzhuang.settings import SettingsError, load_settings

    config = Path(config).resolve()
    try:
        settings = load_settings(config)
    except SettingsError as e:
        raise OperateError(refused_config(e)) from None
    hub = settings.hub
    # One platform account: the proxy's unit runs as it, the hub's services too (config.py).
    if account and account != settings.site.service_account:
        wanted = settings.site.service_account
        raise OperateError(Message(
            "--account {account}, but site.service_account is {wanted} in {config}: make them "
            "the same", account=account, wanted=repr(wanted), config=str(config)))  # fmt: skip
    account = settings.site.service_account
    if not hub.separate_proxy:
        raise OperateError(Message("{config}: set hub.separate_proxy = true (the proxy gets a "
                                   "service of its own, so hub restarts drop no connection)",
                                   config=str(config)))  # fmt: skip
    if (tls_cert is None) != (tls_key is None):
        raise OperateError(Message("--tls-cert and --tls-key go together"))
    https = hub.url.startswith("https://")
    if https and tls_cert is None:
        say(Message("hub.public_url is {url}: without --tls-cert/--tls-key, TLS must end in "
                    "front of the proxy (docs/operating.md, TLS)", url=hub.url))  # fmt: skip
    if tls_cert is not None and not https:
        raise OperateError(Message("--tls-cert given, but hub.public_url is {url}: make it "
                                   "https://... (secure cookies, HSTS)", url=repr(hub.url)))
    shangzhuang = Path(sys.executable).parent / "shangzhuang"
    root = Path(root)

    if root == Path("/"):
        try:
            pwd.getpwnam(account)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--home-dir", "/nonexistent",
                 "--no-create-home", "--shell", "/usr/sbin/nologin", account],
                check=True,
            )  # fmt: skip
            say(Message("made the system account {account}", account=account))
    else:
        say(Message("--root {root}: no system account made (useradd --system {account} on the "
                    "server)", root=str(root), account=account))  # fmt: skip

    written: dict[str, Path] = {}
    hub_config = config.parent / "jupyterhub_config.py"
    if not hub_config.exists():
        hub_config.write_text(HUB_CONFIG)
        written["jupyterhub_config.py"] = hub_config
    proxy_env = config.parent / "proxy.env"
    if not proxy_env.exists():  # kept on a reinstall: the running proxy holds it
        fd = os.open(proxy_env, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(f"CONFIGPROXY_AUTH_TOKEN={secrets.token_hex(32)}\n")
        written["proxy.env"] = proxy_env
    try:
        os.chown(proxy_env, 0, pwd.getpwnam(account).pw_gid)
    except (KeyError, PermissionError):
        pass  # --root install, or not root: the operator sets the group (docs)
    hub.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    tls_args = ""
    if tls_cert is not None:
        tls_args = (f" --ssl-cert {Path(tls_cert).resolve()} --ssl-key {Path(tls_key).resolve()}"
                    f" --redirect-port {http_port} --redirect-to {hub.port}")  # fmt: skip
    values = {
        "account": account, "proxy_env": str(proxy_env), "proxy": proxy_command(proxy),
        "ip": hub.ip, "port": str(hub.port), "proxy_api_port": str(hub.proxy_api_port),
        "hub_api_port": str(hub.api_port), "tls_args": tls_args, "config": str(config),
        "proxy_options": shlex.join(proxy_options(settings)),
        "state_dir": str(hub.state_dir), "shangzhuang": str(shangzhuang),
    }  # fmt: skip
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    for name in ("shangzhuang-proxy.service", "shangzhuang-hub.service"):
        (units / name).write_text(render_unit(name, values))
        (units / name).chmod(0o644)
        written[name] = units / name
    for path in written.values():
        say(Message("wrote {file}", file=str(path)))
    say(Message("next: {enable}; logs: {logs}",
                enable="systemctl daemon-reload && systemctl enable --now shangzhuang-proxy "
                "shangzhuang-hub", logs="journalctl -u shangzhuang-hub -u shangzhuang-proxy"))
    return written
