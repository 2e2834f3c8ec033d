"""Attacks on published apps by their owner or by anyone on the internet.

- the rename: an owner renames a stopped app server through the hub API (JupyterHub 6's
  PATCH of a named server). The app's viewers keep their shares on the server, so once it
  starts again as a Lab they would have the owner's files and terminals; a Lab renamed
  into the apps' names would pass for an app;
- the kernel flood: every page load of a public app starts a kernel; many visitors (here
  several source addresses) must not start more than `apps.max_kernels_per_app`;
- the per-address rate limit: one address reloading a public app is refused (429) after
  `apps.public_visits_per_minute`, whatever X-Forwarded-For it sends.
"""

from __future__ import annotations

import http.client

import psutil
import pytest

from tests.integration.apps_kit import cli, write_app
from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration

MAX_KERNELS = 3
VISITS = 2
APPS = f"""
public_links = true
idle_stop_seconds = 0
kernel_idle_seconds = 0
max_kernels_per_app = {MAX_KERNELS}
public_visits_per_minute = {VISITS}
"""


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), apps=APPS) as h:
        for name in ("olga", "vic"):
            h.new_user(name)
        yield h


def publish(hub: RunningHub, name: str, *share: str) -> None:
    nb = write_app(hub.base / "olga-work")
    r = cli(hub, hub.token_for("olga"), "publish", str(nb), "--name", name,
            *[f"--share={s}" for s in share])  # fmt: skip
    assert r.returncode == 0, r.stderr


def servers(hub: RunningHub) -> dict:
    return hub.api("GET", "/users/olga?include_stopped_servers=1").json()["servers"]


def test_an_app_server_cannot_be_renamed_into_or_out_of_the_apps_names(hub):
    publish(hub, "demo", "vic")
    olga = hub.token_for("olga")
    hub.api("DELETE", "/users/olga/servers/app-demo", token=olga)

    def stopped():
        model = servers(hub)["app-demo"]
        return model["stopped"] and not model["pending"]

    hub.wait(stopped, 60, "app-demo stopped")
    rename = {"name": "notes"}
    r = hub.api("PATCH", "/users/olga/servers/app-demo", token=olga, json=rename, ok=None)
    assert r.status_code == 403, (r.status_code, r.text)
    assert "kept for published apps (apps.server_prefix)" in r.json()["message"]
    assert "app-demo" in servers(hub) and "notes" not in servers(hub)
    # vic's share is still on the app, and nowhere else.
    shares = hub.api("GET", "/shares/olga/app-demo").json()
    assert [s["user"]["name"] for s in shares["items"] if s["user"]] == ["vic"]
    # Into the apps' names: olga's own (stopped) Lab can't become "app-demo2".
    hub.spawn("olga", "cpu")
    hub.wait_ready("olga")
    hub.stop_server("olga")
    r = hub.api("PATCH", "/users/olga/server", token=olga, json={"name": "app-demo2"}, ok=None)
    assert r.status_code == 403, (r.status_code, r.text)
    assert "app-demo2" not in servers(hub)


def load_page(hub: RunningHub, path: str, source: str, forwarded: str = "") -> tuple[int, str]:
    """GET the app's page as a browser at address `source` would (127.0.0.0/8 is all ours)."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=120,
                                      source_address=(source, 0))  # fmt: skip
    headers = {"Host": f"olga.hub.localhost:{hub.port}", "Accept": "text/html"}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def kernels_of(hub: RunningHub, server: str) -> int:
    """Kernels running under the app's Voila process."""
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "shangzhuang.apps.server" in cmd and p.environ().get("JUPYTERHUB_SERVER_NAME") == server:
            return sum("ipykernel_launcher" in " ".join(k.cmdline()) for k in p.children(True))
    raise AssertionError(f"no app server {server}")


def test_a_public_apps_kernels_are_capped(hub):
    publish(hub, "pub", "public")
    path = "/user/olga/app-pub/"
    for i in range(MAX_KERNELS):
        status, body = load_page(hub, path, f"127.0.0.{10 + i}")
        assert status == 200 and "y = 4" in body, (status, body[-300:])
    status, body = load_page(hub, path, "127.0.0.20")
    assert status == 503, status
    assert f"serving as many viewers as it can ({MAX_KERNELS})" in body
    assert kernels_of(hub, "app-pub") == MAX_KERNELS


def test_one_address_is_rate_limited_whatever_it_forwards(hub):
    publish(hub, "pub2", "public")
    path = "/user/olga/app-pub2/"
    for i in range(VISITS):
        status, _ = load_page(hub, path, "127.0.0.30", forwarded=f"10.0.0.{i}")
        assert status == 200, status
    status, body = load_page(hub, path, "127.0.0.30", forwarded="10.0.0.99")
    assert status == 429, status
    assert f"at most {VISITS} a minute" in body
    # Someone else is still served.
    status, _ = load_page(hub, path, "127.0.0.31")
    assert status == 200, status
