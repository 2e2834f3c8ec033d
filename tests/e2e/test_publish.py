"""Publish from JupyterLab and view the app, in Debian's Chromium through the real hub: the
owner right-clicks a notebook, "Publish as App…", shares it with a viewer; the viewer opens
the link, signs in, moves the slider, and the model's output changes. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.integration.apps_kit import write_app
from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), apps="idle_stop_seconds = 0\n") as h:
        yield h


def quiet_lab(hub: RunningHub, name: str) -> None:
    """No "Jupyter news" question over the page (JupyterLab 4.6 keeps it in this plugin)."""
    r = requests.put(
        f"{hub.user_url(name)}lab/api/settings/@jupyterlab/apputils-extension:notification",
        json={"raw": json.dumps({"fetchNews": "false", "checkForUpdates": False})},
        headers={"Authorization": f"token {hub.token_for(name)}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 204, r.text


def sign_in(page, name: str) -> None:
    page.fill("#username_input", name)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")


def test_owner_publishes_from_lab_and_a_viewer_moves_the_slider(hub, browser, artifacts):
    hub.new_user("olga")
    hub.new_user("vic")
    hub.spawn("olga", "cpu")
    hub.wait_ready("olga")
    quiet_lab(hub, "olga")
    # olga's notebook and the model file it declares, in her home (the Lab's root).
    local = write_app(hub.base / "olga-work", name="forecast.ipynb", a=3, b=1)
    files = {p.name: p.read_text() for p in local.parent.iterdir()}
    hub.run_code("olga", "".join(f"open({k!r}, 'w').write({v!r})\n" for k, v in files.items()))

    owner = browser.new_context(viewport={"width": 1400, "height": 900})
    page = owner.new_page()
    page.goto(f"{hub.url}/hub/login?next=/user/olga/lab")
    sign_in(page, "olga")
    page.wait_for_selector(".jp-Launcher", timeout=90_000)
    item = page.locator(".jp-DirListing-item", has_text="forecast.ipynb")
    item.click(button="right")
    page.get_by_text("Publish as App…").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input[name=name]").wait_for()
    assert dialog.locator("input[name=name]").input_value() == "forecast"
    dialog.locator("textarea[name=description]").fill("Sales forecast: y = 3x + 1")
    dialog.locator("input[name=users]").fill("vic")
    # This site allows no public links: the dialog says so.
    assert dialog.locator("input[value=public]").is_disabled()
    page.screenshot(path=str(artifacts / "publish-1-dialog.png"))
    dialog.get_by_role("button", name="Publish").click()
    note = page.locator(".Toastify__toast", has_text="Published forecast")
    note.wait_for(timeout=120_000)
    page.screenshot(path=str(artifacts / "publish-2-published.png"))
    link = re.search(r"https?://\S+/services/apps/open/olga/forecast", note.inner_text()).group(0)
    # The command palette offers it too.
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("Publish as App")
    page.locator(".lm-CommandPalette-item", has_text="Publish as App").wait_for()
    page.keyboard.press("Escape")
    owner.close()

    # vic opens the link: signs in, authorizes the app once, gets the app.
    viewer = browser.new_context(viewport={"width": 1200, "height": 800})
    page = viewer.new_page()
    page.goto(link)
    sign_in(page, "vic")
    page.wait_for_url(re.compile(r".*(oauth2/authorize|/user/olga/app-forecast/).*"))
    if "oauth2/authorize" in page.url:
        page.screenshot(path=str(artifacts / "publish-3-authorize.png"))
        page.get_by_role("button", name=re.compile("Authorize")).click()
    page.wait_for_url(hub.user_url("olga", "app-forecast"), timeout=90_000)  # olga's origin
    label = page.get_by_text(re.compile(r"^y = \d+$"))
    label.wait_for(timeout=90_000)
    assert label.inner_text() == "y = 4"
    page.screenshot(path=str(artifacts / "publish-4-app.png"))
    page.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.get_by_text("y = 7").wait_for(timeout=30_000)  # x = 2: the kernel answered
    page.screenshot(path=str(artifacts / "publish-5-slider-moved.png"))
    assert "JupyterLab" not in page.title()
    # The apps page lists it for vic.
    page.goto(f"{hub.url}/services/apps/")
    page.get_by_text("Sales forecast: y = 3x + 1").wait_for()
    page.screenshot(path=str(artifacts / "publish-6-apps-page.png"))
    viewer.close()
