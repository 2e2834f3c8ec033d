"""The Lab half of issue 14's browser test, in Debian's Chromium with locale zh-CN on a
real hub: a student who chose 中文 on the hub opens a Lab in Chinese (JupyterLab's zh-CN
language pack) with our status bar, panel and publish dialog in Chinese, and publishes an
app; then picks English in Lab's own settings, and that choice wins over the hub's default
at the next load. Screenshots of Lab in both languages go to test-artifacts/.

The hub's pages in both languages (sign-up, login, switch, refusals) are part A's test
(tests/e2e/test_language.py); this module is the Lab's, on a hub of its own with apps and
quotas (one user, one spawn)."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.integration.apps_kit import write_app
from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-9"
QUOTA = """
[quota.accounts.default]
gpu_hours = 100
cpu_hours = 1000
"""


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), quota=QUOTA, apps="idle_stop_seconds = 0\n") as h:
        yield h


def test_lab_in_chinese_then_in_english(hub, browser, artifacts):
    s = hub.new_user("mei")
    r = hub.form(s, "/hub/language", {"language": "zh_CN"}, allow_redirects=False)
    assert r.status_code == 302, r.status_code
    hub.spawn("mei", "cpu")
    hub.wait_ready("mei")
    token = hub.token_for("mei")
    local = write_app(hub.base / "mei-work", name="forecast.ipynb", a=3, b=1)
    files = {p.name: p.read_text() for p in local.parent.iterdir()}
    hub.run_code("mei", "".join(f"open({k!r}, 'w').write({v!r})\n" for k, v in files.items()))

    context = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login?next=/user/mei/lab")
    page.fill("#username_input", "mei")
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_selector(".jp-Launcher", timeout=120_000)
    # JupyterLab itself in Chinese (the language pack), with no news prompt to answer.
    page.locator(".lm-MenuBar-itemLabel", has_text="文件").wait_for(timeout=30_000)
    assert page.locator(".jp-Notification-Toast-news").count() == 0
    # Our status bar item and panel, in Chinese.
    item = page.locator(".sz-quota-status")
    page.wait_for_function(
        "() => document.querySelector('.sz-quota-status')?.textContent", timeout=60_000
    )
    assert re.fullmatch(r"剩余 GPU [\d.]+ 小时 · CPU [\d.]+ 小时", item.inner_text()), (
        item.inner_text()
    )
    assert "点击查看详情" in item.get_attribute("title")
    item.click()
    panel = page.locator(".sz-quota-panel")
    panel.locator("h2", has_text="配额").wait_for()
    panel.locator(".sz-session h3", has_text="本会话").wait_for()
    assert "重置" in panel.locator(".sz-resets").inner_text()
    page.screenshot(path=str(artifacts / "lab-zh-CN.png"))

    # Publish an app, in Chinese.
    page.locator(".jp-DirListing-item", has_text="forecast.ipynb").click(button="right")
    page.get_by_text("发布为应用…").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input[name=name]").wait_for()
    assert dialog.locator(".jp-Dialog-header", has_text="发布为应用").count() == 1
    assert "谁可以访问" in dialog.inner_text() and "本站不允许" in dialog.inner_text()
    dialog.locator("textarea[name=description]").fill("销量预测：y = 3x + 1")
    page.screenshot(path=str(artifacts / "lab-zh-CN-publish.png"))
    dialog.get_by_role("button", name="发布", exact=True).click()
    note = page.locator(".Toastify__toast", has_text="已发布 forecast")
    note.wait_for(timeout=120_000)
    assert "仅你自己" in note.inner_text()

    # English in Lab's own settings: saved as mei's, it wins over the hub's zh_CN default.
    r = requests.put(
        f"{hub.user_url('mei')}lab/api/settings/@jupyterlab/translation-extension:plugin",
        json={"raw": json.dumps({"locale": "en"})},
        headers={"Authorization": f"token {token}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 204, r.text
    page.goto(f"{hub.url}/user/mei/lab")
    page.locator(".lm-MenuBar-itemLabel", has_text="File").wait_for(timeout=120_000)
    page.wait_for_function(
        "() => document.querySelector('.sz-quota-status')?.textContent?.endsWith('left')",
        timeout=60_000,
    )
    assert re.fullmatch(r"GPU [\d.]+ h · CPU [\d.]+ h left", item.inner_text()), item.inner_text()
    page.wait_for_selector(".jp-Launcher", timeout=120_000)  # the restored layout, drawn
    item.wait_for(state="visible", timeout=60_000)
    page.screenshot(path=str(artifacts / "lab-en.png"))
    context.close()
