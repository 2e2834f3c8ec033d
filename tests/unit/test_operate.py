"""`shangzhuang upgrade-db | backup | restore` on real SQLite state folders (no hub needed).

The previous release's ledger is made with the migrations of the last tag (`git archive`),
so the upgrade is the one a site running that release would get. The meter's writes are
`Ledger.charge` calls (what the meter makes every tick) from a separate process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from shangzhuang.quota import open_ledger
from shangzhuang.quota.db import make_engine
from shangzhuang.quota.schema import OutdatedSchema, head_revision, schema_revision
from shangzhuang.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
LAST_RELEASE = "v0.1.0"
# The commit the tag names: a clone that fetched main without tags still has it.
LAST_RELEASE_COMMIT = "004650e2ec71f6c79a0f76322b3c8e585b3acd5d"

CONFIG = """
[site]
timezone = "Asia/Shanghai"
[hub]
state_dir = "state"
[quota.accounts.default]
gpu_hours = 1000
cpu_hours = 4000
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
"""


def site(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.toml"
    path.write_text(CONFIG)
    return path


def sz(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "shangzhuang.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def last_release_migrations(dest: Path) -> Path:
    """The quota migrations as the last tagged release shipped them."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LAST_RELEASE_COMMIT,
         "src/shangzhuang/quota/migrations"],
        capture_output=True,
    )  # fmt: skip
    if tar.returncode != 0:  # a shallow clone: the release's commit is not here
        pytest.skip(f"{LAST_RELEASE} ({LAST_RELEASE_COMMIT[:7]}) is not in this checkout's "
                    f"history: {tar.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(dest)  # our own repository's files
    return dest / "src/shangzhuang/quota/migrations"


def last_release_ledger(path: Path, scratch: Path) -> str:
    """A ledger at the last release's schema, with a grant in it; returns its revision."""
    return last_release_ledger_at(f"sqlite:///{path}", scratch)


def last_release_ledger_at(url: str, scratch: Path) -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(last_release_migrations(scratch)))
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.execute(text(
            "INSERT INTO grants (at, by, kind, name, resource, amount, reason, period_start) "
            "VALUES (1, 'ops', 'user', 'ann', 'gpu_hours', 2.5, 'course', 0)"
        ))  # fmt: skip
    old = schema_revision(engine)
    engine.dispose()
    if old == head_revision():
        pytest.skip(f"no quota migration since {LAST_RELEASE}: nothing to upgrade")
    return old


def test_upgrade_db_from_the_last_release_backs_up_first_and_services_refuse_until_then(
    tmp_path,
):
    config = site(tmp_path / "etc")
    state = tmp_path / "etc" / "state"
    state.mkdir(mode=0o700)
    old = last_release_ledger(state / "quota.sqlite", tmp_path / "old")  # where it was kept
    ledger_file = tmp_path / "etc" / "ledger" / "quota.sqlite"  # where it is now

    # Whoever opens the ledger now is refused, told the command to run; nothing migrates.
    # It moved out of the state folder first (issue 17: the quota service's account owns it).
    with pytest.raises(OutdatedSchema, match=r"Run `shangzhuang upgrade-db --config .*site\.toml`"):
        open_ledger(load_settings(config))
    assert ledger_file.exists() and not (state / "quota.sqlite").exists()
    service = subprocess.run(
        [sys.executable, "-m", "shangzhuang.quota.service"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SHANGZHUANG_CONFIG": str(config)},
    )  # fmt: skip
    assert service.returncode != 0
    assert "shangzhuang upgrade-db --config" in service.stderr, service.stderr[-2000:]
    up = sz("up", "--config", config)  # a site's own config: the operator upgrades
    assert up.returncode == 2
    assert (
        f"quota.sqlite: made by an older version. Back up and upgrade with `shangzhuang "
        f"upgrade-db --config {config}`" in up.stderr
    ), up.stderr
    engine = make_engine(f"sqlite:///{ledger_file}")
    assert schema_revision(engine) == old
    engine.dispose()

    out = sz("upgrade-db", "--config", config)
    assert out.returncode == 0, out.stderr
    assert f"upgraded the quota database from revision {old} to {head_revision()}" in out.stdout
    (backup,) = (state / "backups").glob("pre-upgrade-*/quota.sqlite")
    assert f"backed up {ledger_file} to {backup}" in out.stdout
    for path, revision in ((backup, old), (ledger_file, head_revision())):
        engine = make_engine(f"sqlite:///{path}")
        assert schema_revision(engine) == revision
        with engine.connect() as conn:
            assert conn.execute(text("SELECT amount FROM grants")).scalar() == 2.5
        engine.dispose()
    assert backup.stat().st_mode & 0o777 == 0o600

    again = sz("upgrade-db", "--config", config)
    assert again.returncode == 0, again.stderr
    assert "nothing to upgrade" in again.stdout
    assert len(list((state / "backups").iterdir())) == 1


def test_upgrade_db_upgrades_an_older_hub_database_with_a_service_managers_path(tmp_path):
    """The hub database one JupyterHub revision back (JupyterHub's own Alembic downgrade);
    `shangzhuang upgrade-db` run with the PATH systemd or cron gives (no venv on it)."""
    from jupyterhub import dbutil, orm
    from sqlalchemy import create_engine

    config = site(tmp_path / "etc")
    state = tmp_path / "etc" / "state"
    state.mkdir(mode=0o700)
    url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    orm.new_session_factory(url)
    venv_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    with dbutil._temp_alembic_ini(url) as ini:
        subprocess.run(
            ["alembic", "-c", ini, "downgrade", "-1"], check=True, capture_output=True,
            env={**os.environ, "PATH": venv_path},
        )  # fmt: skip

    def hub_revision(path):
        engine = create_engine(f"sqlite:///{path}")
        try:
            orm.check_db_revision(engine)
            return "current"
        except orm.DatabaseSchemaMismatch:
            return "older"
        finally:
            engine.dispose()

    assert hub_revision(state / "jupyterhub.sqlite") == "older"
    out = subprocess.run(
        [str(Path(sys.executable).parent / "shangzhuang"), "upgrade-db", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "upgraded the hub database" in out.stdout
    (backup,) = (state / "backups").glob("pre-upgrade-*/jupyterhub.sqlite")
    assert hub_revision(backup) == "older"
    assert hub_revision(state / "jupyterhub.sqlite") == "current"


class Exec(Exception):
    """Raised instead of exec'ing JupyterHub."""


def test_up_on_the_embedded_default_upgrades_by_itself_and_says_so(tmp_path, monkeypatch):
    """`make up` after a `git pull`: the checkout's own state is upgraded, not refused.
    (The embedded default is this test's config; JupyterHub's exec is stopped short.)"""
    from shangzhuang import cli

    config = site(tmp_path / "etc")
    state = tmp_path / "etc" / "state"
    state.mkdir(mode=0o700)
    old = last_release_ledger(state / "quota.sqlite", tmp_path / "old")
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", config)
    monkeypatch.setattr(cli.os, "execve", lambda *a: (_ for _ in ()).throw(Exec()))
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
    monkeypatch.setenv("SHANGZHUANG_ADMIN_PASSWORD", "embedded-test-password")
    monkeypatch.chdir(tmp_path)  # `up` changes into the state folder; put back after
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(Exec):
        cli.main(["up", "--config", str(config)])
    text_out = out.getvalue()
    assert "Upgrading quota.sqlite to this version first (shangzhuang upgrade-db)" in text_out
    assert f"upgraded the quota database from revision {old} to {head_revision()}" in text_out
    engine = make_engine(f"sqlite:///{tmp_path / 'etc' / 'ledger' / 'quota.sqlite'}")
    assert schema_revision(engine) == head_revision()
    engine.dispose()
    assert list((state / "backups").glob("pre-upgrade-*/quota.sqlite"))


WRITER = """
import sys, time
from pathlib import Path
from shangzhuang.quota import open_ledger
from shangzhuang.settings import load_settings

ledger = open_ledger(load_settings(sys.argv[1]))
users = [f"u{i}" for i in range(5)]
t0 = time.time()  # charges run ahead by 1 s a tick, inside this period
for u in users:
    ledger.open(f"lab:{u}", user=u, account="default", source="lab", started=t0,
                rates={"gpu_hours": 1, "cpu_hours": 4})
ready, stop, step = Path(sys.argv[2]), Path(sys.argv[3]), 0
while not stop.exists():
    step += 1
    # One tick: every user charged up to the same mark, in one transaction (as the meter).
    ledger.charge({f"lab:{u}": t0 + step for u in users})
    if step % 20 == 0:
        ledger.post()
    if step == 50:
        ready.touch()
print(step)
"""


def balances(config: Path) -> dict:
    ledger = open_ledger(load_settings(config))
    return {u: ledger.balance(u).as_dict() for u in (f"u{i}" for i in range(5))}


def used_by_user(config: Path) -> dict[str, float]:
    ledger = open_ledger(load_settings(config))
    totals = ledger.totals_used(ledger.period().start)
    return {n: used for (kind, n, r), used in totals.items() if kind == "user" and r == "gpu_hours"}


def test_backup_while_the_meter_writes_then_restore_into_a_fresh_state_folder(tmp_path):
    config = site(tmp_path / "live")
    state = tmp_path / "live" / "state"
    state.mkdir(mode=0o700)
    open_ledger(load_settings(config))  # the schema
    (state / "cookie_secret").write_bytes(os.urandom(32))
    (state / "cookie_secret").chmod(0o600)
    app = tmp_path / "live" / "apps" / "ann" / "demo"
    app.mkdir(parents=True)
    (app / "app.json").write_text('{"name": "demo"}')
    app.parent.chmod(0o750)

    ready, stop = tmp_path / "ready", tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(config), str(ready), str(stop)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert writer.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer made no 50 ticks in 60 s"
            time.sleep(0.05)
        during = sz("backup", tmp_path / "during", "--config", config)
        assert writer.poll() is None, "the writer stopped before the backup ended"
    finally:
        stop.touch()
        ticks = int(writer.communicate(timeout=60)[0])
    assert during.returncode == 0, during.stderr
    after = sz("backup", tmp_path / "after", "--config", config)
    assert after.returncode == 0, after.stderr
    live = balances(config)
    assert live and ticks > 50

    # Restored from the backup taken mid-write: one consistent snapshot (a tick is all or
    # nothing, so every user has the same usage), at least the 50 ticks before it began.
    copy = site(tmp_path / "copy")
    out = sz("restore", tmp_path / "during", "--config", copy)
    assert out.returncode == 0, out.stderr
    used = used_by_user(copy)
    assert len(used) == 5 and len(set(used.values())) == 1, used
    assert 50 / 3600 - 1e-9 <= used["u0"] <= ticks / 3600 + 1e-9

    # Restored from the backup taken once the writes stopped: balances identical.
    fresh = site(tmp_path / "fresh")
    out = sz("restore", tmp_path / "after", "--config", fresh)
    assert out.returncode == 0, out.stderr
    assert balances(fresh) == live
    assert used_by_user(fresh) == used_by_user(config)
    assert used_by_user(config)["u0"] == pytest.approx(ticks / 3600)
    restored = tmp_path / "fresh" / "state" / "cookie_secret"
    assert restored.read_bytes() == (state / "cookie_secret").read_bytes()
    assert restored.stat().st_mode & 0o777 == 0o600
    restored_app = tmp_path / "fresh" / "apps" / "ann"
    assert (restored_app / "demo" / "app.json").read_text() == '{"name": "demo"}'
    assert restored_app.stat().st_mode & 0o777 == 0o750

    # Never over a state folder that has databases, nor into a non-empty backup folder.
    again = sz("restore", tmp_path / "after", "--config", fresh)
    assert again.returncode == 2
    assert "restore into a fresh state folder" in again.stderr
    assert sz("backup", tmp_path / "after", "--config", config).returncode == 2


def test_restore_refuses_while_the_hub_runs(tmp_path):
    live = site(tmp_path / "live")
    open_ledger(load_settings(live))
    assert sz("backup", tmp_path / "b", "--config", live).returncode == 0
    target = site(tmp_path / "target")
    (tmp_path / "target" / "state").mkdir()
    (tmp_path / "target" / "state" / "hub.pid").write_text(str(os.getpid()))
    out = sz("restore", tmp_path / "b", "--config", target)
    assert out.returncode == 2
    assert f"the hub is running (pid {os.getpid()})" in out.stderr
