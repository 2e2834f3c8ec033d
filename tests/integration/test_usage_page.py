"""The usage page on a real hub: a user, a manager and an admin open /services/quota/ in
their browsers, and the figures behind its charts are the ledger's (its usage records)."""

import csv
import io
import json
import re
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

QUOTA = """
sample_seconds = 1
min_minutes_to_spawn = 0.05
[quota.accounts.default]
cpu_hours = 1000
[quota.accounts.physics]
cpu_hours = 100
gpu_hours = 5
managers = ["mara"]
[quota.users.uma]
account = "physics"
[quota.users.mara]
account = "physics"
[quota.users.rex]
gpu_hours = 0
"""
# The site runs one session at a time: a second start is refused (JupyterHub's 429).
LIMITS = "active_server_limit = 1\n"


@pytest.fixture(scope="module")
def hub():
    base = workdir()
    # NVML's readings for the hub's two fake GPUs (pynvml_standin.py: there is no GPU here)
    readings = base / "nvml.json"
    readings.write_text(json.dumps({"gpus": [{"utilisation": 3, "memory_mib": 512}] * 2}))
    readings.chmod(0o644)  # the quota service reads it as the platform's account
    hub = RunningHub(base, quota=QUOTA, nvml_readings=readings)
    # RunningHub writes the [hub] table: the limit goes into it.
    hub.config.write_text(hub.config.read_text().replace("[hub]\n", "[hub]\n" + LIMITS, 1))
    with hub as h:
        h.new_user("uma")
        h.new_user("mara")
        h.new_user("rex")
        # uma runs a Lab (2 cores) for a few meter ticks: the ledger has her charges
        h.spawn("uma", "cpu")
        h.wait_ready("uma")
        # meanwhile rex's start is over the site's limit (test_a_refused_start_...)
        r = h.spawn("rex", "cpu", ok=None)
        assert r.status_code == 429, r.text
        h.wait(lambda: ledger_hours(h, "uma") > 0, 60, "uma's first charges")
        h.stop_server("uma")
        h.wait(lambda: not balance(h, "uma")["running"], 60, "uma's session closed")
        yield h


def balance(hub, user: str) -> dict:
    return requests.get(
        f"{hub.url}/services/quota/api/v1/users/{user}",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    ).json()  # fmt: skip


def ledger_hours(hub, user: str | None = None, resource: str = "cpu_hours") -> float:
    """What the ledger's own records (the usage API, as its CSV export reads) add up to."""
    params = {"user": user} if user else {}
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/usage", params=params,
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    r.raise_for_status()
    return sum(x["amount"] for x in r.json()["records"] if x["resource"] == resource)


def open_page(hub, name: str, password: str) -> tuple[requests.Session, str]:
    browser = hub.login(name, password)
    r = browser.get(f"{hub.url}/services/quota/", headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/html")
    return browser, r.text


def page_json(hub, browser: requests.Session, path: str):
    r = browser.get(f"{hub.url}/services/quota/api/v1/{path}", timeout=30)
    assert r.status_code == 200, (path, r.text)
    return r.json() if "json" in r.headers["Content-Type"] else r.text


def test_a_user_sees_her_usage_per_day_as_the_ledger_has_it(hub):
    browser, html = open_page(hub, "uma", "correct-horse-9")
    assert "Your usage" in html and "You are charged to the account physics." in html
    assert "Your quota resets on" in html and 'id="sz-gpus"' in html
    assert "static/uplot/uPlot.iife.min.js" in html
    # the charting library comes from the service itself
    js = browser.get(f"{hub.url}/services/quota/static/uplot/uPlot.iife.min.js", timeout=30)
    assert js.status_code == 200 and "uPlot" in js.text
    daily = page_json(hub, browser, "usage/daily")
    used = ledger_hours(hub, "uma")
    assert used > 0
    assert sum(daily["by_source"]["cpu_hours"]["lab"]) == pytest.approx(used, abs=1e-5)
    assert daily["total"]["cpu_hours"] == pytest.approx(used, abs=1e-5)
    # not hers to see: no account section, no estate
    assert 'class="sz-account"' not in html and 'id="sz-estate"' not in html


def test_a_manager_sees_her_members_burn(hub):
    browser, html = open_page(hub, "mara", "correct-horse-9")
    assert 'data-account="physics"' in html and "Set the cap" in html
    assert 'id="sz-estate"' not in html
    burn = page_json(hub, browser, "accounts/physics/burn")
    members = {m["user"]: m for m in burn["members"]}
    assert members["uma"]["used"]["cpu_hours"] == pytest.approx(ledger_hours(hub, "uma"), abs=1e-5)
    assert burn["pool"]["cpu_hours"]["used"] == pytest.approx(
        ledger_hours(hub, "uma") + ledger_hours(hub, "mara"), abs=1e-5
    )
    assert burn["projection"]["cpu_hours"]["lasts_to_reset"] is True  # minutes of 100 hours
    account = page_json(hub, browser, "usage/daily?account=physics")
    pool_used = burn["pool"]["cpu_hours"]["used"]
    assert account["total"]["cpu_hours"] == pytest.approx(pool_used, abs=1e-5)


def test_an_admin_sees_the_estate_and_its_csv(hub):
    browser, html = open_page(hub, ADMIN, hub.password_of_admin())
    assert 'id="sz-estate"' in html
    estate = page_json(hub, browser, "estate")
    assert estate["total"]["cpu_hours"] == pytest.approx(ledger_hours(hub), abs=1e-5)
    assert estate["accounts"]["physics"]["cpu_hours"] == pytest.approx(
        ledger_hours(hub, "uma"), abs=1e-5
    )
    assert estate["top_users"][0]["user"] == "uma"
    rows = list(csv.DictReader(io.StringIO(page_json(hub, browser, "estate?format=csv"))))
    physics = next(r for r in rows if r["kind"] == "account" and r["name"] == "physics")
    assert float(physics["cpu_hours"]) == pytest.approx(ledger_hours(hub, "uma"), abs=1e-5)
    # and any user's days
    uma = page_json(hub, browser, "usage/daily?user=uma")
    assert uma["total"]["cpu_hours"] == pytest.approx(ledger_hours(hub, "uma"), abs=1e-5)


DASHBOARD = Path(__file__).resolve().parents[2] / "hub_config" / "examples" / "grafana-quota.json"


def test_metrics_count_used_hours_and_the_dashboard_reads_them(hub):
    r = requests.get(
        f"{hub.url}/services/quota/metrics",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    samples = {
        (s.name, s.labels.get("account"), s.labels.get("resource")): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    used = ledger_hours(hub, "uma") + ledger_hours(hub, "mara")
    key = ("physics", "cpu_hours")
    assert samples[("shangzhuang_quota_used_hours_total", *key)] == pytest.approx(used, abs=1e-5)
    assert samples[("shangzhuang_quota_account_used_hours", *key)] == pytest.approx(used, abs=1e-5)
    # an account nobody used yet is exported at 0, so rates start from the first scrape
    assert samples[("shangzhuang_quota_used_hours_total", "default", "gpu_hours")] == 0
    # every series the shipped Grafana dashboard queries is one the service exports
    exported = {name for name, _, _ in samples}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"shangzhuang_[a-z_]+", e)}
    assert wanted and wanted <= exported, wanted - exported


def ask_more(hub, browser: requests.Session, xsrf: str, path: str, body: dict):
    """What the page's script posts: the browser's cookie and the page's XSRF token."""
    return browser.post(
        f"{hub.url}/services/quota/api/v1/{path}", json=body,
        headers={"X-XSRFToken": xsrf}, timeout=30,
    )  # fmt: skip


def test_a_request_for_more_is_approved_or_declined_and_the_user_sees_it(hub):
    # the spawn page, where a quota refusal shows, links to the request form
    uma, page = open_page(hub, "uma", "correct-horse-9")
    assert 'id="request"' in page and 'id="sz-ask"' in page
    spawn = uma.get(f"{hub.url}/hub/spawn", timeout=60)
    assert 'href="/services/quota/#request"' in spawn.text, spawn.text[-3000:]
    uma_xsrf = re.search(r'data-xsrf="([^"]+)"', page).group(1)

    gpu_before = balance(hub, "uma")["resources"]["gpu_hours"]["remaining"]
    r = ask_more(hub, uma, uma_xsrf, "requests",
                 {"resource": "gpu_hours", "hours": 3, "reason": "a thesis deadline"})  # fmt: skip
    assert r.status_code == 201, r.text
    first = r.json()

    # her manager sees it on her page, with a form to decide it, and approves it
    mara, page = open_page(hub, "mara", "correct-horse-9")
    assert 'id="sz-to-decide"' in page
    mara_xsrf = re.search(r'data-xsrf="([^"]+)"', page).group(1)
    to_decide = page_json(hub, mara, "requests")["to_decide"]
    assert [(q["id"], q["user"], q["hours"]) for q in to_decide] == [(first["id"], "uma", 3)]
    r = ask_more(hub, mara, mara_xsrf, f"requests/{first['id']}/approve", {"reason": "ok"})
    assert r.status_code == 200, r.text
    assert balance(hub, "uma")["resources"]["gpu_hours"]["remaining"] == pytest.approx(
        gpu_before + 3, abs=0.01
    )
    grants = requests.get(
        f"{hub.url}/services/quota/api/v1/grants",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    ).json()  # fmt: skip
    assert [(g["by"], g["account"], g["amount"]) for g in grants] == [("mara", "physics", 3)]
    assert "a thesis deadline" in grants[0]["reason"]

    # a second one is declined: uma reads why
    r = ask_more(hub, uma, uma_xsrf, "requests",
                 {"resource": "cpu_hours", "hours": 500, "reason": "a big sweep"})  # fmt: skip
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    r = ask_more(hub, mara, mara_xsrf, f"requests/{second}/decline", {"reason": "too big"})
    assert r.status_code == 200, r.text
    mine = page_json(hub, uma, "requests?state=all")["mine"]
    assert [(q["id"], q["state"], q["answer"]) for q in mine] == [
        (second, "declined", "too big"), (first["id"], "approved", "ok"),
    ]  # fmt: skip


def test_a_refused_start_shows_in_the_admins_estate_and_its_csv(hub):
    """rex's starts refused by the hub: over the site's limit of running sessions (the
    fixture's 429, while uma's Lab ran) and with no GPU-hours left for gpu-1 (his cap is
    0). Each reaches the ledger through the quota service (fire-and-forget, so the test
    waits for it), and the admin's estate, its CSV and Prometheus count them; rex can't
    read the estate."""
    r = hub.spawn("rex", "gpu-1", ok=None)
    assert r.status_code == 403 and "Not enough quota to start gpu-1" in r.text, r.text
    admin, html = open_page(hub, ADMIN, hub.password_of_admin())
    assert 'id="estate-refusals"' in html and "Starts refused" in html

    def both_recorded():
        refused = page_json(hub, admin, "estate")["refusals"]
        by = refused["by_reason"]
        return refused if by["quota"] >= 1 and by["server-limit"] >= 1 else None

    refused = hub.wait(both_recorded, 30, "rex's refusals in the estate")
    assert refused["by_reason"] == {"quota": 1, "quota-unavailable": 0, "gpus-busy": 0,
                                    "server-limit": 1, "slurm": 0, "held-at-zero": 0}  # fmt: skip
    assert refused["top_users"] == [
        {"user": "rex", "refusals": 2, "by_reason": {"quota": 1, "server-limit": 1}}
    ]
    assert sum(refused["per_day"]["quota"]) == 1
    assert page_json(hub, admin, "estate")["queue"] is None  # the local backend has none
    rows = list(csv.DictReader(io.StringIO(page_json(hub, admin, "estate?format=csv"))))
    counts = {(r["kind"], r["name"], r["day"]): r["count"] for r in rows if r["count"]}
    assert counts[("refusals", "quota", "")] == "1"
    assert counts[("refusals", "server-limit", "")] == "1"
    assert counts[("refused_user", "rex", "")] == "2"
    metrics = requests.get(
        f"{hub.url}/services/quota/metrics",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    ).text  # fmt: skip
    assert 'shangzhuang_quota_refusals_total{reason="server-limit"} 1.0' in metrics
    rex, html = open_page(hub, "rex", "correct-horse-9")
    assert 'id="sz-estate"' not in html
    assert rex.get(f"{hub.url}/services/quota/api/v1/estate", timeout=30).status_code == 403


def test_a_gpu_session_shows_its_utilisation_and_efficiency(hub):
    """gina's Lab holds one of the pool's GPUs; the quota service reads it with NVML (the
    stand-in, which says 3% for every GPU: no GPU here) for the GPU the spawner's state
    names, and her page's data shows the readings and her efficiency: all of her
    GPU-hours under 10%. The estate and Prometheus count them as idle GPU-hours."""
    hub.new_user("gina")
    gina, _ = open_page(hub, "gina", "correct-horse-9")
    hub.spawn("gina", "gpu-1")
    hub.wait_ready("gina")

    def read_thrice():
        sessions = page_json(hub, gina, "usage/gpus")["sessions"]
        return sessions if sessions and len(sessions[0]["utilisation"]) >= 3 else None

    hub.wait(read_thrice, 60, "three readings of gina's GPU")
    hub.stop_server("gina")
    data = page_json(hub, gina, "usage/gpus")
    (session,) = data["sessions"]
    assert session["consumer"].startswith("lab:gina/@") and session["gpus"] == 1
    assert {p for _, p in session["utilisation"]} == {3}
    assert session["efficiency"]["idle_share"] == 1.0
    assert data["total"]["idle_share"] == 1.0 and data["total"]["percent"] == 3
    assert data["total"]["gpu_hours"] > 0
    # uma's Lab had no GPU: nothing read
    admin, _ = open_page(hub, ADMIN, hub.password_of_admin())
    assert page_json(hub, admin, "usage/gpus?user=uma")["sessions"] == []
    estate = page_json(hub, admin, "estate")["gpu_utilisation"]
    idle = data["total"]["idle_gpu_hours"]
    assert estate["accounts"]["default"]["idle_gpu_hours"] == pytest.approx(idle, abs=1e-5)
    assert estate["idle_gpu_hours"] == pytest.approx(idle, abs=1e-5)
    metrics = requests.get(
        f"{hub.url}/services/quota/metrics",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    ).text  # fmt: skip
    counted = {
        s.labels["account"]: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "shangzhuang_quota_idle_gpu_hours_total"
    }
    # the counter adds each tick's readings as they come: at least what the page shows
    assert counted["default"] >= idle - 1e-6 and counted["physics"] == 0
