"""Guessing passwords on the login page, as a stranger on the internet would.

- throttling without enumeration: a wrong password and an unknown name get the same
  reply, after the same bcrypt work (an unknown name is checked against a dummy hash);
- failures slow down the address they come from, and never lock an account: the admin
  logs in from elsewhere while someone hammers the admin's name;
- the cross-site approval link: an admin who follows a link (or loads a page) from another
  site does not approve anyone (a real Chromium, Debian's, through Playwright).
"""

from __future__ import annotations

import http.server
import statistics
import threading

import pytest

from tests.e2e.conftest import browser  # noqa: F401 (the browser fixture)
from tests.integration.hub import ADMIN, RunningHub, workdir
from tests.ports import free_port
from tests.security.strangers import login_from, page_message

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir()) as h:
        h.new_user("nora", "nora-password-1")
        yield h


def test_unknown_name_and_wrong_password_look_the_same(hub):
    wrong, unknown = [], []
    for i in range(3):  # well under the address's free failures, each from its own address
        r, took = login_from(hub, f"127.0.1.{i + 1}", "nora", "not-her-password")
        wrong.append((r.status_code, page_message(r.text), took))
        r, took = login_from(hub, f"127.0.2.{i + 1}", "nobody-by-this-name", "whatever-1")
        unknown.append((r.status_code, page_message(r.text), took))
    assert {(s, m) for s, m, _ in wrong} == {(403, "Invalid username or password.")}, wrong
    assert {(s, m) for s, m, _ in unknown} == {(403, "Invalid username or password.")}, unknown
    # the same bcrypt check either way: an unknown name takes as long as a wrong password
    # (a bcrypt check is ~0.25 s here; a reply without one ~10 ms)
    t_wrong = statistics.median(t for *_, t in wrong)
    t_unknown = statistics.median(t for *_, t in unknown)
    assert t_unknown > 0.5 * t_wrong, (t_wrong, t_unknown)


def test_failures_slow_the_address_and_never_lock_the_admin_out(hub):
    attacker = "127.0.3.1"
    for _ in range(3):
        r, _ = login_from(hub, attacker, ADMIN, "guess-1")
        assert r.status_code == 403, r.text
    # now this address waits, whatever name it tries: nothing told about who exists
    r, _ = login_from(hub, attacker, ADMIN, "guess-2")
    assert r.status_code == 429, r.text
    assert "Too many failed logins from your address: try again in" in page_message(r.text)
    r, _ = login_from(hub, attacker, "nobody-by-this-name", "guess-2")
    assert r.status_code == 429
    # even the right password from the attacker's address waits (no oracle)
    r, _ = login_from(hub, attacker, ADMIN, hub.password_of_admin())
    assert r.status_code == 429
    # the admin, from another address, is not locked out (at most slowed a little)
    r, took = login_from(hub, "127.0.3.2", ADMIN, hub.password_of_admin())
    assert r.status_code == 302, r.text
    assert took < 10
    # nor is another user
    r, _ = login_from(hub, "127.0.3.3", "nora", "nora-password-1")
    assert r.status_code == 302, r.text


class _AttackerSite(http.server.BaseHTTPRequestHandler):
    """Another origin: /link, /img and /form are pages that try to approve `victim` (the
    approval toggles, so each way is tried and checked on its own)."""

    hub_url = ""

    def do_GET(self):  # noqa: N802 (http.server's name)
        target = f"{self.hub_url}/hub/authorize/victim"
        how = {
            "/link": f'<a id="go" href="{target}">cute cats</a>',
            "/img": f'<img id="go" src="{target}">',
            "/form": f'''<form id="go" method="post" action="{target}"></form>
<script>document.getElementById("go").submit()</script>''',
        }[self.path]
        body = f"<!doctype html><html><body>{how}</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def approved(hub, address: str) -> bool:
    r, _ = login_from(hub, address, "victim", "victim-password-1")
    assert r.status_code == 302 or "not approved yet" in page_message(r.text), r.text
    return r.status_code == 302


def test_a_cross_site_link_does_not_approve_anyone(hub, browser):  # noqa: F811
    hub.signup("victim", "victim-password-1")
    port = free_port()
    _AttackerSite.hub_url = hub.url
    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), _AttackerSite)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        # the admin is logged in, in this browser
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", ADMIN)
        page.fill("#password_input", hub.password_of_admin())
        page.click("#login_submit")
        page.wait_for_url("**/hub/**", timeout=60_000)
        assert "/hub/login" not in page.url
        # ... and follows a link on the attacker's page
        page.goto(f"http://127.0.0.1:{port}/link")
        with page.expect_navigation():
            page.click("#go")
        assert not approved(hub, "127.0.4.1")
        # ... opens a page that loads the URL as an image
        page.goto(f"http://127.0.0.1:{port}/img")
        page.wait_for_load_state("networkidle")
        assert not approved(hub, "127.0.4.2")
        # ... opens a page that posts a form there at once (no _xsrf: refused)
        with page.expect_navigation(url=f"{hub.url}/**"):
            page.goto(f"http://127.0.0.1:{port}/form")
        assert not approved(hub, "127.0.4.3")
        # the admin's own button on /hub/authorize (a POST with _xsrf) still approves
        page.goto(f"{hub.url}/hub/authorize")
        with page.expect_navigation():
            page.click("tr#victim button:has-text('Approve')")
        assert approved(hub, "127.0.4.4")
    finally:
        context.close()
        site.shutdown()
