"""The command line: `shangzhuang up | check | quota | apps | upgrade-db | backup | restore`.

What it prints for a person is a Message, in the operator's language
(i18n.operator_language: the terminal's locale, else site.language); `apps`, which users
run in their sessions, speaks the session's (i18n.terminal_language). Logs stay English.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from pathlib import Path

from shangzhuang import i18n
from shangzhuang.i18n import Message
from shangzhuang.settings import DEFAULT_CONFIG, Settings, SettingsError, load_settings


def _settings_or_exit(path: str | None, operator: bool = True) -> Settings:
    try:
        settings = load_settings(path)
    except SettingsError as e:
        from shangzhuang.operate import refused_config

        print(refused_config(e), file=sys.stderr)
        sys.exit(2)
    if operator:  # without a locale (a service manager, cron): the site's language
        i18n.use(i18n.operator_language(settings.site.language))
    return settings


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


def source_is_default(settings: Settings) -> bool:
    return Path(settings.source).resolve() == DEFAULT_CONFIG.resolve()


def cmd_check(args) -> int:
    settings = _settings_or_exit(args.config)
    print(Message("ok: {config}", config=str(settings.source)))
    return 0


def cmd_up(args) -> int:
    settings = _settings_or_exit(args.config)
    try:  # database URLs kept in a file or the environment: missing ones named, not shown
        settings.hub.db_url, settings.quota.url  # noqa: B018 (read for their errors)
    except ValueError as e:
        print(f"{settings.source}: {e}", file=sys.stderr)
        sys.exit(2)
    state = settings.hub.state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    admin = settings.hub.admins[0] if settings.hub.admins else None
    # Only the embedded sign-up has passwords of its own; LDAP and OIDC admins use theirs.
    if admin and settings.auth.kind == "native":
        password, new = admin_password(settings)
        kept = str(state / "admin-password")
        if new:
            print(Message("First start: admin {admin}, password {password}", admin=repr(admin),
                          password=password))  # fmt: skip
            print(Message("(kept in {file}, mode 0600)", file=kept))
        else:
            print(Message("Admin {admin}: password from $SHANGZHUANG_ADMIN_PASSWORD or {file}",
                          admin=repr(admin), file=kept))  # fmt: skip
    # The embedded default (`make up`, a first look from a checkout) upgrades its own
    # databases after a `git pull`; a site's own config is upgraded by its operator.
    from shangzhuang.operate import pending_upgrades, upgrade_db

    if pending := pending_upgrades(settings):
        databases = list(pending)  # a list: joined as the language joins one
        if source_is_default(settings):
            print(Message("Upgrading {databases} to this version first (shangzhuang upgrade-db)",
                          databases=databases))  # fmt: skip
            upgrade_db(settings)
        else:
            print(
                Message("{databases}: made by an older version. Back up and upgrade with "
                        "`shangzhuang upgrade-db --config {config}`, then start again.",
                        databases=databases, config=str(settings.source)),
                file=sys.stderr,
            )  # fmt: skip
            return 2
    print(Message("Shangzhuang Workbench on {url}  (Ctrl-C stops it)", url=settings.hub.url),
          flush=True)  # fmt: skip

    source = Path(settings.source).resolve()
    hub_config = source.parent / "jupyterhub_config.py"
    if not hub_config.exists():
        hub_config = DEFAULT_CONFIG.parent / "jupyterhub_config.py"
    env = {**os.environ, "SHANGZHUANG_CONFIG": str(source)}
    argv = [sys.executable, "-m", "jupyterhub", "-f", str(hub_config), *args.hub_args]
    os.chdir(state)
    # Started without a terminal (nohup, a CI job, a service manager), SIGINT may come
    # ignored, and an ignored signal stays ignored across exec: the hub would still stop,
    # but its services would ignore the hub's SIGINT and each wait out its timeouts.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # exec: Ctrl-C goes straight to JupyterHub, which stops the proxy and services cleanly.
    os.execve(sys.executable, argv, env)


# --- operating a site: shangzhuang/operate.py ---------------------------------------------
def _operate(args, step) -> int:
    from shangzhuang.operate import OperateError

    settings = _settings_or_exit(args.config)
    try:
        step(settings)
    except OperateError as e:
        print(f"shangzhuang {args.command}: {e}", file=sys.stderr)  # e: a Message
        return 2
    return 0


def cmd_upgrade_db(args) -> int:
    from shangzhuang.operate import upgrade_db

    return _operate(args, upgrade_db)


def cmd_install(args) -> int:
    from shangzhuang.operate import OperateError, install

    try:
        install(
            Path(args.config), root=Path(args.root), account=args.account,
            proxy=args.proxy_command, tls_cert=args.tls_cert, tls_key=args.tls_key,
            http_port=args.http_port,
        )  # fmt: skip
    except OperateError as e:
        print(f"shangzhuang install: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_backup(args) -> int:
    from shangzhuang.operate import backup

    return _operate(args, lambda settings: backup(settings, Path(args.dest)))


def cmd_restore(args) -> int:
    from shangzhuang.operate import restore

    return _operate(args, lambda settings: restore(settings, Path(args.src)))


# --- quota: straight on the ledger, so it works on the hub host even with the hub down ----
def _ledger(args):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from shangzhuang.quota import database_url, open_ledger

    settings = _settings_or_exit(args.config)
    try:
        return open_ledger(settings)
    except OperationalError as e:
        # the URL and the driver's message without the password (no secret in any output)
        url = make_url(database_url(settings))
        print(
            Message("cannot open the quota database {url} (quota.database_url): {error}",
                    url=url.render_as_string(hide_password=True),
                    error=str(e.orig).replace(url.password or "<none>", "***")),
            file=sys.stderr,
        )  # fmt: skip
        sys.exit(2)


def cmd_quota_show(args) -> int:
    from shangzhuang.quota import QuotaReport

    ledger = _ledger(args)
    if args.user:
        print(QuotaReport(ledger.balance(args.user).as_dict()).text(i18n.current()))
        return 0
    period = ledger.period()
    from shangzhuang.quota.periods import iso

    start = iso(period.start, ledger.tz)
    if period.end is None:
        print(Message("Period from {start}, never resets (grants only)", start=start))
    else:
        print(Message("Period from {start}, resets {resets}", start=start,
                      resets=iso(period.end, ledger.tz)))  # fmt: skip
    # TRANSLATORS: the columns of `shangzhuang quota show` (account, resource, used, of, left)
    head = [Message("account"), Message("resource"), Message("used"), Message("of"),
            Message("left")]  # fmt: skip
    print(_row(head, QUOTA_SHOW, texts=2))
    for account, pool in ledger.accounts_pool().items():
        for resource, lim in pool.items():
            total = lim["allocated"] + lim["granted"]
            print(_row([account, resource, f"{lim['used']:.2f}", f"{total:.2f}",
                        f"{lim['remaining']:.2f}"], QUOTA_SHOW, texts=2))  # fmt: skip
    return 0


QUOTA_SHOW = (20, 10, 12, 12, 12)  # the columns' widths


def _row(cells: list, widths: tuple[int, ...], texts: int) -> str:
    """A table row: the first `texts` cells left-aligned, figures right-aligned, padded by the width
    a terminal gives them (a Chinese character takes two columns)."""
    import unicodedata

    out = []
    for n, (cell, width) in enumerate(zip(cells, widths, strict=False)):
        cell = str(cell)
        pad = " " * max(0, width - sum(
            2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in cell))  # fmt: skip
        out.append(cell + pad if n < texts else pad + cell)
    return " ".join(out)


def cmd_quota_grant(args) -> int:
    from shangzhuang.quota.ledger import QuotaError

    ledger = _ledger(args)
    by = args.by or os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"
    try:
        grant = ledger.grant(
            by=by, resource=args.resource, amount=args.amount, reason=args.reason,
            user=args.user, account=args.account,
        )  # fmt: skip
    except QuotaError as e:
        print(f"shangzhuang quota grant: {e}", file=sys.stderr)
        return 2
    if args.user:
        done = Message("granted {amount} {resource} to user {user} (grant {id})",
                       user=args.user, amount=grant["amount"], resource=grant["resource"],
                       id=str(grant["id"]))  # fmt: skip
    else:
        done = Message("granted {amount} {resource} to account {account} (grant {id})",
                       account=args.account, amount=grant["amount"],
                       resource=grant["resource"], id=str(grant["id"]))  # fmt: skip
    print(done)
    return 0


def cmd_quota_report(args) -> int:
    import csv
    from collections import defaultdict
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from shangzhuang.quota.periods import iso

    ledger = _ledger(args)

    def when(text, name):
        if not text:
            return None
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            print(Message("--{option} must be an ISO 8601 date or time, not {given}",
                          option=name, given=repr(text)), file=sys.stderr)  # fmt: skip
            sys.exit(2)
        return (t if t.tzinfo else t.replace(tzinfo=ZoneInfo(ledger.tz))).timestamp()

    since = when(args.since, "since")
    if since is None and not args.all:
        since = ledger.period().start  # this period, by default
    rows = ledger.usage(user=args.user, since=since, until=when(args.until, "until"))
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(["consumer", "user", "account", "resource", "source", "start", "end", "amount"])
        for r in rows:
            w.writerow(
                [r.consumer, r.user, r.account, r.resource, r.source,
                 iso(r.start, ledger.tz), iso(r.end, ledger.tz), f"{r.amount:.9f}"]
            )  # fmt: skip
        return 0
    sums = defaultdict(float)
    for r in rows:
        sums[(r.user, r.account, r.resource)] += r.amount
    widths = (20, 20, 10, 12)
    print(_row([Message("user"), Message("account"), Message("resource"), Message("used")],
               widths, texts=3))  # fmt: skip
    for (user, account, resource), used in sorted(sums.items()):
        print(_row([user, account, resource, f"{used:.4f}"], widths, texts=3))
    return 0


# --- apps: through the apps service with a hub token (works inside a session as is) --------
def _apps_client(args):
    from shangzhuang.apps.client import AppsAPIError, AppsClient

    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    try:
        if args.hub_url:
            return AppsClient.for_hub(args.hub_url, token)
        if os.environ.get("SHANGZHUANG_APPS_URL"):  # inside a session
            return AppsClient(token=token)
        # On the hub's machine: the apps service itself (no need to resolve *.localhost names)
        settings = _settings_or_exit(args.config, operator=False)
        return AppsClient(f"http://127.0.0.1:{settings.apps.port}/services/apps/", token)
    except AppsAPIError as e:
        print(f"shangzhuang apps: {e.message}", file=sys.stderr)
        sys.exit(2)


def _apps_call(fn):
    from shangzhuang.apps.client import AppsAPIError
    from shangzhuang.apps.registry import AppError

    try:
        return fn()
    except (AppsAPIError, AppError) as e:
        print(f"shangzhuang apps: {getattr(e, 'message', e)}", file=sys.stderr)
        sys.exit(2)


def _say(message) -> str:
    """A line for whoever runs `shangzhuang apps`: mostly users, in their session's terminal,
    so in the session's language ($SHANGZHUANG_LANGUAGE, set by the hub), else $LANG's
    (the operator's commands speak i18n.operator_language's, set by `main`)."""
    return message.render(i18n.terminal_language())


def cmd_apps_publish(args) -> int:
    from shangzhuang.apps.client import parse_share
    from shangzhuang.apps.snapshot import collect

    client = _apps_client(args)
    snap = _apps_call(lambda: collect(args.notebook, args.file))
    app = _apps_call(
        lambda: client.publish(
            args.name, snap, owner=args.owner, description=args.description or "",
            viewers=parse_share(args.share), profile=args.profile or "",
            always_on=True if args.always_on else None,
        )
    )  # fmt: skip
    from shangzhuang.i18n import Plural

    where, n = f"{app['owner']}/{app['name']}", len(app["files"])
    done = Plural("published {app} ({n} file): {url}", "published {app} ({n} files): {url}", n,
                  app=where, url=app["full_url"])  # fmt: skip
    print(_say(done))
    print(_say(Message("  who may view: {who}", who=app["access"])))
    if app.get("start_error"):
        print(_say(Message("  not running yet: {why}", why=app["start_error"])), file=sys.stderr)
    return 0


def cmd_apps_list(args) -> int:
    import json

    listing = _apps_call(lambda: _apps_client(args).list(every=args.all))
    if args.json:
        print(json.dumps(listing, indent=1))
        return 0
    for title, apps in ((Message("Your apps:"), listing["owned"]),
                        (Message("Shared with you:"), listing["shared"])):  # fmt: skip
        print(_say(title))
        for a in apps:
            state = _say(Message("running") if a["running"] else Message("stopped"))
            print(f"  {a['owner']}/{a['name']:<24} {state:<8} {a['access']:<30} {a['full_url']}")
        if not apps:
            print(_say(Message("  (none)")))
    return 0


def cmd_apps_unpublish(args) -> int:
    _apps_call(lambda: _apps_client(args).unpublish(args.name, owner=args.owner))
    print(_say(Message("unpublished {name}", name=args.name)))
    return 0


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

    quota = sub.add_parser("quota", help="balances, grants and usage reports").add_subparsers(
        dest="quota_command", required=True
    )
    show = quota.add_parser("show", help="a user's balance, or every account's pool")
    show.add_argument("user", nargs="?")
    show.set_defaults(func=cmd_quota_show)
    grant = quota.add_parser("grant", help="top up an account or a user's personal cap")
    target = grant.add_mutually_exclusive_group(required=True)
    target.add_argument("--user")
    target.add_argument("--account")
    grant.add_argument("--resource", required=True, choices=["gpu_hours", "cpu_hours"])
    grant.add_argument("--amount", required=True, type=float, help="hours")
    grant.add_argument("--reason", required=True)
    grant.add_argument("--by", help="who grants (default: $SUDO_USER or $USER)")
    grant.set_defaults(func=cmd_quota_grant)
    report = quota.add_parser("report", help="usage per user, or every charge as CSV")
    report.add_argument("--csv", action="store_true", help="every charged interval, as CSV")
    report.add_argument("--user")
    report.add_argument("--since", help="ISO date or time (default: start of this period)")
    report.add_argument("--until", help="ISO date or time")
    report.add_argument("--all", action="store_true", help="all history, not this period")
    report.set_defaults(func=cmd_quota_report)
    for p in (show, grant, report):
        p.add_argument("--config", help="the site config (default: $SHANGZHUANG_CONFIG, embedded)")

    apps = sub.add_parser("apps", help="publish notebooks as Voila apps and share them")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)
    publish = apps_sub.add_parser("publish", help="publish (or publish again) a notebook as an app")
    publish.add_argument("notebook", help="the .ipynb; files it declares in metadata go with it")
    publish.add_argument("--name", required=True, help="the app's name (lower-case, digits, -)")
    publish.add_argument("--description", help="what the app does, shown on the apps page")
    publish.add_argument(
        "--share", action="append", default=[], metavar="WHO",
        help="who may view: user names, group:NAME, signed-in (anyone with an account), "
        "public (no account; if the site allows it); repeat or comma-separate",
    )  # fmt: skip
    publish.add_argument("--file", action="append", default=[], metavar="PATTERN",
                         help="more files or globs beside the notebook to take along")  # fmt: skip
    publish.add_argument("--profile", help="the profile the app runs on (default: the site's)")
    publish.add_argument("--always-on", action="store_true", help="never idle-stopped (admins)")
    publish.set_defaults(func=cmd_apps_publish)
    listing = apps_sub.add_parser("list", help="apps you own and apps shared with you")
    listing.add_argument("--all", action="store_true", help="every app on the site (admins)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_apps_list)
    unpublish = apps_sub.add_parser("unpublish", help="stop an app and remove it")
    unpublish.add_argument("name")
    unpublish.set_defaults(func=cmd_apps_unpublish)
    for p in (publish, unpublish):
        p.add_argument("--owner", help="whose app (default: the token's user; admins: anyone)")
    for p in (publish, listing, unpublish):
        p.add_argument("--hub-url", help="the site's address, e.g. https://hub.example.org")
        p.add_argument("--token", help="a JupyterHub token (default: $JUPYTERHUB_API_TOKEN)")
        p.add_argument("--config", help="the site config, for its address (default: embedded)")

    upgrade = sub.add_parser("upgrade-db", help="upgrade the hub database and the quota ledger "
                             "to this version's schema (backs SQLite up first)")  # fmt: skip
    upgrade.set_defaults(func=cmd_upgrade_db)
    backup = sub.add_parser("backup", help="copy the site's state (databases, secrets, apps) "
                            "into a new folder, online")  # fmt: skip
    backup.add_argument("dest", help="a new (or empty) folder")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="put a backup into a fresh state folder")
    restore.add_argument("src", help="a folder made by `shangzhuang backup`")
    restore.set_defaults(func=cmd_restore)
    inst = sub.add_parser("install", help="lay down a server install: systemd units for the "
                          "proxy and the hub, the proxy's token, the state folder")  # fmt: skip
    inst.add_argument("--config", required=True, help="the site config, e.g. "
                      "/etc/shangzhuang/site.toml (hub.separate_proxy = true)")  # fmt: skip
    inst.add_argument("--root", default="/", help="write the units under this folder (tests)")
    inst.add_argument("--account", help="the platform's system account (site.service_account)")
    inst.add_argument("--proxy-command", help="configurable-http-proxy (default: from PATH)")
    inst.add_argument("--tls-cert", type=Path, help="the certificate chain (PEM): wildcard")
    inst.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    inst.add_argument("--http-port", type=int, default=80, help="redirected to https (80)")
    inst.set_defaults(func=cmd_install)
    for p in (upgrade, backup, restore):
        p.add_argument("--config", help="the site config (default: $SHANGZHUANG_CONFIG, embedded)")

    args = parser.parse_args(argv)
    # `apps`: the session's language (users, in Lab's terminal); the operator's commands:
    # the locale's (site.language once the config is read, if no locale is set).
    apps = args.command == "apps"
    with i18n.speaking(i18n.terminal_language() if apps else i18n.operator_language()):
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
