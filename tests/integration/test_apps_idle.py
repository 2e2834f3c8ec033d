"""Apps and idleness, with the real hub and idle culler: an unused app stops and its next
visit starts it again; viewers' idle kernels are shut down; only an admin keeps an app always
on; "anyone signed in" apps grant a share on the first visit."""

from __future__ import annotations

import time

import pytest
import requests

from .apps_kit import cli, kernel_id, open_app, write_app
from .hub import RunningHub, workdir

pytestmark = pytest.mark.integration

# apps.idle_stop_seconds (the culler looks every IDLE // 2 s). Long enough that on a busy
# machine an app just published is still up when a test looks at it or opens it: at 4 s, a
# CI run on loaded cores saw a fresh app already stopped (test_apps_idle failed twice).
IDLE = 8
KERNEL_IDLE = 3  # apps.kernel_idle_seconds
APPS = f"""
idle_stop_seconds = {IDLE}
kernel_idle_seconds = {KERNEL_IDLE}
auth_cache_seconds = 2
"""
PASSWORD = "correct-horse-9"
HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), apps=APPS) as h:
        for name in ("olga", "vic", "una"):
            h.new_user(name)
        yield h


def server(hub: RunningHub, name: str) -> dict | None:
    users = hub.api("GET", "/users/olga?include_stopped_servers=1").json()
    return users["servers"].get(f"app-{name}")


def running(hub, name) -> bool:
    return bool((server(hub, name) or {}).get("ready"))


def stopped(hub, name) -> bool:
    model = server(hub, name) or {}
    return bool(model.get("stopped")) and not model.get("pending")


def publish(hub, name, *share):
    nb = write_app(hub.base / "olga-work")
    args = ["publish", str(nb), "--name", name] + [f"--share={s}" for s in share]
    r = cli(hub, hub.token_for("olga"), *args)
    assert r.returncode == 0, r.stderr


def test_idle_app_stops_and_the_next_visit_starts_it(hub):
    publish(hub, "idle", "vic")
    assert running(hub, "idle")
    stopped_at = hub.wait(lambda: stopped(hub, "idle") and time.monotonic(), 40, "idle stop")
    assert server(hub, "idle") is not None  # stopped, not removed: its shares stay
    # vic follows a link straight to the app: the hub's "not running" page sends him to the
    # apps service, which starts it for him (he can't start olga's servers himself).
    vic = hub.login("vic", PASSWORD)
    r = vic.get(hub.user_url("olga", "app-idle"), headers=HTML, timeout=60)
    assert r.status_code == 424, r.status_code
    assert 'href="/services/apps/open/olga/idle"' in r.text
    t0 = time.monotonic()
    r = open_app(vic, f"{hub.url}/services/apps/open/olga/idle")
    assert r.status_code == 200 and "y = 4" in r.text, (r.status_code, r.url)
    assert r.url == hub.user_url("olga", "app-idle")  # on olga's origin
    print(f"restart on visit: {time.monotonic() - t0:.1f}s (stopped {t0 - stopped_at:.1f}s ago)")


def test_idle_kernels_are_shut_down(hub):
    publish(hub, "kern", "vic")
    vic = hub.login("vic", PASSWORD)
    page = open_app(vic, f"{hub.url}/services/apps/open/olga/kern")
    kid = kernel_id(page.text)
    url = f"{hub.user_url('olga', 'app-kern')}api/kernels/{kid}"
    assert vic.get(url, timeout=30).status_code == 200
    started = time.monotonic()
    # Polling keeps the app itself busy; the kernel, untouched, goes.
    hub.wait(lambda: vic.get(url, timeout=30).status_code == 404, 30, "kernel culled")
    assert time.monotonic() - started >= KERNEL_IDLE - 1


def test_only_an_admin_keeps_an_app_always_on(hub):
    publish(hub, "always", "vic")
    api = f"{hub.url}/services/apps/api/apps/olga/always"
    r = requests.patch(api, json={"always_on": True}, timeout=60,
                       headers={"Authorization": f"token {hub.token_for('olga')}"})  # fmt: skip
    assert r.status_code == 403 and "only an admin" in r.json()["message"]
    r = requests.patch(api, json={"always_on": True}, timeout=60,
                       headers={"Authorization": f"token {hub.admin_token()}"})  # fmt: skip
    assert r.status_code == 200 and r.json()["always_on"] is True
    time.sleep(IDLE * 2)  # four looks of the culler
    assert running(hub, "always"), "an always-on app was stopped"
    r = requests.patch(api, json={"always_on": False}, timeout=60,
                       headers={"Authorization": f"token {hub.admin_token()}"})  # fmt: skip
    assert r.status_code == 200
    hub.wait(lambda: stopped(hub, "always"), 40, "stopped once no longer always on")


def test_anyone_signed_in_gets_a_share_on_first_visit(hub):
    publish(hub, "open", "signed-in")
    una = hub.login("una", PASSWORD)
    # Never shared with una by name: the hub alone would refuse her ...
    r = una.get(hub.user_url("olga", "app-open"), headers=HTML, timeout=60)
    assert r.status_code in (403, 404) and "y = " not in r.text
    # ... the app's link lets her in (and records her share).
    r = open_app(una, f"{hub.url}/services/apps/open/olga/open")
    assert r.status_code == 200 and "y = 4" in r.text
    shares = hub.api("GET", "/shares/olga/app-open").json()
    items = shares["items"] if isinstance(shares, dict) else shares
    assert [s["user"]["name"] for s in items if s["user"]] == ["una"]
    # Anonymous visitors still sign in first.
    r = requests.get(f"{hub.url}/services/apps/open/olga/open", headers=HTML, timeout=30)
    assert "/hub/login" in r.url
