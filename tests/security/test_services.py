"""Attacks on the quota and apps services by a signed-in stranger or a stolen narrow token.

- the scoped-token grant: an admin's token that holds only `read:metrics` is still the
  admin's token; the quota service must judge it by its scopes, not by its owner's flag;
- the XSRF header trick: a cross-site POST carries the victim's cookie and any bogus
  `Authorization` header, but no `_xsrf`; the services must not let the header (which
  authenticated nothing) switch the XSRF check off.
"""

import pytest
import requests

from tests.integration.hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), quota="[quota.accounts.default]\ncpu_hours = 100") as h:
        yield h


def grant(hub, reason: str) -> dict:
    return {"account": "default", "resource": "cpu_hours", "amount": 5, "reason": reason}


def grants_for(hub, reason: str) -> list:
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/grants",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    r.raise_for_status()
    return [g for g in r.json() if g["reason"] == reason]


def test_admin_token_with_only_metrics_scope_cannot_grant_quota(hub):
    scopes = ["read:metrics", "access:services!service=quota"]  # what a metrics scraper holds
    narrow = hub.api(
        "POST", f"/users/{ADMIN}/tokens", json={"note": "metrics", "scopes": scopes}
    ).json()["token"]
    headers = {"Authorization": f"token {narrow}"}
    # what the token is for still works
    assert requests.get(f"{hub.url}/services/quota/metrics", headers=headers, timeout=30).ok
    r = requests.post(
        f"{hub.url}/services/quota/api/v1/grants", json=grant(hub, "scoped"),
        headers=headers, timeout=30,
    )  # fmt: skip
    assert r.status_code == 403, r.text
    assert grants_for(hub, "scoped") == []
    # the admin's full token still grants
    r = requests.post(
        f"{hub.url}/services/quota/api/v1/grants", json=grant(hub, "scoped-ok"),
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text


def service_session(hub, user: requests.Session, service: str, page: str) -> requests.Session:
    """The victim's browser after visiting the service once (its OAuth cookie set)."""
    url = f"{hub.url}/services/{service}/{page}"
    r = user.get(url, headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code < 500, r.text
    assert any(c.name.startswith(f"service-{service}") for c in user.cookies), user.cookies
    return user


def test_bogus_authorization_header_does_not_skip_xsrf_on_quota(hub):
    admin = service_session(hub, hub.login(ADMIN, hub.password_of_admin()), "quota", "api/v1/me")
    r = admin.post(
        f"{hub.url}/services/quota/api/v1/grants", json=grant(hub, "xsrf-quota"),
        headers={"Authorization": "token not-a-token"}, timeout=30,
    )  # fmt: skip
    assert r.status_code in (401, 403), r.text
    assert grants_for(hub, "xsrf-quota") == []


def test_bogus_authorization_header_does_not_skip_xsrf_on_apps(hub):
    hub.new_user("xavier")
    victim = service_session(hub, hub.login("xavier", "correct-horse-9"), "apps", "")
    # a cross-site post: the victim's cookies, a made-up header, no _xsrf. Refused before
    # anything is looked up (authenticated, it would answer 404: there is no such app).
    r = victim.post(
        f"{hub.url}/services/apps/unpublish/xavier/some-app",
        headers={"Authorization": "token not-a-token"}, allow_redirects=False, timeout=30,
    )  # fmt: skip
    assert r.status_code in (401, 403), r.text


def browser_grant(hub, browser: requests.Session, reason: str) -> requests.Response:
    """A grant posted as the quota page's script would: the browser's cookies and the
    service's `_xsrf` (set for /services/quota/ when its OAuth login completed)."""
    xsrf = browser.cookies.get("_xsrf", path="/services/quota/")
    assert xsrf, browser.cookies
    return browser.post(
        f"{hub.url}/services/quota/api/v1/grants", json=grant(hub, reason),
        headers={"X-XSRFToken": xsrf}, timeout=30,
    )  # fmt: skip


def test_admin_browser_is_an_admin_of_the_quota_service(hub):
    """A signed-in admin's browser (login form, then the service's OAuth cookie) grants
    quota: the OAuth token behind the cookie carries the admin scope. A user's doesn't."""
    admin = service_session(hub, hub.login(ADMIN, hub.password_of_admin()), "quota", "api/v1/me")
    r = browser_grant(hub, admin, "browser-admin")
    assert r.status_code in (200, 201), r.text
    assert r.json()["by"] == ADMIN
    assert len(grants_for(hub, "browser-admin")) == 1

    hub.new_user("nadia")
    nadia = service_session(hub, hub.login("nadia", "correct-horse-9"), "quota", "api/v1/me")
    r = browser_grant(hub, nadia, "browser-user")
    assert r.status_code == 403, r.text
    assert grants_for(hub, "browser-user") == []
    # Her token lacks admin:users, as it should: routine, so not a hub WARNING each time
    # a user opens a service (JupyterHub's "requested scopes ..., granting only ...").
    notices = [
        line for line in hub.log.read_text().splitlines() if "for user nadia, granting only" in line
    ]
    assert notices and all(line.startswith("[I ") for line in notices), notices


def test_a_users_token_cannot_speak_for_the_hub_to_the_quota_service(hub):
    """The quota service's hub-only calls (issue 16) are what meters sessions: a user (or code
    in her session, which holds her token) who could call them would close her own sessions'
    metering (free hours), move herself into a richer account's pool, set another user's
    record apart, or open charges against someone else. Each is refused with 403, and a
    user reads only her own spawn verdict. Seen red with `hub_only()` letting any caller
    through."""
    hub.new_user("victor")
    hub.new_user("mallory")
    api = f"{hub.url}/services/quota/api/v1"
    mallory = {"Authorization": f"token {hub.token_for('mallory')}"}
    attacks = [
        ("/consumers/close", {"consumer": "lab:mallory/@1764500000000", "end": 1764500001}),
        ("/consumers", {"consumer": "lab:victor/@1764500000000", "user": "victor",
                        "profile": "cpu", "started": 1764500000}),
        ("/users/mallory/account", {"groups": ["rich-institute"]}),
        ("/users/victor/set-apart", {}),
    ]  # fmt: skip
    for path, body in attacks:
        r = requests.post(api + path, json=body, headers=mallory, timeout=30)
        assert r.status_code == 403, (path, r.status_code, r.text)
    other = requests.get(f"{api}/users/victor/affordable", headers=mallory, timeout=30)
    assert other.status_code == 403, other.text
    assert requests.get(f"{api}/users/mallory/affordable", headers=mallory, timeout=30).ok
    # victor's record was not set apart: he is still himself to the quota service
    r = requests.get(f"{api}/users/victor", headers={"Authorization": f"token {hub.admin_token()}"},
                     timeout=30)  # fmt: skip
    assert r.ok and r.json()["user"] == "victor", r.text


def test_only_the_hub_records_refused_starts(hub):
    """The estate counts refused starts (issue 15, quota/refusals.py), which the hub posts
    to the quota service. A user who could post them would flood the counts, or frame
    another user as refused over and over (the admins' "top refused users"); an admin's
    token is no hub either. Each post is refused with 403 and nothing is recorded. Seen
    red with RefusalsHandler.post taking any caller: mallory's post answered 201."""
    if hub.api("GET", "/users/mallory", ok=None).status_code == 404:  # run on its own
        hub.new_user("mallory")
    api = f"{hub.url}/services/quota/api/v1"
    body = {"user": "victor", "reason": "quota", "profile": "cpu", "resources": ["cpu_hours"]}
    for token in (hub.token_for("mallory"), hub.admin_token()):
        r = requests.post(f"{api}/refusals", json=body,
                          headers={"Authorization": f"token {token}"}, timeout=30)  # fmt: skip
        assert r.status_code == 403, r.text
    r = requests.post(f"{api}/refusals", json={**body, "reason": "server-limit"},
                      headers={"Authorization": f"token {hub.token_for('mallory')}"},
                      timeout=30)  # fmt: skip
    assert r.status_code == 403, r.text
    estate = requests.get(f"{api}/estate", headers={"Authorization": f"token {hub.admin_token()}"},
                          timeout=30).json()  # fmt: skip
    assert estate["refusals"]["total"] == 0, estate["refusals"]


def test_another_user_cannot_move_a_gpu_session_to_cpu(hub):
    """"Continue on CPU" (issue 15) stops a GPU session and starts it again on the CPU
    profile: in another user's hands that is a way to kill her training and take her GPU.
    mallory tries it on wendy's running GPU session with her own token (403), and through
    wendy's own browser from a page of hers (wendy's cookie, no XSRF token: 401); wendy's
    session runs on, unrestarted. wendy herself can. Seen red with the name check of
    ContinueApiHandler.post removed: mallory's call restarted wendy's session on CPU."""
    hub.new_user("wendy")
    if hub.api("GET", "/users/mallory", ok=None).status_code == 404:  # run on its own
        hub.new_user("mallory")
    hub.spawn("wendy", "gpu-1")
    before = hub.wait_ready("wendy")
    url = f"{hub.url}/services/quota/api/v1/users/wendy/continue-on-cpu"
    mallory = {"Authorization": f"token {hub.token_for('mallory')}"}
    r = requests.post(url, json={"server": ""}, headers=mallory, timeout=120)
    assert r.status_code == 403, r.text
    wendy = service_session(hub, hub.login("wendy", "correct-horse-9"), "quota",
                            "continue-on-cpu")  # fmt: skip
    r = wendy.post(f"{hub.url}/services/quota/continue-on-cpu", data={"server": ""},
                   allow_redirects=False, timeout=120)  # fmt: skip
    assert r.status_code in (401, 403), r.text  # the cookie counts only with its XSRF token
    now = hub.api("GET", "/users/wendy").json()["servers"][""]
    assert now["ready"] and now["started"] == before["started"]
    assert now["user_options"] == {"profile": "gpu-1"}
    # her own token may
    own = {"Authorization": f"token {hub.token_for('wendy')}"}
    r = requests.post(url, json={"server": ""}, headers=own, timeout=120)
    assert r.status_code == 202, r.text
    assert r.json()["progress_url"] == "/hub/spawn-pending/wendy"
    after = hub.wait_ready("wendy")
    assert after["user_options"] == {"profile": "cpu"} and after["started"] != before["started"]
    hub.stop_server("wendy")
