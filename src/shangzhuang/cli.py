"""`shangzhuang up | check`: the operator's command line."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from shangzhuang.settings import DEFAULT_CONFIG, Settings, SettingsError, load_settings


def _settings_or_exit(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except SettingsError as e:
        print(e, file=sys.stderr)
        sys.exit(2)


def admin_password(settings: Settings) -> tuple[str, bool]:
    """The first admin's password and whether it was generated just now.

    $SHANGZHUANG_ADMIN_PASSWORD wins; else the one kept 0600 in the state folder;
    else a new one is generated and kept there.
    """
    from shangzhuang.hub import ADMIN_PASSWORD_FILE

    if env := os.environ.get("SHANGZHUANG_ADMIN_PASSWORD"):
        return env, False
    path = settings.hub.state_dir / ADMIN_PASSWORD_FILE
    if path.exists():
        return path.read_text().strip(), False
    password = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password, True


def cmd_check(args) -> int:
    settings = _settings_or_exit(args.config)
    print(f"ok: {settings.source}")
    return 0


def cmd_up(args) -> int:
    settings = _settings_or_exit(args.config)
    state = settings.hub.state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    admin = settings.hub.admins[0] if settings.hub.admins else None
    if admin:
        password, new = admin_password(settings)
        if new:
            print(f"First start: admin {admin!r}, password {password}")
            print(f"(kept in {state / 'admin-password'}, mode 0600)")
        else:
            print(
                f"Admin {admin!r}: password from $SHANGZHUANG_ADMIN_PASSWORD or {state}/admin-password"
            )
    print(f"Shangzhuang Workbench on {settings.hub.url}  (Ctrl-C stops it)", flush=True)

    source = Path(settings.source).resolve()
    hub_config = source.parent / "jupyterhub_config.py"
    if not hub_config.exists():
        hub_config = DEFAULT_CONFIG.parent / "jupyterhub_config.py"
    env = {**os.environ, "SHANGZHUANG_CONFIG": str(source)}
    argv = [sys.executable, "-m", "jupyterhub", "-f", str(hub_config), *args.hub_args]
    os.chdir(state)
    # exec: Ctrl-C goes straight to JupyterHub, which stops the proxy and services cleanly.
    os.execve(sys.executable, argv, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shangzhuang", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a site config")
    check.add_argument("config", nargs="?", help="the TOML file (default: the embedded one)")
    check.set_defaults(func=cmd_check)

    up = sub.add_parser("up", help="start the workbench: hub, proxy and services")
    up.add_argument("--config", help="the site config (default: $SHANGZHUANG_CONFIG or embedded)")
    up.add_argument("hub_args", nargs="*", help="extra arguments passed to jupyterhub")
    up.set_defaults(func=cmd_up)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
