"""Idle GPU reclaim on a real hub, in Chromium: an idle GPU session is warned (the quota API,
the Lab's status bar and panel, the home page), its user presses "Continue on CPU" in Lab and
confirms on the quota service's page (same server, same home), another idle one is stopped
after the grace period, and a busy one is kept.

What is faked: the GPUs' utilisation. There is no GPU here, so the quota service reads a
stand-in NVML (tests/integration/pynvml_standin) whose readings come from a file this test
writes; everything else (hub, proxy, quota service, sessions, the browser's forms) is real.
"""

from __future__ import annotations

import html
import json
import os
import re
import time

import pytest
import requests

from tests.integration.hub import RunningHub, workdir

from .test_lab_quota import lab_settings, open_lab

pytestmark = pytest.mark.integration

IDLE, BUSY = 2, 90  # % utilisation of a GPU
GRACE = 30  # seconds between the warning and the stop: time for the browser's way on

QUOTA = f"""
sample_seconds = 1
min_minutes_to_spawn = 0.05
[quota.reclaim]
idle_seconds = 4
grace_seconds = {GRACE}
idle_threshold_percent = 10
"""


class Readings:
    """The stand-in NVML's readings file: one utilisation per pool GPU (its index)."""

    def __init__(self, path, gpus: int):
        self.path, self.percent = path, [IDLE] * gpus
        self.write()

    def set(self, index: int, percent: int) -> None:
        self.percent[index] = percent
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")  # renamed over: never read half written
        tmp.write_text(json.dumps({"gpus": [{"utilisation": p, "memory_mib": 100}
                                            for p in self.percent]}))  # fmt: skip
        tmp.chmod(0o644)  # the quota service reads it as the platform's account
        os.replace(tmp, self.path)


@pytest.fixture(scope="module")
def hub():
    base = workdir()
    readings = Readings(base / "nvml.json", gpus=3)
    with RunningHub(base, gpus=3, quota=QUOTA, nvml_readings=readings.path) as h:
        h.readings = readings
        h.browsers = {name: h.new_user(name) for name in ("bob", "alice", "carol")}
        # bob trains: his GPU busy from the start
        h.spawn("bob", "gpu-1")
        h.wait_ready("bob")
        (bob_gpu,) = server(h, "bob")["state"]["gpus"]
        readings.set(bob_gpu, BUSY)
        yield h


def server(hub, user: str) -> dict | None:
    return hub.api("GET", f"/users/{user}").json()["servers"].get("")


def quota_me(hub, user: str, token: str) -> dict:
    r = requests.get(f"{hub.url}/services/quota/api/v1/me",
                     headers={"Authorization": f"token {token}"}, timeout=30)  # fmt: skip
    r.raise_for_status()
    return r.json()


def warning_of(hub, user: str, token: str) -> dict | None:
    running = [e for e in quota_me(hub, user, token)["running"] if e.get("server") == ""]
    return running[0].get("reclaim") if running else None


def test_idle_session_is_warned_and_continues_on_cpu_a_busy_one_is_kept(hub, browser, artifacts):
    token = hub.token_for("alice")
    hub.spawn("alice", "gpu-1")
    before = hub.wait_ready("alice")
    (gpu,) = before["state"]["gpus"]
    hub.readings.set(gpu, BUSY)  # busy while her Lab loads in the browser ...
    hub.run_code("alice", "open('kept.txt', 'w').write('still here')", token)
    lab_settings(hub, "alice", token)
    context, page = open_lab(browser, hub, "alice")
    hub.readings.set(gpu, IDLE)  # ... then idle
    try:
        # Warned after 4 s of idle readings: the status bar says so (and the quota API) ...
        page.wait_for_selector(".sz-quota-status.sz-reclaim-warned", timeout=60_000)
        warning = warning_of(hub, "alice", token)
        assert warning["threshold_percent"] == 10 and 0 < warning["stops_in_seconds"] <= GRACE
        assert warning["continue_url"] == "/services/quota/continue-on-cpu?server="
        status = page.locator(".sz-quota-status")
        assert status.text_content().startswith("Idle GPUs: stops in ")  # no hour limits here
        assert "GPUs have been under 10% use since" in status.get_attribute("title")
        # ... the Lab extension's status endpoint, which the status bar and panel read ...
        lab = requests.get(
            f"{hub.user_url('alice')}shangzhuang/quota",
            headers={"Authorization": f"token {token}"}, timeout=30,
        ).json()  # fmt: skip
        assert lab["reclaim"]["stops_at"] == warning["stops_at"]
        assert lab["reclaim"]["continue_url"] == (
            f"{hub.url}/services/quota/continue-on-cpu?server="
        )
        # ... the home page, with the way on ...
        home = hub.browsers["alice"].get(f"{hub.url}/hub/home", timeout=30).text
        assert 'class="alert alert-warning sz-reclaim" data-server=""' in home
        assert "have been under 10% use since" in html.unescape(home)
        assert 'href="/services/quota/continue-on-cpu?server="' in home
        # bob's busy GPU is not warned
        assert warning_of(hub, "bob", hub.token_for("bob")) is None

        # ... and the panel, with the button: to the quota service's page, then its form.
        status.click()
        reclaim = page.locator("#shangzhuang-quota-panel .sz-reclaim")
        reclaim.wait_for(state="visible", timeout=15_000)
        assert "unless they get busy" in reclaim.inner_text()
        page.screenshot(path=str(artifacts / "reclaim-lab-warning.png"))
        reclaim.locator("button.sz-continue-on-cpu").click()
        page.wait_for_url("**/services/quota/continue-on-cpu?server=", timeout=60_000)
        assert page.locator("#sz-reclaim-warning").is_visible()
        page.screenshot(path=str(artifacts / "reclaim-continue-page.png"))
        page.click("#sz-continue-on-cpu")
        # the hub's pending page, then her Lab again: the same server, now on CPU
        page.wait_for_url("**/user/alice/lab**", timeout=180_000)
        page.wait_for_selector(".jp-Launcher", timeout=60_000)
    finally:
        context.close()
    after = server(hub, "alice")
    assert after["user_options"] == {"profile": "cpu"} and after["started"] != before["started"]
    assert not (after.get("state") or {}).get("gpus")
    assert hub.run_code("alice", "print(open('kept.txt').read())", token).strip() == "still here"
    assert warning_of(hub, "alice", token) is None  # a CPU session is not reclaimed


def test_an_idle_session_nobody_moves_is_stopped_after_the_grace_and_a_busy_one_is_kept(hub):
    token = hub.token_for("carol")
    hub.spawn("carol", "gpu-1")
    hub.wait_ready("carol")
    warning = hub.wait(lambda: warning_of(hub, "carol", token), 60, "carol warned")
    started = time.monotonic()
    hub.wait(lambda: server(hub, "carol") is None, GRACE + 60, "carol's idle session stopped")
    assert time.monotonic() - started >= warning["stops_in_seconds"] - 3
    assert re.search(r"stopped lab:carol/@\d+ of carol: GPUs idle", hub.log.read_text())
    # her home page says why (for a day)
    home = html.unescape(hub.browsers["carol"].get(f"{hub.url}/hub/home", timeout=30).text)
    assert 'class="alert alert-info sz-reclaimed" data-server=""' in home
    assert "Your session default was stopped at" in home
    assert "its GPUs had been under 10% use since" in home
    # The continue-on-CPU page warns of nothing: her stopped session is no longer stopping.
    page = hub.browsers["carol"].get(f"{hub.url}/services/quota/continue-on-cpu?server=",
                                     headers={"Accept": "text/html"}, timeout=60).text  # fmt: skip
    assert 'id="sz-continue"' in page and 'id="sz-reclaim-warning"' not in page
    # bob's GPU stayed busy all along: still running, never warned
    assert server(hub, "bob")["ready"]
    assert "of bob: GPUs idle" not in hub.log.read_text()
    # and once his GPU idles too, he is warned like anyone
    (bob_gpu,) = server(hub, "bob")["state"]["gpus"]
    hub.readings.set(bob_gpu, IDLE)
    hub.wait(lambda: warning_of(hub, "bob", hub.token_for("bob")), 60, "bob warned")
