"""User content never runs on the hub's origin.

A user publishes an app whose outputs carry a script (an HTML display with a <script>, an
HTML display and an ipywidgets HTML value with an <img onerror>, an SVG with onload). An
admin opens it in Debian's Chromium. Each script that runs tries what a script on the hub's
origin could do: read /hub/home (and its XSRF token), create an API token for the admin with
it, and call the hub API with that token; it writes what it got into the page, where the
test reads it. Nothing may be read and no token created: user servers and apps live on
their own origins (http://NAME.localhost:PORT), where the hub's cookies are never sent.
"""

from __future__ import annotations

import base64
import json
import re

import nbformat
import pytest
import requests

from tests.e2e.conftest import ARTIFACTS, browser  # noqa: F401 (the browser fixture)
from tests.integration.apps_kit import cli
from tests.integration.hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-9"
VECTORS = ["script", "img", "widget", "svg"]

# Runs in the viewer's browser. HUB and HOW are filled in per vector.
ATTACK = """
(async () => {
  const HUB = %(hub)s, ADMIN = %(admin)s, HOW = %(how)s;
  const started = document.createElement('span');
  started.className = 'sz-attack-started';
  document.body.appendChild(started);
  const report = {how: HOW, origin: location.origin, home: [], create: [], token: null, api: null};
  let xsrf = null, base = null;
  for (const b of ['', HUB]) {
    try {
      const r = await fetch(b + '/hub/home', {credentials: 'include'});
      const t = await r.text();
      const m = t.match(/xsrf_token:\\s*"([^"]+)"/);
      const signedIn = t.includes('href="/hub/token"');
      report.home.push({base: b, status: r.status, url: r.url, signed_in: signedIn});
      if (signedIn && m && !xsrf) { xsrf = m[1]; base = b; }
    } catch (e) { report.home.push({base: b, error: String(e)}); }
  }
  for (const b of ['', HUB]) {
    try {
      const headers = {'Content-Type': 'application/json'};
      if (xsrf) headers['X-XSRFToken'] = xsrf;
      const r = await fetch(b + '/hub/api/users/' + ADMIN + '/tokens', {
        method: 'POST', credentials: 'include', headers,
        body: JSON.stringify({note: 'stolen by ' + HOW})});
      report.create.push({base: b, status: r.status});
      const body = await r.text();
      try { if (JSON.parse(body).token) report.token = JSON.parse(body).token; } catch (e) {}
    } catch (e) { report.create.push({base: b, error: String(e)}); }
  }
  if (report.token) {
    try {
      const r = await fetch((base || '') + '/hub/api/users',
                            {headers: {Authorization: 'token ' + report.token}});
      report.api = r.status;
    } catch (e) { report.api = String(e); }
  }
  const el = document.createElement('pre');
  el.id = 'sz-attack-' + HOW;
  el.className = 'sz-attack';
  el.textContent = JSON.stringify(report);
  document.body.appendChild(el);
})();
"""


def attack(hub: RunningHub, how: str) -> str:
    """The attack as one JavaScript expression, safe inside an HTML attribute."""
    js = ATTACK % {"hub": json.dumps(hub.url), "admin": json.dumps(ADMIN), "how": json.dumps(how)}
    return f"eval(atob('{base64.b64encode(js.encode()).decode()}'))"


def write_attack_app(hub: RunningHub) -> str:
    folder = hub.base / "mallory-work"
    folder.mkdir(parents=True, exist_ok=True)
    script = f"<script>{attack(hub, 'script')}</script>"
    img = f'<img src="data:,x" onerror="{attack(hub, "img")}">'
    widget = f'<img src="data:,y" onerror="{attack(hub, "widget")}">'
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
        f'onload="{attack(hub, "svg")}"><rect width="10" height="10"/></svg>'
    )
    cells = [
        "from IPython.display import HTML, SVG, display\nimport ipywidgets as w",
        f"display(HTML({script!r}))",
        f"display(HTML({img!r}))",
        f"display(w.HTML(value={widget!r}))",
        f"display(SVG({svg!r}))",
        "print('a harmless looking app')",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    path = folder / "innocent.ipynb"
    nbformat.write(nb, path)
    return str(path)


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), apps="idle_stop_seconds = 0\n") as h:
        yield h


def admin_tokens(hub: RunningHub) -> dict[str, dict]:
    r = hub.api("GET", f"/users/{ADMIN}/tokens")
    return {t["id"]: t for t in r.json()["api_tokens"]}


def stolen(before: dict, after: dict) -> list[dict]:
    """New API tokens: the admin's browser also gets OAuth tokens for the apps page and the
    app (each its own client), but no token of the hub's own client, as POST /tokens makes."""
    new = [t for i, t in after.items() if i not in before]
    return [t for t in new if t["oauth_client"] == "JupyterHub" or "stolen" in (t["note"] or "")]


def test_an_apps_script_cannot_act_as_the_admin_viewing_it(hub, browser):  # noqa: F811
    hub.new_user("mallory")
    r = cli(hub, hub.token_for("mallory"), "publish", write_attack_app(hub), "--name", "innocent",
            "--share", ADMIN)  # fmt: skip
    assert r.returncode == 0, r.stderr
    before = admin_tokens(hub)

    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login?next=/hub/home")
    page.fill("#username_input", ADMIN)
    page.fill("#password_input", hub.password_of_admin())
    page.click("#login_submit")
    page.wait_for_url(re.compile(r".*/hub/home.*"))
    page.goto(f"{hub.url}/services/apps/open/mallory/innocent")
    page.wait_for_url(re.compile(r".*/user/mallory/app-innocent/.*"), timeout=120_000)
    page.get_by_text("a harmless looking app").wait_for(timeout=120_000)
    page.locator(".widget-html").wait_for(timeout=60_000)  # the widget vector is on the page
    # The attack ran (at least one vector), and every script that started has reported.
    page.locator(".sz-attack-started").first.wait_for(state="attached", timeout=60_000)
    page.wait_for_function(
        "document.querySelectorAll('.sz-attack').length"
        " === document.querySelectorAll('.sz-attack-started').length",
        timeout=60_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "origins-attack-app.png"))
    reports = [json.loads(t) for t in page.locator(".sz-attack").all_inner_texts()]
    context.close()

    assert reports, "no attack script ran: the test proves nothing"
    print(json.dumps(reports, indent=1))
    for report in reports:
        assert report["origin"] != hub.url, f"{report['how']}: the app ran on the hub's origin"
        assert not any(h.get("signed_in") for h in report["home"]), report
        assert report["token"] is None, report
        assert not any(c.get("status") in (200, 201) for c in report["create"]), report
    assert stolen(before, admin_tokens(hub)) == [], "a token was created for the admin"
    # The hub's own API still answers the admin (the test's view of the tokens is real).
    assert requests.get(f"{hub.url}/hub/api", timeout=30).status_code == 200


def test_the_hub_takes_no_sign_in_on_a_users_origin(hub):
    """The hub answers every host (it is the proxy's default route), so a user's page can
    send a viewer to the hub's own login form on the user's host. Signing in there would
    leave a hub session (and its XSRF token) open to that user's scripts: refused."""
    hub.new_user("mallet")
    users_host = f"http://mallet.hub.localhost:{hub.port}"
    s = requests.Session()
    s.get(f"{users_host}/hub/login", timeout=30)
    r = s.post(
        f"{users_host}/hub/login", allow_redirects=False, timeout=30,
        data={"username": ADMIN, "password": hub.password_of_admin(),
              "_xsrf": s.cookies.get("_xsrf")},
    )  # fmt: skip
    assert r.status_code == 403, (r.status_code, r.headers.get("Location"))
    # The refusal names the hub's address (in the log: nativeauthenticator 1.3.0 can't render
    # JupyterHub 6's error page on a login POST, so the page itself is empty).
    assert f"Sign in at {hub.url}/hub/login: mallet.hub.localhost serves" in hub.tail(200)
    r = s.get(f"{users_host}/hub/home", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/login" in r.headers["Location"]  # not signed in
    r = s.get(f"{users_host}/hub/api/user", timeout=30)
    assert r.status_code == 403
    # On the hub's host the same form signs in.
    hub.login(ADMIN, hub.password_of_admin())
