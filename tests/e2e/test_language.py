"""The hub's half of issue 14's browser test, in Debian's Chromium with locale zh-CN on a real
hub: a student signs up and an admin approves her on the Chinese pages, she sees the spawn
page's figures and a quota refusal in Chinese, starts a session (which gets her language),
switches to English and back, and the choice follows her to another browser at her next
login. Screenshots of the main pages in both languages go to test-artifacts/.

The Lab half (Lab in Chinese, our status bar, panel and publish dialog) is part B's,
tests/e2e/test_lab_language.py, on a hub of its own: agreed between the two parts, so each
module starts one hub and neither waits for the other's."""

from __future__ import annotations

import pytest

from tests.integration.hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-9"
# No GPU-hours: the GPU profile is refused for quota, with its figure, on the spawn page.
QUOTA = """
[quota.accounts.default]
gpu_hours = 0
cpu_hours = 1000
"""


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), quota=QUOTA, apps="idle_stop_seconds = 0\n") as h:
        yield h


def sign_in(page, hub: RunningHub, name: str, password: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")  # then the spawn page, or her running Lab
    page.wait_for_url(lambda url: "/hub/login" not in url, timeout=60_000)


def shot(page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / f"language-{name}.png"), full_page=True)


def test_sign_up_spawn_refusal_and_a_choice_that_sticks(hub, browser, artifacts):
    zh = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 900})
    page = zh.new_page()
    # Sign up, on the Chinese sign-up page.
    page.goto(f"{hub.url}/hub/signup")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    page.fill("#username_input", "lin")
    page.fill("#password_input", PASSWORD)
    page.fill("#password_confirmation_input", PASSWORD)
    shot(page, artifacts, "signup-zh")
    page.click("#signup_submit")
    assert "注册成功，管理员批准后即可登录。" in page.locator(".alert").inner_text()

    # The admin approves her on the Chinese approval page (another browser).
    admin = browser.new_context(locale="zh-CN").new_page()
    sign_in(admin, hub, ADMIN, hub.password_of_admin())
    admin.goto(f"{hub.url}/hub/authorize")
    assert "注册申请" in admin.locator("h1").inner_text()
    shot(admin, artifacts, "approval-zh")
    admin.locator("tr#lin button", has_text="批准").click()
    admin.wait_for_url("**/hub/authorize**")
    admin.context.close()

    # Signed in, her first page is the spawn page: figures in words, the refusal in Chinese.
    sign_in(page, hub, "lin", PASSWORD)
    page.wait_for_url("**/hub/spawn**")
    assert page.locator("h1").inner_text() == "启动会话"
    cpu = page.locator('[data-profile="cpu"]')
    assert "每小时 2 CPU 核时" in cpu.inner_text() and "2 核 · 4 GB · 无 GPU" in cpu.inner_text()
    gpu = page.locator('[data-profile="gpu-1"]')
    assert gpu.get_attribute("data-available") == "false"
    assert gpu.locator(".sz-status").inner_text() == "配额不足（剩余 0 GPU 卡时）"
    shot(page, artifacts, "spawn-zh")

    # She starts the CPU session: it is told her language (the interface to part B's Lab).
    page.locator("#spawn_form button[type=submit]").click()
    page.wait_for_url("**/user/lin/**", timeout=120_000)
    told = hub.run_code("lin", "import os; print(os.environ['SHANGZHUANG_LANGUAGE'])")
    assert told.strip() == "zh_CN"

    # The home page: her session, her quota in words and her reset date in Beijing time.
    page.goto(f"{hub.url}/hub/home")
    assert page.locator("#stop").inner_text() == "停止我的会话"
    quota = page.locator("#sz-quota").inner_text()
    assert "你的算力配额" in quota and "剩余 1,000 CPU 核时" in quota and "日 00:00 重置" in quota
    shot(page, artifacts, "home-zh")
    # A token asked for with the note left empty: token.js (JupyterHub 6.1.1) would note it
    # "Requested via token page"; our token page gives it her words.
    page.goto(f"{hub.url}/hub/token")
    page.locator("#request-token-form button[type=submit]").click()
    page.locator("#token-area").wait_for(state="visible", timeout=30_000)
    page.reload()
    tokens = page.locator("#api-tokens-table").inner_text()
    assert "在令牌页面创建" in tokens and "Requested via" not in tokens
    for path, name, heading in [("/services/quota/", "usage", "我的用量"),
                                ("/services/apps/", "apps", "应用")]:  # fmt: skip
        page.goto(f"{hub.url}{path}")
        assert page.locator("h1").inner_text() == heading
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        shot(page, artifacts, f"{name}-zh")

    # English, from the switch on the home page; the page comes back in English.
    page.goto(f"{hub.url}/hub/home")
    page.locator("#sz-language button", has_text="English").click()
    page.wait_for_url("**/hub/home")
    assert page.locator("#stop").inner_text() == "Stop my session"
    assert "1,000 CPU-hours left" in page.locator("#sz-quota").inner_text()
    shot(page, artifacts, "home-en")
    page.goto(f"{hub.url}/services/quota/")  # the services follow the same choice
    assert page.locator("h1").inner_text() == "Your usage"
    shot(page, artifacts, "usage-en")
    zh.close()

    # Another browser, still asking for Chinese: her choice wins at her next login ...
    other = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 900})
    page = other.new_page()
    page.goto(f"{hub.url}/hub/login")
    assert page.locator("#login_submit").get_attribute("value") == "登录"  # not yet hers
    sign_in(page, hub, "lin", PASSWORD)
    page.goto(f"{hub.url}/hub/home")
    assert page.locator("#stop").inner_text() == "Stop my session"
    # ... and back to 中文 from there, which sticks as well.
    page.locator("#sz-language button", has_text="中文").click()
    page.wait_for_url("**/hub/home")
    assert page.locator("#stop").inner_text() == "停止我的会话"
    assert (hub.state / "languages.json").read_text() == '{"lin": "zh_CN"}'
    # She stops her session there: home.js (JupyterHub 6.1.1) then writes English into the
    # start button ("Start My Server"); our home.html puts her words in its place.
    page.locator("#stop").click()
    start = page.locator("#start")
    start.filter(has_text="启动我的会话").wait_for(timeout=60_000)
    assert start.get_attribute("title") == "启动你的默认会话"
    assert "Start" not in start.inner_text()
    other.close()
