"""Error pages on every path of the hub handlers we override (sign-up, login, approval,
change-password): each refusal answers a real page that says what went wrong, and the
hub logs no error, traceback or warning for it beyond the request's own access line
(JupyterHub logs every 4xx request at WARNING; that line is its, and expected)."""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.security.strangers import page_message

from .hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir()) as h:
        h.new_user("erin", PASSWORD)
        yield h


class LogWatch:
    """What the hub logs while one request is answered."""

    def __init__(self, hub: RunningHub):
        self.hub = hub
        self.start = hub.log.stat().st_size

    def lines(self) -> list[str]:
        with open(self.hub.log, "rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace").splitlines()

    def clean_after(self, method: str, path: str) -> list[str]:
        """Wait for the request's access line (written once the reply is sent), then
        return every line that is a problem: errors, tracebacks, warnings other than that
        access line, coroutines never awaited."""
        access = re.compile(rf"JupyterHub log:\d+\] \d{{3}} {method} {re.escape(path)}[ ?]")
        deadline = time.monotonic() + 30
        while not any(access.search(line) for line in self.lines()):
            assert time.monotonic() < deadline, "\n".join(self.lines())
            time.sleep(0.1)
        # The hub's own lines: the services share its log, and one starting meanwhile on a
        # busy machine says its own things (the idle culler warns that pycurl is missing).
        return [
            line
            for line in self.lines()
            if (re.match(r"\[[WEC] \S+ \S+ JupyterHub ", line) and not access.search(line))
            or "Traceback" in line
            or "never awaited" in line
            or "Uncaught exception" in line
        ]


def a_page(r: requests.Response) -> str:
    assert r.headers.get("Content-Type", "").startswith("text/html"), r.headers
    assert "<html" in r.text and "</html>" in r.text, r.text[-300:]
    return r.text


def browser(hub: RunningHub, path: str) -> requests.Session:
    s = requests.Session()
    s.get(f"{hub.url}{path}", timeout=60)  # the page, and its _xsrf cookie
    return s


def test_expired_login_form_shows_the_login_form_again(hub):
    s = browser(hub, "/hub/login")
    watch = LogWatch(hub)
    r = s.post(
        f"{hub.url}/hub/login", timeout=60, allow_redirects=False,
        data={"username": "erin", "password": PASSWORD, "_xsrf": "2|expired|token|1"},
    )  # fmt: skip
    assert r.status_code == 403
    page = a_page(r)
    assert "This form has expired" in page_message(page), page[-1500:]
    assert 'name="password"' in page  # the form again, to try once more
    assert watch.clean_after("POST", "/hub/login") == []
    # the form it answered works (its cookie and its _xsrf are fresh)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    r = s.post(f"{hub.url}/hub/login", timeout=60, allow_redirects=False,
               data={"username": "erin", "password": PASSWORD, "_xsrf": xsrf})  # fmt: skip
    assert r.status_code == 302, r.text[-500:]


def test_unknown_page(hub):
    watch = LogWatch(hub)
    r = requests.get(f"{hub.url}/hub/no-such-page", timeout=60)
    assert r.status_code == 404
    a_page(r)
    assert watch.clean_after("GET", "/hub/no-such-page") == []


def test_refused_sign_ups(hub):
    s = browser(hub, "/hub/signup")
    xsrf = s.cookies.get("_xsrf")
    form = {"signup_password": PASSWORD, "signup_password_confirmation": PASSWORD}
    # a reserved name: the sign-up page again, saying why
    watch = LogWatch(hub)
    r = s.post(f"{hub.url}/hub/signup", data={**form, "username": ADMIN, "_xsrf": xsrf},
               timeout=60)  # fmt: skip
    assert r.status_code == 400
    assert ADMIN in page_message(a_page(r))
    assert watch.clean_after("POST", "/hub/signup") == []
    # an expired form
    watch = LogWatch(hub)
    r = s.post(f"{hub.url}/hub/signup", timeout=60,
               data={**form, "username": "fresh", "_xsrf": "2|expired|token|1"})  # fmt: skip
    assert r.status_code == 403
    a_page(r)
    assert watch.clean_after("POST", "/hub/signup") == []


def test_approval_and_password_pages_refuse_with_a_page(hub):
    admin = hub.login(ADMIN, hub.password_of_admin())
    cases = [
        # approving is a POST from the authorization page: a link approves nobody
        ("GET", "/hub/authorize/erin", None, 405, "approving is a POST"),
        ("POST", "/hub/authorize/nobody-signed-up", {}, 404, "no sign-up named"),
        ("GET", "/hub/discard/erin", None, 405, "discarding is a POST"),
        ("POST", "/hub/change-password/nobody-signed-up",
         {"new_password": "x", "new_password_confirmation": "x"}, 404, "nobody-signed-up"),
    ]  # fmt: skip
    for method, path, data, status, says in cases:
        admin.get(f"{hub.url}/hub/authorize", timeout=60)  # a page: a fresh _xsrf cookie
        watch = LogWatch(hub)
        if data is None:
            r = admin.get(f"{hub.url}{path}", timeout=60)
        else:
            data = {**data, "_xsrf": admin.cookies.get("_xsrf", path="/hub/")}
            r = admin.post(f"{hub.url}{path}", data=data, timeout=60)
        assert r.status_code == status, (path, r.status_code, r.text[-500:])
        assert says in a_page(r), (path, r.text[-1500:])
        assert watch.clean_after(method, path) == [], path
    # the user's own password form, posted after its token expired
    erin = hub.login("erin", PASSWORD)
    watch = LogWatch(hub)
    r = erin.post(f"{hub.url}/hub/change-password", timeout=60,
                  data={"old_password": PASSWORD, "new_password": "n", "_xsrf": "2|x|y|1",
                        "new_password_confirmation": "n"})  # fmt: skip
    assert r.status_code == 403
    a_page(r)
    assert watch.clean_after("POST", "/hub/change-password") == []
