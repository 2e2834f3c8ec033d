"""Sign-in in a real browser (Playwright driving Debian's /usr/bin/chromium, never a
downloaded one): the hub's login page with the site's name and logo, "Sign in with ..." to
a real OpenID Connect provider, its login form, and back to the hub signed in; a user of a
disallowed group sees why. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .hub import RunningHub, workdir
from .test_auth_oidc import PASSWORDS, SITE, start_oidc_hub

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# ../shared/notes/hub.md: no sandbox as root, no GPU, nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LOGO = Path(__file__).resolve().parents[2] / "hub_config" / "examples" / "logo.svg"


def ensure_chromium() -> None:
    """Debian's chromium, installed with apt-get when missing (as root)."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0:
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*apt, "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([*apt, "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def oidc_hub():
    base = workdir()
    shutil.copy(LOGO, base / "logo.svg")
    hub, provider = start_oidc_hub(base, logo="logo.svg")
    try:
        yield hub, provider
    finally:
        try:
            hub.cleanup()
        finally:
            provider.stop()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def sign_in(page, hub: RunningHub, name: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.get_by_role("button", name="Sign in with Test SSO").click()
    page.wait_for_selector("#username")  # the provider's own page
    page.fill("#username", name)
    page.fill("#password", PASSWORDS[name])
    page.click("#submit")


def test_sign_in_through_the_login_page(oidc_hub, browser):
    hub, _ = oidc_hub
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    try:
        page.goto(f"{hub.url}/hub/login")
        assert page.inner_text("#sz-site-name") == SITE
        logo = page.locator("#sz-site-logo")
        assert logo.get_attribute("src") == "/hub/logo"
        logo.wait_for(state="visible")
        assert page.evaluate("document.getElementById('sz-site-logo').naturalWidth") > 0
        page.screenshot(path=str(ARTIFACTS / "auth-login-page.png"), full_page=True)

        sign_in(page, hub, "alice")
        page.wait_for_url(f"{hub.url}/hub/spawn**", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "auth-oidc-signed-in.png"), full_page=True)
        user = hub.api("GET", "/users/alice").json()
        assert user["groups"] == ["tsinghua"]
    finally:
        context.close()


def test_a_disallowed_user_reads_why(oidc_hub, browser):
    hub, _ = oidc_hub
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    try:
        sign_in(page, hub, "carol")
        page.wait_for_url(f"{hub.url}/hub/oauth_callback**", timeout=30_000)
        page.wait_for_selector("text=is not allowed")
        assert f"carol is not allowed on {SITE}" in page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "auth-oidc-not-allowed.png"), full_page=True)
    finally:
        context.close()


def test_native_login_page_shows_the_site_name(hub, browser):
    """The embedded default's sign-up-and-approval login page carries the site's name too."""
    page = browser.new_page()
    try:
        page.goto(f"{hub.url}/hub/login")
        assert page.inner_text("#sz-site-name") == SITE
        assert page.locator("#sz-site-logo").count() == 0  # no site.logo configured
        assert page.locator("#login_submit").is_visible()
        page.screenshot(path=str(ARTIFACTS / "auth-native-login-page.png"), full_page=True)
    finally:
        page.close()
