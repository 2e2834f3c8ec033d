"""The usage page in Chromium: a user's and a manager's charts draw the ledger's figures
(read back from the chart elements' data), the period changes, a manager sets a member's
cap through the page's form. Screenshots in test-artifacts/."""

import json
from datetime import date, timedelta

import pytest
import requests

from shangzhuang.i18n import number
from tests.integration.hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

QUOTA = """
sample_seconds = 1
min_minutes_to_spawn = 0.05
[quota.accounts.default]
cpu_hours = 1000
[quota.accounts.physics]
cpu_hours = 100
managers = ["mara"]
[quota.users.uma]
account = "physics"
[quota.users.mara]
account = "physics"
[quota.users.rex]
gpu_hours = 0
"""


def admin_get(hub, path: str) -> dict:
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/{path}",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    r.raise_for_status()
    return r.json()


def ledger_cpu_hours(hub, user: str) -> float:
    records = admin_get(hub, f"usage?user={user}")["records"]
    return sum(x["amount"] for x in records if x["resource"] == "cpu_hours")


@pytest.fixture(scope="module")
def hub():
    base = workdir()
    # uma's Lab holds a GPU that NVML reads at 3% (the stand-in: no GPU here)
    readings = base / "nvml.json"
    readings.write_text(json.dumps({"gpus": [{"utilisation": 3, "memory_mib": 512}] * 2}))
    readings.chmod(0o644)
    with RunningHub(base, quota=QUOTA, nvml_readings=readings) as h:
        h.new_user("uma")
        h.new_user("mara")
        h.spawn("uma", "gpu-1")
        h.wait_ready("uma")
        h.wait(lambda: ledger_cpu_hours(h, "uma") > 0, 60, "uma's first charges")
        h.wait(lambda: admin_get(h, "usage/gpus?user=uma")["sessions"], 60, "a GPU reading")
        h.stop_server("uma")
        h.wait(lambda: not admin_get(h, "users/uma")["running"], 60, "uma's session closed")
        yield h


def open_usage(browser, hub: RunningHub, name: str, password: str = "correct-horse-9"):
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    errors = []  # the page's script errors, for the message if it never loads
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{hub.url}/hub/login?next=/services/quota/")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url("**/services/quota/", timeout=60_000)
    try:
        page.wait_for_selector('main[data-loaded="0"]', state="attached", timeout=60_000)
    except Exception as e:
        raise AssertionError(f"the page did not load its figures: {errors}") from e
    return context, page


def chart(page, element_id: str) -> dict:
    el = page.locator(f"#{element_id}")
    assert el.get_attribute("data-ready") == "1"
    assert el.locator("canvas").count() >= 1  # uPlot drew it
    return json.loads(el.get_attribute("data-series"))


def test_a_user_sees_her_chart(hub, browser, artifacts):
    context, page = open_usage(browser, hub, "uma")
    try:
        series = chart(page, "chart-me-cpu_hours")
        assert sum(series["by_source"]["lab"]) == pytest.approx(
            ledger_cpu_hours(hub, "uma"), abs=1e-5
        )
        assert "Your quota resets on" in page.locator("#sz-resets").inner_text()
        page.screenshot(path=str(artifacts / "usage-page-user.png"), full_page=True)
        page.select_option("#sz-period", "1")  # the period before: nothing used then
        page.wait_for_selector('main[data-loaded="1"]', state="attached", timeout=30_000)
        assert chart(page, "chart-me-cpu_hours")["by_source"] == {}
    finally:
        context.close()


def test_a_user_sees_her_gpu_utilisation_and_efficiency(hub, browser, artifacts):
    context, page = open_usage(browser, hub, "uma")
    try:
        el = page.locator("#chart-gpu-utilisation")
        assert el.get_attribute("data-ready") == "1"
        assert el.locator("canvas").count() >= 1  # uPlot drew it
        drawn = json.loads(el.get_attribute("data-gpus"))
        assert drawn == admin_get(hub, "usage/gpus?user=uma")  # what the platform read
        (session,) = drawn["sessions"]
        assert {p for _, p in session["utilisation"]} == {3}
        text = page.locator("#sz-efficiency").inner_text()
        assert "under 10% utilisation (100%)" in text, text
        page.locator("#sz-gpus").screenshot(path=str(artifacts / "usage-page-gpus.png"))
    finally:
        context.close()


def test_a_manager_sees_the_account_and_sets_a_cap(hub, browser, artifacts):
    context, page = open_usage(browser, hub, "mara")
    try:
        series = chart(page, "chart-physics-cpu_hours")
        used = ledger_cpu_hours(hub, "uma") + ledger_cpu_hours(hub, "mara")
        assert sum(sum(v) for v in series["by_source"].values()) == pytest.approx(used, abs=1e-5)
        assert "lasts until it resets" in page.locator("#dry-physics").inner_text()
        form = page.locator("details[data-account=physics] form.sz-cap")
        form.locator("select[name=user]").select_option("uma")
        form.locator("select[name=resource]").select_option("cpu_hours")
        form.locator("input[name=hours]").fill("10")
        form.locator("button[type=submit]").click()
        result = form.locator(".sz-cap-result")
        result.filter(has_text="The cap is set.").wait_for(timeout=30_000)
        assert admin_get(hub, "users/uma")["resources"]["cpu_hours"]["personal"]["allocated"] == 10
        # above the pool: the page shows the service's reason
        form.locator("input[name=hours]").fill("500")
        form.locator("button[type=submit]").click()
        result.filter(has_text="more than the pool").wait_for(timeout=30_000)
        assert result.get_attribute("data-status") == "400"
        page.screenshot(path=str(artifacts / "usage-page-manager.png"), full_page=True)
    finally:
        context.close()


def test_an_admin_sees_the_estate_for_any_dates(hub, browser, artifacts):
    # rex has no GPU-hours: his start is refused, and the estate counts it (in a moment)
    hub.new_user("rex")
    assert hub.spawn("rex", "gpu-1", ok=None).status_code == 403
    hub.wait(lambda: admin_get(hub, "estate")["refusals"]["total"], 30, "rex's refusal")
    context, page = open_usage(browser, hub, ADMIN, hub.password_of_admin())
    try:
        estate = page.locator("#sz-estate")
        shown = json.loads(estate.get_attribute("data-estate"))
        used = ledger_cpu_hours(hub, "uma")
        assert shown["accounts"]["physics"]["cpu_hours"] == pytest.approx(used, abs=1e-5)
        assert page.locator("#estate-users tbody tr").first.inner_text().startswith("uma")
        # the starts refused: per reason, in words, the chart's days, the user refused most
        assert page.locator("#estate-refusals tbody tr").all_inner_texts() == [
            "no quota left for the profile\t1"
        ]
        drawn = json.loads(page.locator("#chart-estate-refusals").get_attribute("data-series"))
        assert sum(drawn["by_source"]["quota"]) == 1 and list(drawn["by_source"]) == ["quota"]
        assert page.locator("#estate-refused-users tbody tr").first.inner_text() == "rex\t1"
        # any dates: yesterday to tomorrow holds all of it, whatever the site's time zone
        today = date.today()
        form = page.locator("#sz-estate-dates")
        form.locator("input[name=since]").fill((today - timedelta(days=1)).isoformat())
        form.locator("input[name=until]").fill((today + timedelta(days=1)).isoformat())
        form.locator("button[type=submit]").click()
        page.wait_for_function(
            "() => (document.querySelector('#sz-estate').dataset.query || '').includes('since')"
        )
        picked = json.loads(estate.get_attribute("data-estate"))
        assert picked["accounts"]["physics"]["cpu_hours"] == pytest.approx(used, abs=1e-5)
        assert "since=" in page.locator("#sz-estate-csv").get_attribute("href")
        # dates the wrong way round: the service's reason, on the page
        form.locator("input[name=until]").fill((today - timedelta(days=2)).isoformat())
        form.locator("button[type=submit]").click()
        form.locator(".sz-estate-error").filter(has_text="since before until").wait_for()
        page.screenshot(path=str(artifacts / "usage-page-admin.png"), full_page=True)
    finally:
        context.close()


def test_a_request_for_more_is_approved_and_her_page_shows_it(hub, browser, artifacts):
    """uma asks for 5 more CPU-hours through the page's form; mara approves it on hers; uma's
    page, reloaded once, shows the request approved and 5 hours more left."""
    left = admin_get(hub, "users/uma")["resources"]["cpu_hours"]["remaining"]
    context, page = open_usage(browser, hub, "uma")
    try:
        ask = page.locator("#sz-ask")
        ask.locator("select[name=resource]").select_option("cpu_hours")
        ask.locator("input[name=hours]").fill("5")
        ask.locator("input[name=reason]").fill("a longer sweep")
        ask.locator("button[type=submit]").click()
        ask.locator(".sz-ask-result").filter(has_text="Your request is sent").wait_for()
        page.locator("#sz-my-requests tbody tr", has_text="waiting").wait_for()
        manager, mpage = open_usage(browser, hub, "mara")
        try:
            row = mpage.locator("#sz-to-decide tbody tr", has_text="a longer sweep")
            row.locator("input").fill("fine")
            row.locator("button[name=approve]").click()
            mpage.locator(".sz-decide-result").filter(has_text="Decided.").wait_for()
            page.screenshot(path=str(artifacts / "usage-page-request-decided.png"))
        finally:
            manager.close()
        now = admin_get(hub, "users/uma")["resources"]["cpu_hours"]["remaining"]
        assert now == pytest.approx(left + 5, abs=0.01)
        page.reload()
        page.locator("#sz-my-requests tbody tr", has_text="approved").wait_for()
        assert f"{number(now, 'en')} hours left" in page.locator("#sz-remaining").inner_text()
        page.screenshot(path=str(artifacts / "usage-page-request.png"), full_page=True)
    finally:
        context.close()


def test_an_admin_makes_a_manager_on_the_page(hub, browser):
    context, page = open_usage(browser, hub, ADMIN, hub.password_of_admin())
    try:
        # an admin's page loads an account's figures only when its section is opened
        section = page.locator("details[data-account=physics]")
        assert section.get_attribute("data-loaded") is None
        section.locator("summary").click()
        page.wait_for_selector('details[data-account=physics][data-loaded="0"]', state="attached")
        assert (
            json.loads(section.locator(".sz-dry").get_attribute("data-burn"))["account"]
            == "physics"
        )
        shown = section.locator(".sz-managers")
        form = section.locator("form.sz-manager")
        form.locator("input[name=user]").fill("uma")
        form.locator("button[name=add]").click()
        form.locator(".sz-manager-result").filter(has_text="The managers are set.").wait_for()
        shown.filter(has_text="Managers: mara, uma.").wait_for()
        assert admin_get(hub, "accounts/physics/managers")["managers"] == ["mara", "uma"]
        form.locator("button[name=remove]").click()
        shown.filter(has_text="Managers: mara.").wait_for()
        assert admin_get(hub, "accounts/physics/managers")["managers"] == ["mara"]
    finally:
        context.close()


def test_an_admin_exempts_a_user_from_idle_gpu_reclaim_on_the_page(hub, browser):
    context, page = open_usage(browser, hub, ADMIN, hub.password_of_admin())
    try:
        section = page.locator("#sz-reclaim-exempt")
        shown = section.locator(".sz-exempt")
        shown.filter(has_text="Exempt users: none.").wait_for()
        form = section.locator("form")
        form.locator("input[name=user]").fill("uma")
        form.locator("button[name=add]").click()
        form.locator(".sz-exempt-result").filter(has_text="The exempt users are set.").wait_for()
        shown.filter(has_text="Exempt users: uma.").wait_for()
        assert admin_get(hub, "reclaim/exempt")["exempt"] == ["uma"]
        form.locator("button[name=remove]").click()
        shown.filter(has_text="Exempt users: none.").wait_for()
        assert admin_get(hub, "reclaim/exempt")["exempt"] == []
    finally:
        context.close()
