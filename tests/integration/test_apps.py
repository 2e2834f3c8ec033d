"""Voila apps with the real hub: published with the CLI, shared, viewed; a viewer gets the app
and nothing else, can't run code, loses access when revoked; public apps leak no token;
apps are charged to their owners as source "app"."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil
import pytest
import requests
import websocket

from .apps_kit import (
    cli,
    kernel_id,
    kernel_socket,
    message,
    open_app,
    replies_to,
    write_app,
)
from .hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

CACHE = 3  # apps.auth_cache_seconds: how long a revoked viewer's open page may keep going
APPS = f"""
auth_cache_seconds = {CACHE}
public_links = true
idle_stop_seconds = 0
kernel_idle_seconds = 0
"""
PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), apps=APPS) as h:
        yield h


@pytest.fixture(scope="module")
def published(hub):
    """olga publishes 'demo' (shared with vic) and 'pub' (public) with the CLI."""
    for name in ("olga", "vic", "sam", "una"):
        hub.new_user(name)
    token = hub.token_for("olga")
    folder = hub.base / "olga-work"
    nb = write_app(folder)
    r = cli(hub, token, "publish", str(nb), "--name", "demo", "--description", "y = a x + b",
            "--share", "vic")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "published olga/demo (2 files)" in r.stdout and "who may view: vic" in r.stdout
    r = cli(hub, token, "publish", str(nb), "--name", "pub", "--share", "public")
    assert r.returncode == 0, r.stderr
    return {"token": token, "folder": folder}


def login(hub: RunningHub, name: str) -> requests.Session:
    return hub.login(name, PASSWORD)


def open_url(hub, owner, name):
    return f"{hub.url}/services/apps/open/{owner}/{name}"


def app_url(hub, owner, name):
    """The app, on its owner's origin (http://OWNER.hub.localhost:PORT), never the hub's."""
    return hub.user_url(owner, f"app-{name}")


def test_viewer_sees_the_app_and_nothing_else(hub, published):
    vic = login(hub, "vic")
    # Straight in: no "authorize this server" page for a published app. Her browser asks for
    # Chinese: the page says it is in Chinese (nbconvert's default is "en").
    r = vic.get(open_url(hub, "olga", "demo"), timeout=120,
                headers={"Accept": "text/html", "Accept-Language": "zh-CN,zh;q=0.9"})
    assert r.status_code == 200, (r.status_code, r.url, r.text[-500:])
    assert r.url == app_url(hub, "olga", "demo")
    assert "y = 4" in r.text  # the notebook ran: a=3, x=1, b=1
    assert '<html lang="zh">' in r.text
    # The app shares olga's host with her Lab: vic's cookies for that host are the app's
    # (its login and its _xsrf), for the app's path; the hub's stay on the hub's host.
    olgas = {(c.name, c.path) for c in vic.cookies if c.domain == "olga.hub.localhost"}
    assert olgas == {("jupyterhub-user-olga-app-demo", "/user/olga/app-demo/"),
                     ("_xsrf", "/user/olga/app-demo/")}, olgas  # fmt: skip
    assert "secret.txt" not in r.text and "params = json.load" not in r.text  # no sources
    # Nothing of the owner's beyond the app: no contents, files, terminals, Lab, tree,
    # other notebooks, the snapshot's own files.
    base = app_url(hub, "olga", "demo")
    for path in [
        "api/contents", "api/contents/app.ipynb", "files/model.json", "files/secret.txt",
        "api/terminals", "terminals/1", "lab", "tree", "api/kernels", "api/sessions",
        "voila/tree", "voila/render/app.ipynb", "voila/api/contents", "voila/files/model.json",
        "voila/files/app.ipynb", "notebooks/app.ipynb", "edit/model.json", "api/kernelspecs",
    ]:  # fmt: skip
        got = vic.get(base + path, headers={"Accept": "text/html"}, timeout=30)
        assert got.status_code in (403, 404), (path, got.status_code, got.text[:200])
        assert '"a": 3' not in got.text and "private notes" not in got.text, path
        assert "y = " not in got.text, f"{path} rendered the notebook"
    # The owner's Lab server is not shared: no way in there either.
    hub.spawn("olga", "cpu")
    hub.wait_ready("olga")
    for path in ["lab", "api/contents", "files/olga-work/secret.txt"]:
        got = vic.get(f"{hub.user_url('olga')}{path}", timeout=30)
        assert got.status_code in (403, 404), (path, got.status_code)
        assert "private notes" not in got.text


def test_execute_request_over_the_kernel_socket_is_ignored(hub, published):
    vic = login(hub, "vic")
    page = open_app(vic, open_url(hub, "olga", "demo"))
    assert page.status_code == 200
    kid = kernel_id(page.text)
    marker = Path(f"/tmp/sz-app-pwned-{int(time.time() * 1000)}")
    ws = kernel_socket(vic, app_url(hub, "olga", "demo"), kid)
    try:
        # The socket is live: kernel_info is answered.
        info = message("kernel_info_request", {})
        ws.send(json.dumps(info))
        answers = replies_to(ws, info["header"]["msg_id"], 10)
        assert any(m["msg_type"] == "kernel_info_reply" for m in answers)
        code = f"open({str(marker)!r}, 'w').write('ran'); print('RAN')"
        execute = {"code": code, "silent": False, "store_history": False,
                   "user_expressions": {}, "allow_stdin": False}  # fmt: skip
        history = {"output": True, "raw": True, "hist_access_type": "tail", "n": 10}
        for msg in (
            message("execute_request", execute),
            message("inspect_request", {"code": "params", "cursor_pos": 6, "detail_level": 1}),
            message("complete_request", {"code": "import o", "cursor_pos": 8}),
            message("history_request", history),
        ):
            ws.send(json.dumps(msg))
            assert replies_to(ws, msg["header"]["msg_id"], 3) == [], msg["header"]["msg_type"]
    finally:
        ws.close()
    time.sleep(1)
    assert not marker.exists(), "a viewer's execute_request ran code"


def test_not_shared_user_gets_403(hub, published):
    sam = login(hub, "sam")
    r = sam.get(open_url(hub, "olga", "demo"), headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 403 and "not shared with sam" in r.text
    # Straight at the server: JupyterHub refuses the OAuth (403), no page.
    r = sam.get(app_url(hub, "olga", "demo"), headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 403, (r.status_code, r.url)
    assert "y = " not in r.text
    # Nor through the API.
    r = requests.get(
        f"{hub.url}/services/apps/api/apps/olga/demo",
        headers={"Authorization": f"token {hub.token_for('sam')}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 404
    # Anonymous: sent to the hub's login page, never the app.
    r = requests.get(app_url(hub, "olga", "demo"), headers={"Accept": "text/html"})
    assert "/hub/login" in r.url and "y = " not in r.text


def test_revoked_viewer_loses_access(hub, published):
    hub.new_user("rex")
    token = published["token"]
    nb = published["folder"] / "app.ipynb"
    assert cli(hub, token, "publish", str(nb), "--name", "rev", "--share", "rex").returncode == 0
    rex = login(hub, "rex")
    page = open_app(rex, open_url(hub, "olga", "rev"))
    assert page.status_code == 200 and "y = 4" in page.text
    ws = kernel_socket(rex, app_url(hub, "olga", "rev"), kernel_id(page.text))

    # olga takes rex off the app (publishing again with nobody named).
    r = cli(hub, token, "publish", str(nb), "--name", "rev")
    assert r.returncode == 0, r.stderr
    revoked = time.monotonic()
    # At once for a new session: a fresh login can't get in.
    fresh = login(hub, "rex")
    r = fresh.get(app_url(hub, "olga", "rev"), headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 403 and "y = " not in r.text
    r = fresh.get(open_url(hub, "olga", "rev"), headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 403
    # The open page: its kernel socket is closed within the cache age (plus a tick).
    ws.settimeout(CACHE + 5)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            ws.recv()
    assert time.monotonic() - revoked <= CACHE + 3
    # ... and the old cookie is refused too once the cache has expired.
    r = rex.get(app_url(hub, "olga", "rev"), headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 403 and "y = " not in r.text


def secrets_of_the_site(hub: RunningHub) -> dict[str, str]:
    """Every token the site holds: users', sessions', services', apps', the cookie secret."""
    found = {"owner's API token": hub.token_for("olga"), "admin token": hub.admin_token()}
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            env = p.environ()
        except psutil.Error:
            continue
        for key in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "CONFIGPROXY_AUTH_TOKEN"):
            if env.get(key):
                found[f"{key} of {' '.join(p.cmdline()[:4])}"] = env[key]
    found["cookie secret"] = (hub.state / "cookie_secret").read_bytes().hex()
    return found


def test_public_app_leaks_no_token(hub, published):
    anon = requests.Session()
    r = open_app(anon, open_url(hub, "olga", "pub"))
    assert r.status_code == 200 and r.url == app_url(hub, "olga", "pub")
    assert "y = 4" in r.text and '<html lang="en">' in r.text  # no Accept-Language: English
    assert "app token in kernel: None" in r.text  # the app's kernel never had one
    secrets = secrets_of_the_site(hub)
    assert any("shangzhuang.apps.server" in k for k in secrets), secrets.keys()
    bodies = [r.text, *(h.text for h in r.history)]
    # What the page loads from the app server (its config, static, the kernel model).
    kid = kernel_id(r.text)
    for path in ["", f"api/kernels/{kid}", "voila/api/themes/x"]:
        bodies.append(anon.get(app_url(hub, "olga", "pub") + path, timeout=30).text)
    ws = kernel_socket(anon, app_url(hub, "olga", "pub"), kid)
    info = message("kernel_info_request", {})
    ws.send(json.dumps(info))
    bodies += [json.dumps(m) for m in replies_to(ws, info["header"]["msg_id"], 5)]
    ws.close()
    for what, secret in secrets.items():
        for body in bodies:
            assert secret not in body, f"{what} leaked"
    assert not re.search(r'"token":\s*"[^"]+"', r.text)
    # Public: anonymous, but still only the app.
    for path in ["api/contents", "files/secret.txt", "lab", "voila/render/app.ipynb"]:
        got = anon.get(app_url(hub, "olga", "pub") + path, timeout=30)
        assert got.status_code in (403, 404), path


def test_apps_list_page_and_charges(hub, published):
    token = published["token"]
    r = cli(hub, token, "list", "--json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert {a["name"] for a in listing["owned"]} >= {"demo", "pub"}
    demo = next(a for a in listing["owned"] if a["name"] == "demo")
    assert demo["description"] == "y = a x + b" and demo["viewers"]["users"] == ["vic"]
    assert demo["files"] == ["app.ipynb", "model.json"]  # the declared file, not secret.txt
    vic_list = json.loads(cli(hub, hub.token_for("vic"), "list", "--json").stdout)
    assert [a["name"] for a in vic_list["shared"] if a["owner"] == "olga"] == ["demo", "pub"]
    assert "viewers" not in vic_list["shared"][0]  # viewers don't see who else may view
    # The apps page, for the owner and for a viewer.
    html = {"Accept": "text/html"}
    page = login(hub, "olga").get(f"{hub.url}/services/apps/", headers=html, timeout=60)
    assert page.status_code == 200 and "y = a x + b" in page.text and "Unpublish" in page.text
    page = login(hub, "vic").get(f"{hub.url}/services/apps/", headers=html, timeout=60)
    assert "demo" in page.text and "Unpublish" not in page.text

    # Charged to olga as source "app", never as a Lab session.
    from shangzhuang.quota import open_ledger
    from shangzhuang.settings import load_settings

    time.sleep(2)
    rows = open_ledger(load_settings(hub.config)).usage(user="olga")
    sources = {(r.consumer.split("@")[0], r.source) for r in rows}
    assert ("app:olga/app-demo", "app") in sources, sources
    assert not any(c.startswith("lab:olga/app-") for c, _ in sources)


def browser(hub: RunningHub, name: str) -> requests.Session:
    """NAME signed in with the login form, after opening the apps page once (the
    service's OAuth cookie set)."""
    s = hub.login(name, hub.password_of_admin() if name == ADMIN else PASSWORD)
    r = s.get(f"{hub.url}/services/apps/", headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 200, r.text[-500:]
    return s


def test_admin_browser_lists_every_app(hub, published):
    """Admin is a scope of the request: the admin's browser (its cookie's OAuth token) may
    list every app; a user's browser may not."""
    r = browser(hub, ADMIN).get(f"{hub.url}/services/apps/api/apps?all=1", timeout=60)
    assert r.status_code == 200, r.text
    assert "olga/demo" in {f"{a['owner']}/{a['name']}" for a in r.json()["owned"]}, r.json()
    r = browser(hub, "sam").get(f"{hub.url}/services/apps/api/apps?all=1", timeout=60)
    assert r.status_code == 403, r.text


def test_admin_is_judged_by_scope_not_flag(hub, published):
    """The apps page and an app's details: the admin's browser sees olga's demo (shared
    only with vic); sam's doesn't; the admin's token made for metrics only is no admin."""
    page = browser(hub, ADMIN).get(f"{hub.url}/services/apps/", timeout=60)
    assert 'data-app="olga/demo"' in page.text
    r = browser(hub, ADMIN).get(f"{hub.url}/services/apps/api/apps/olga/demo", timeout=60)
    assert r.status_code == 200, r.text
    page = browser(hub, "sam").get(f"{hub.url}/services/apps/", timeout=60)
    assert page.status_code == 200 and 'data-app="olga/demo"' not in page.text
    scopes = ["read:metrics", "access:services!service=apps"]
    narrow = hub.api(
        "POST", f"/users/{ADMIN}/tokens", json={"note": "metrics", "scopes": scopes}
    ).json()["token"]
    r = requests.get(f"{hub.url}/services/apps/api/apps/olga/demo", timeout=60,
                     headers={"Authorization": f"token {narrow}"})  # fmt: skip
    assert r.status_code == 404, r.text


def test_unpublish_and_refusals(hub, published):
    token = published["token"]
    nb = published["folder"] / "app.ipynb"
    # Someone else can't publish as olga, nor unpublish her app.
    vic_token = hub.token_for("vic")
    r = cli(hub, vic_token, "publish", str(nb), "--name", "x", "--owner", "olga")
    assert r.returncode == 2 and "servers!user=olga" in r.stderr
    r = cli(hub, vic_token, "unpublish", "demo", "--owner", "olga")
    assert r.returncode == 2
    # Only an admin keeps an app always on.
    r = cli(hub, token, "publish", str(nb), "--name", "demo", "--share", "vic", "--always-on")
    assert r.returncode == 2 and "only an admin" in r.stderr
    # A server name of the apps' kind that is not an app does not start.
    r = hub.api("POST", "/users/olga/servers/app-nothing", ok=None)
    assert r.status_code >= 400 and "not a published app" in r.text
    # The apps page's button (cookie, XSRF form field, the page's own OAuth token).
    olga = login(hub, "olga")
    page = olga.get(f"{hub.url}/services/apps/", headers={"Accept": "text/html"}, timeout=60)
    form = re.search(r'action="/services/apps/unpublish/olga/rev".*?name="_xsrf" value="([^"]+)"',
                     page.text, re.S)  # fmt: skip
    r = olga.post(f"{hub.url}/services/apps/unpublish/olga/rev", timeout=120,
                  data={"_xsrf": form.group(1)}, headers={"Accept": "text/html"})  # fmt: skip
    assert r.status_code == 200 and r.url == f"{hub.url}/services/apps/"
    assert 'data-app="olga/rev"' not in r.text
    r = olga.post(f"{hub.url}/services/apps/unpublish/olga/demo", timeout=60)  # no XSRF
    assert r.status_code == 401  # without XSRF the cookie authenticates nothing
    assert "app-demo" in hub.api("GET", "/users/olga?include_stopped_servers=1").json()["servers"]
    # Unpublished: gone for the viewer, the server removed.
    assert cli(hub, token, "unpublish", "pub").returncode == 0
    assert "app-pub" not in hub.api("GET", "/users/olga").json()["servers"]
    r = requests.get(open_url(hub, "olga", "pub"), headers={"Accept": "text/html"}, timeout=30)
    assert r.status_code == 404


def test_publish_from_a_lab_session(hub, published):
    """The Lab extension's handler publishes with the session's own token (its scopes)."""
    if not (hub.api("GET", "/users/olga").json()["servers"].get("") or {}).get("ready"):
        hub.spawn("olga", "cpu")
        hub.wait_ready("olga")
    folder = published["folder"]
    files = {"lab/app.ipynb": (folder / "app.ipynb").read_text(),
             "lab/model.json": '{"a": 5, "b": 0}'}  # fmt: skip
    hub.run_code("olga", "import os, json\n" + "".join(
        f"os.makedirs(os.path.dirname({k!r}), exist_ok=True); open({k!r}, 'w').write({v!r})\n"
        for k, v in files.items()
    ))  # fmt: skip
    headers = {"Authorization": f"token {published['token']}"}
    r = requests.post(
        f"{hub.user_url('olga')}shangzhuang/apps/publish", headers=headers, timeout=300,
        json={"path": "lab/app.ipynb", "name": "fromlab", "description": "from Lab",
              "viewers": {"users": ["vic"]}},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["full_url"].endswith("/services/apps/open/olga/fromlab")
    r = open_app(login(hub, "vic"), open_url(hub, "olga", "fromlab"))
    assert r.status_code == 200 and "y = 5" in r.text  # a=5, x=1, b=0: the Lab's own files
    # Outside the server's root: refused.
    r = requests.post(f"{hub.user_url('olga')}shangzhuang/apps/publish", headers=headers,
                      json={"path": "../../etc/passwd.ipynb", "name": "x"}, timeout=60)  # fmt: skip
    assert r.status_code == 404
