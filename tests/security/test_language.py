"""The language switch (POST /hub/language) as strangers would use it, on a real hub.

- another site can't switch a signed-in user's language (a form it hosts has no XSRF token):
  neither her cookie nor her stored choice changes;
- the switch's `next` never sends anyone off the hub (no open redirect for phishing);
- a language cookie someone forged (a script in it) is no language: not echoed into the
  page, not stored as her choice at login, and her login still works;
- one user's choice is hers: it never reaches another user's browser.
"""

from __future__ import annotations

import json
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from shangzhuang.i18n import COOKIE
from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir()) as h:
        h.new_user("ling", PASSWORD)
        h.new_user("mark", PASSWORD)
        h.new_user("nina", PASSWORD)
        yield h


def choices(hub: RunningHub) -> dict:
    path = hub.state / "languages.json"
    return json.loads(path.read_text()) if path.exists() else {}


def switch(hub: RunningHub, s: requests.Session, language: str, next_url: str = "/hub/home"):
    s.get(f"{hub.url}/hub/home", timeout=30)  # a hub page: a fresh _xsrf cookie
    xsrf = s.cookies.get("_xsrf", path="/hub/")
    return s.post(f"{hub.url}/hub/language", allow_redirects=False, timeout=30,
                  data={"language": language, "next": next_url, "_xsrf": xsrf})  # fmt: skip


def test_another_site_cannot_switch_a_users_language(hub):
    ling = hub.login("ling", PASSWORD)
    assert switch(hub, ling, "zh_CN").status_code == 302
    before = choices(hub)
    # The other site's form: her cookies (worst case: a browser that sends them
    # cross-site), no token, or one it made up.
    for data in ({"language": "en"}, {"language": "en", "_xsrf": "2|abcd|efgh|1"}):
        r = ling.post(f"{hub.url}/hub/language", data=data, allow_redirects=False, timeout=30)
        assert r.status_code == 403, r.status_code
        assert COOKIE not in r.cookies
    assert choices(hub) == before and before["ling"] == "zh_CN"
    page = ling.get(f"{hub.url}/hub/home", timeout=30).content.decode()
    assert '<html lang="zh-CN">' in page


@pytest.mark.parametrize(
    "next_url", ["https://evil.example/login", "//evil.example/login", "/\\evil.example"]
)
def test_the_switch_never_sends_anyone_off_the_hub(hub, next_url):
    mark = hub.login("mark", PASSWORD)
    r = switch(hub, mark, "en", next_url)
    assert r.status_code == 302
    location = r.headers["Location"]
    # Where a browser goes: on the hub's own host ('/%5Cevil.example' is a path there).
    assert urlsplit(urljoin(f"{hub.url}/hub/language", location)).netloc == urlsplit(
        hub.url
    ).netloc, location
    assert not location.startswith(("//", "/\\")), location


def test_a_forged_language_cookie_is_no_language(hub):
    forged = '"><script>alert(1)</script>'
    s = requests.Session()
    s.cookies.set(COOKIE, forged, domain="hub.localhost", path="/")
    s.headers["Accept-Language"] = "zh-CN"
    page = s.get(f"{hub.url}/hub/login", timeout=30).content.decode()
    assert "<script>alert(1)" not in page and '<html lang="zh-CN">' in page  # the browser's
    # Her login with it: it works, and the forged value is not stored as her choice.
    before = choices(hub).get("mark")
    s.get(f"{hub.url}/hub/login", timeout=30)
    r = s.post(f"{hub.url}/hub/login", allow_redirects=False, timeout=30,
               data={"username": "mark", "password": PASSWORD,
                     "_xsrf": s.cookies.get("_xsrf")})  # fmt: skip
    assert r.status_code == 302, (r.status_code, r.text[-300:])
    assert choices(hub).get("mark") == before
    assert forged not in (hub.state / "languages.json").read_text()


def test_one_users_choice_never_reaches_another(hub):
    ling = hub.login("ling", PASSWORD)
    assert switch(hub, ling, "en").status_code == 302
    nina = requests.Session()  # another person, another browser, asking for Chinese
    nina.headers["Accept-Language"] = "zh-CN"
    nina.get(f"{hub.url}/hub/login", timeout=30)
    r = nina.post(f"{hub.url}/hub/login", allow_redirects=False, timeout=30,
                  data={"username": "nina", "password": PASSWORD,
                        "_xsrf": nina.cookies.get("_xsrf")})  # fmt: skip
    assert r.status_code == 302
    assert choices(hub)["ling"] == "en" and "nina" not in choices(hub)
    assert COOKIE not in r.cookies  # nothing of ling's set in nina's browser
    page = nina.get(f"{hub.url}/hub/home", timeout=30).content.decode()
    assert '<html lang="zh-CN">' in page
