"""Attacks on the usage page's API (quota/pages.py) by signed-in strangers, on a real hub:

- a user reading another user's usage, another account's burn, or the estate;
- a manager reaching past their account: another account's members, or a member's cap
  above the pool;
- a cross-site POST of a cap: the manager's cookie, no `_xsrf`;
- a user exempting herself from idle GPU reclaim, directly or through an admin's browser;
- a user writing GPU utilisation readings (to look busy, or to make another user's
  session look idle for reclaim): the quota service reads them from NVML or Slurm itself
  and has no API that writes them, so each forged write is 404/405.
"""

import re

import pytest
import requests

from tests.integration.hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

QUOTA = """
[quota.accounts.default]
cpu_hours = 1000
[quota.accounts.physics]
cpu_hours = 100
managers = ["mara"]
[quota.accounts.chem]
cpu_hours = 50
managers = ["cole"]
[quota.users.uma]
account = "physics"
[quota.users.mara]
account = "physics"
[quota.users.vic]
account = "chem"
[quota.users.cole]
account = "chem"
[quota.reclaim]
exempt = ["vic"]
"""


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), quota=QUOTA) as h:
        for name in ("uma", "mara", "vic", "cole"):
            h.new_user(name)
        yield h


def get(hub, path: str, token: str) -> requests.Response:
    return requests.get(
        f"{hub.url}/services/quota/api/v1/{path}",
        headers={"Authorization": f"token {token}"}, timeout=30,
    )  # fmt: skip


def set_cap(hub, token: str, account: str, user: str, hours) -> requests.Response:
    return requests.post(
        f"{hub.url}/services/quota/api/v1/accounts/{account}/caps",
        json={"user": user, "resource": "cpu_hours", "hours": hours},
        headers={"Authorization": f"token {token}"}, timeout=30,
    )  # fmt: skip


def cap_of(hub, user: str):
    """The user's personal cpu_hours cap as the ledger has it (read as an admin)."""
    personal = get(hub, f"users/{user}", hub.admin_token()).json()["resources"]["cpu_hours"]
    return personal["personal"]["allocated"] if personal["personal"] else None


def test_a_user_reads_only_their_own_usage(hub):
    vic = hub.token_for("vic")
    assert get(hub, "usage/daily", vic).status_code == 200
    for path in (
        "usage/daily?user=uma",
        "usage/daily?account=physics",
        "usage/daily?account=chem",  # his own account, but he doesn't manage it
        "accounts/physics/burn",
        "accounts/chem/burn",
        "estate",
        "estate?format=csv",
        "usage/gpus?user=uma",
    ):
        r = get(hub, path, vic)
        assert r.status_code == 403, (path, r.status_code, r.text)
    r = set_cap(hub, vic, "chem", "vic", 50)  # lifting his own cap
    assert r.status_code == 403, r.text
    assert cap_of(hub, "vic") is None


def test_a_manager_cannot_reach_past_their_account(hub):
    mara = hub.token_for("mara")
    assert get(hub, "usage/daily?user=uma", mara).status_code == 200  # her member
    assert get(hub, "accounts/physics/burn", mara).status_code == 200
    for path in ("usage/daily?user=vic", "usage/daily?account=chem", "accounts/chem/burn"):
        r = get(hub, path, mara)
        assert r.status_code == 403, (path, r.status_code, r.text)
    # a cap in another account, through that account or through her own
    for account in ("chem", "physics"):
        r = set_cap(hub, mara, account, "vic", 0)
        assert r.status_code == 403, (account, r.text)
    assert cap_of(hub, "vic") is None
    # a cap above the pool (100 cpu_hours): refused, naming the pool
    r = set_cap(hub, mara, "physics", "uma", 101)
    assert r.status_code == 400, r.text
    assert "more than the pool of the account physics, 100 cpu_hours" in r.json()["message"]
    assert cap_of(hub, "uma") is None
    # within the pool: set, and it binds her balance
    r = set_cap(hub, mara, "physics", "uma", 10)
    assert r.status_code == 200, r.text
    assert cap_of(hub, "uma") == 10
    assert r.json()["resources"]["cpu_hours"]["remaining"] <= 10


def manager_browser(
    hub, name: str, password: str = "correct-horse-9"
) -> tuple[requests.Session, str]:
    """The manager's browser after opening the usage page: its cookies and the page's token."""
    s = hub.login(name, password)
    r = s.get(f"{hub.url}/services/quota/", headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 200, r.text
    xsrf = re.search(r'data-xsrf="([^"]+)"', r.text)
    assert xsrf, r.text[:2000]
    return s, xsrf.group(1)


def test_cross_site_cap_post_without_xsrf_is_refused(hub):
    browser, xsrf = manager_browser(hub, "cole")
    url = f"{hub.url}/services/quota/api/v1/accounts/chem/caps"
    body = {"user": "vic", "resource": "cpu_hours", "hours": 1}
    # what a page on another site can make the manager's browser send: cookies, no token
    r = browser.post(url, json=body, timeout=30)
    assert r.status_code in (401, 403), r.text
    r = browser.post(url, json=body, headers={"Authorization": "token bogus"}, timeout=30)
    assert r.status_code in (401, 403), r.text
    assert cap_of(hub, "vic") is None
    # the page itself sends its token: the same post is accepted
    r = browser.post(url, json=body, headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 200, r.text
    assert cap_of(hub, "vic") == 1


def post_request(hub, token: str, path: str, body: dict) -> requests.Response:
    return requests.post(
        f"{hub.url}/services/quota/api/v1/{path}", json=body,
        headers={"Authorization": f"token {token}"}, timeout=30,
    )  # fmt: skip


def test_requests_for_more_stay_in_their_account_and_nobody_decides_their_own(hub):
    """uma (physics) asks for more; vic (a chem user), cole (chem's manager) and uma herself
    try to read and decide it; mara (physics' manager) tries to approve her own request and
    to approve uma's from a page on another site (her cookie, no XSRF token)."""
    uma, vic, cole, mara = (hub.token_for(n) for n in ("uma", "vic", "cole", "mara"))
    ask = {"resource": "gpu_hours", "hours": 5, "reason": "a deadline"}
    r = post_request(hub, uma, "requests", ask)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    r = post_request(hub, mara, "requests", ask)
    assert r.status_code == 201, r.text
    maras = r.json()["id"]

    for stranger in (vic, cole):
        seen = get(hub, "requests?state=all", stranger).json()
        assert seen == {"mine": [], "to_decide": []}, seen
    for who in (vic, cole, uma):
        for decision in ("approve", "decline"):
            r = post_request(hub, who, f"requests/{rid}/{decision}", {"reason": "x"})
            assert r.status_code == 404, (decision, r.status_code, r.text)
    assert get(hub, "requests", uma).json()["to_decide"] == []
    for odd in ("abc", "9999", "-1"):  # no such request: the same 404, never a 500
        r = post_request(hub, mara, f"requests/{odd}/approve", {"reason": "x"})
        assert r.status_code == 404, (odd, r.status_code, r.text)

    r = post_request(hub, mara, f"requests/{maras}/approve", {"reason": "mine"})
    assert r.status_code == 403, r.text
    assert "your own request" in r.json()["message"]

    browser, xsrf = manager_browser(hub, "mara")
    url = f"{hub.url}/services/quota/api/v1/requests/{rid}/approve"
    r = browser.post(url, json={"reason": "forged"}, timeout=30)
    assert r.status_code in (401, 403), r.text

    # nothing was decided, nothing granted
    states = {
        q["id"]: q["state"] for q in get(hub, "requests", hub.admin_token()).json()["to_decide"]
    }
    assert states == {rid: "open", maras: "open"}
    assert get(hub, "grants", hub.admin_token()).json() == []
    # the page's own token decides it
    r = browser.post(url, json={"reason": "fine"}, headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 200, r.text


def test_only_admins_set_managers(hub):
    """uma makes herself a manager of her account, mara (its manager) makes uma one, cole
    (chem's manager) makes himself one of physics: all refused; an admin's change holds."""
    tokens = {n: hub.token_for(n) for n in ("uma", "mara", "cole")}

    def set_manager(token, account, user, manager=True):
        return post_request(hub, token, f"accounts/{account}/managers",
                            {"user": user, "manager": manager})  # fmt: skip

    for who, account, user in (
        ("uma", "physics", "uma"), ("mara", "physics", "uma"), ("cole", "physics", "cole"),
        ("mara", "chem", "mara"), ("cole", "chem", "mara"),
    ):  # fmt: skip
        r = set_manager(tokens[who], account, user)
        assert r.status_code == 403, (who, account, user, r.status_code, r.text)
    assert get(hub, "accounts/physics/burn", tokens["uma"]).status_code == 403
    assert get(hub, "accounts/physics/managers", hub.admin_token()).json()["managers"] == ["mara"]

    admin = hub.admin_token()
    r = set_manager(admin, "physics", "uma")
    assert r.status_code == 200, r.text
    assert r.json()["managers"] == ["mara", "uma"]
    assert get(hub, "accounts/physics/burn", tokens["uma"]).status_code == 200
    assert get(hub, "accounts/chem/burn", tokens["uma"]).status_code == 403
    assert set_manager(admin, "physics", "uma", False).status_code == 200
    assert get(hub, "accounts/physics/burn", tokens["uma"]).status_code == 403
    r = set_manager(admin, "physics", "mara", False)  # a manager from the config
    assert r.status_code == 400, r.text
    assert "[quota.accounts.physics] managers" in r.json()["message"]


def test_nobody_writes_gpu_utilisation_through_the_quota_api(hub):
    """Readings come only from the platform's own reading of the GPUs (quota/
    gpu_readings.py): no API takes one, from a user or even an admin. Seen red with a POST
    on usage/gpus that recorded its body (201)."""
    reading = {"consumer": "lab:uma/@1", "user": "uma", "at": 1, "percent": 99}
    for token in (hub.token_for("uma"), hub.admin_token()):
        for method, path in [
            ("POST", "usage/gpus"), ("PUT", "usage/gpus"), ("PATCH", "usage/gpus"),
            ("POST", "usage/gpus?user=uma"), ("POST", "utilisation"),
            ("POST", "usage/gpus/samples"), ("POST", "consumers/lab:uma%2F@1/utilisation"),
        ]:  # fmt: skip
            r = requests.request(
                method, f"{hub.url}/services/quota/api/v1/{path}", json=reading,
                headers={"Authorization": f"token {token}"}, timeout=30,
            )  # fmt: skip
            assert r.status_code in (404, 405), (method, path, r.status_code, r.text)
    assert get(hub, "usage/gpus", hub.token_for("uma")).json()["sessions"] == []
    # and the API's own description offers no way to
    spec = get(hub, "openapi.json", hub.admin_token()).json()
    writes = [
        (path, method)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("post", "put", "patch") and ("gpu" in path or "utilis" in path)
    ]
    assert writes == []


def test_only_admins_exempt_users_from_idle_gpu_reclaim(hub):
    """uma exempts herself from idle GPU reclaim, mara (her account's manager) exempts her:
    refused (seen red with ReclaimExemptHandler.post taking any caller: 200); a page on
    another site makes the admin's browser post it (its cookie, no XSRF token): refused.
    The admin's own page's post holds; the config's exempt user (vic) stays."""
    admin = hub.admin_token()

    def set_exempt(token, user, exempt=True):
        return post_request(hub, token, "reclaim/exempt", {"user": user, "exempt": exempt})

    for who in ("uma", "mara"):
        token = hub.token_for(who)
        r = set_exempt(token, "uma")
        assert r.status_code == 403, (who, r.status_code, r.text)
        assert get(hub, "reclaim/exempt", token).status_code == 403
    before = {"exempt": ["vic"], "from_config": ["vic"]}
    assert get(hub, "reclaim/exempt", admin).json() == before

    browser, xsrf = manager_browser(hub, ADMIN, hub.password_of_admin())
    page = browser.get(f"{hub.url}/services/quota/", headers={"Accept": "text/html"}, timeout=60)
    assert 'id="sz-reclaim-exempt"' in page.text  # the admin's view has the list to edit
    uma_page = hub.login("uma", "correct-horse-9").get(
        f"{hub.url}/services/quota/", headers={"Accept": "text/html"}, timeout=60
    )
    assert uma_page.status_code == 200 and 'id="sz-reclaim-exempt"' not in uma_page.text
    url = f"{hub.url}/services/quota/api/v1/reclaim/exempt"
    r = browser.post(url, json={"user": "uma", "exempt": True}, timeout=30)
    assert r.status_code in (401, 403), r.text
    assert get(hub, "reclaim/exempt", admin).json() == before

    r = browser.post(url, json={"user": "uma", "exempt": True}, headers={"X-XSRFToken": xsrf},
                     timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["exempt"] == ["uma", "vic"]
    r = set_exempt(admin, "vic", False)  # exempt in the config
    assert r.status_code == 400, r.text
    assert "[quota.reclaim] exempt" in r.json()["message"]
    assert set_exempt(admin, "uma", False).json()["exempt"] == ["vic"]
    r = set_exempt(admin, "nobody-here")
    assert r.status_code == 400 and "nobody-here" in r.json()["message"], r.text
