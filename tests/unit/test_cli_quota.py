"""`shangzhuang quota show | grant | report` against a real quota database (SQLite)."""

import csv
import io
import re
import subprocess
import sys
import time

import pytest

from shangzhuang.i18n import number
from shangzhuang.quota import open_ledger
from shangzhuang.quota.periods import period_at
from shangzhuang.settings import load_settings

CONFIG = """
[site]
timezone = "Asia/Shanghai"
[hub]
state_dir = "state"
[quota.accounts.default]
gpu_hours = 10
cpu_hours = 100
[quota.accounts.physics]
gpu_hours = 50
[quota.users.ann]
gpu_hours = 2
[quota.users.ben]
account = "physics"
[[profiles]]
name = "gpu-1"
cores = 4
memory = "8G"
gpus = 1
"""


@pytest.fixture
def site(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(CONFIG)
    return path


def sz(site, *args):
    return subprocess.run(
        [sys.executable, "-m", "shangzhuang.cli", "quota", *args, "--config", str(site)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def charge_an_hour(site, user, account) -> float:
    """Charge up to an hour of a 1-GPU, 4-core session that ends now, all of it inside the
    current period (within an hour after a reset, less: the reset is midnight in the site's
    zone, 16:00 UTC for Shanghai); returns the hours charged."""
    settings = load_settings(site)
    ledger = open_ledger(settings)
    now = time.time()
    period = period_at(now, settings.quota.period, settings.site.timezone)
    start = max(now - 3600, period.start)
    cid = f"lab:{user}/@{int(now)}"
    ledger.open(cid, user=user, account=account, source="lab", started=start,
                rates={"gpu_hours": 1, "cpu_hours": 4})  # fmt: skip
    ledger.close(cid, now)
    return (now - start) / 3600


def test_show_grant_and_show_again(site):
    out = sz(site, "show")
    assert out.returncode == 0, out.stderr
    assert "default              gpu_hours          0.00        10.00        10.00" in out.stdout
    assert "physics              gpu_hours          0.00        50.00        50.00" in out.stdout

    out = sz(site, "grant", "--user", "ann", "--resource", "gpu_hours", "--amount", "1.5",
             "--reason", "course project", "--by", "ops")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("granted 1.5 gpu_hours to user ann")

    h = charge_an_hour(site, "ann", "default")
    out = sz(site, "show", "ann")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Quota of ann (account default): ok"
    assert re.search(r"resets \d{1,2} \w{3}, \d\d:\d\d$", lines[1]), lines[1]  # words, not ISO
    # personal cap 2 + grant 1.5 - 1 used = 2.5; the account has 10 - 1 = 9.
    want = (  # figures as people write them (shangzhuang.i18n.number)
        f"GPU hours: {number(3.5 - h, 'en')} left · account {number(h, 'en')} used of 10 · "
        f"personal {number(h, 'en')} used of 3.5"
    )
    assert want in lines[2]
    grants = open_ledger(load_settings(site)).grants()
    assert [(g.by, g.name, g.amount, g.reason) for g in grants] == [
        ("ops", "ann", 1.5, "course project")
    ]


def test_grant_refusals_name_the_problem(site):
    out = sz(site, "grant", "--user", "ben", "--resource", "gpu_hours", "--amount", "1",
             "--reason", "x")  # fmt: skip
    assert out.returncode == 2
    assert "ben has no personal cap on gpu_hours: grant to their account (physics)" in out.stderr
    out = sz(site, "grant", "--account", "chemistry", "--resource", "gpu_hours", "--amount", "1",
             "--reason", "x")  # fmt: skip
    assert out.returncode == 2 and "unknown account 'chemistry'" in out.stderr
    out = sz(site, "grant", "--account", "physics", "--resource", "gpu_hours", "--amount", "-1",
             "--reason", "x")  # fmt: skip
    assert out.returncode == 2 and "amount must be a positive number" in out.stderr


def test_report_summary_and_csv(site):
    ha = charge_an_hour(site, "ann", "default")
    hb = charge_an_hour(site, "ben", "physics")
    out = sz(site, "report")
    assert out.returncode == 0, out.stderr
    assert f"ann                  default              gpu_hours        {ha:.4f}" in out.stdout
    assert f"ben                  physics              cpu_hours        {4 * hb:.4f}" in out.stdout

    out = sz(site, "report", "--csv", "--user", "ben")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {r["user"] for r in rows} == {"ben"}
    cpu = sum(float(r["amount"]) for r in rows if r["resource"] == "cpu_hours")
    assert cpu == pytest.approx(4 * hb)
    assert rows[0]["start"].endswith("+08:00")  # in the site's time zone

    out = sz(site, "report", "--since", "last week")
    assert out.returncode == 2 and "--since must be an ISO 8601 date" in out.stderr


def test_unreachable_database_is_named(tmp_path):
    path = tmp_path / "pg.toml"
    path.write_text(
        '[quota]\ndatabase_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"\n'
        '[[profiles]]\nname = "cpu"\ncores = 1\nmemory = "1G"\n'
    )
    out = sz(path, "show")
    assert out.returncode == 2
    assert "cannot open the quota database" in out.stderr and "(quota.database_url)" in out.stderr
