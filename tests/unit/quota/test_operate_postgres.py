"""`shangzhuang upgrade-db` and `backup` with the ledger on PostgreSQL (a throwaway server,
tests/postgres.py): upgraded from the last release's schema; named as pg_dump's business."""

from __future__ import annotations

import json
import subprocess
import sys

from shangzhuang.quota.db import make_engine
from shangzhuang.quota.schema import head_revision, schema_revision
from tests.unit.test_operate import last_release_ledger_at


def test_upgrade_db_and_backup_with_the_ledger_on_postgresql(postgres, tmp_path):
    url = postgres.create_database()
    old = last_release_ledger_at(url, tmp_path / "old")
    config = tmp_path / "site.toml"
    config.write_text(f"""
[hub]
state_dir = "state"
[quota]
database_url = "{url}"
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
""")

    def sz(*args):
        return subprocess.run(
            [sys.executable, "-m", "shangzhuang.cli", *args, "--config", str(config)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    out = sz("upgrade-db")
    assert out.returncode == 0, out.stderr
    assert "is on PostgreSQL: not backed up by this command" in out.stdout
    assert f"upgraded the quota database from revision {old} to {head_revision()}" in out.stdout
    engine = make_engine(url)
    assert schema_revision(engine) == head_revision()
    engine.dispose()

    out = sz("backup", str(tmp_path / "backup"))
    assert out.returncode == 0, out.stderr
    assert "quota database on postgresql+psycopg://" in out.stdout
    assert "not in this backup; back it up with pg_dump" in out.stdout
    manifest = json.loads((tmp_path / "backup" / "backup.json").read_text())
    assert manifest["postgresql"] == ["quota.sqlite"] and "quota.sqlite" not in manifest["files"]
