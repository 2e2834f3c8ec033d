"""OpenID Connect sign-in against a real provider (node + oidc-provider on 127.0.0.1):
the full authorization-code flow over HTTP, claims mapped to the quota account (and
followed when they change), a user of a disallowed group refused with a message saying so,
admin groups, a provider that is down, and no secret in the hub's log.
"""

from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.oidc_provider import OidcProvider

from .hub import ADMIN, RunningHub, workdir

pytestmark = pytest.mark.integration

SITE = "Test Workbench"


def account(password: str, groups: list[str], **claims) -> dict:
    return {"password": password, "claims": {"groups": groups, **claims}}


ACCOUNTS = {
    ADMIN: account("admin-Pw-3301", ["hubadmins"]),
    "alice": account("alice-Pw-7341", ["tsinghua"], schac_home_organization="tsinghua.edu.cn"),
    "bob": account("bob-Pw-1185", ["pku"], schac_home_organization="math.pku.edu.cn"),
    "carol": account("carol-Pw-9902", ["visitors"], schac_home_organization="example.com"),
    "dave": account("dave-Pw-4417", ["pku"]),  # no institution claim: the fallback
    "erin": account("erin-Pw-6063", ["pku", "hubadmins"], schac_home_organization="pku.edu.cn"),
    # another person who calls herself alice (preferred_username is hers to choose)
    "mallory": account("mallory-Pw-5150", ["tsinghua"], preferred_username="alice"),
    # a provider's usual sub: not a portable user name
    "Frank.Li@example.org": account("frank-Pw-2207", ["pku"], preferred_username="frank"),
}
PASSWORDS = {name: a["password"] for name, a in ACCOUNTS.items()}

QUOTA = """
default_account = "default"
[quota.accounts.default]
[quota.accounts.tsinghua]
gpu_hours = 100
[quota.accounts.pku]
gpu_hours = 50
[quota.accounts.guests]
gpu_hours = 1
"""


def oidc_toml(issuer: str, secret_line: str = 'client_secret_file = "oidc-client-secret"') -> str:
    return f"""
[auth]
kind = "oidc"
[auth.oidc]
issuer = "{issuer}"
display_name = "Test SSO"
client_id = "workbench"
{secret_line}
scopes = ["openid", "profile", "email", "groups", "institution"]
allowed_groups = ["tsinghua", "pku"]
admin_groups = ["hubadmins"]
[auth.institution]
source = "schac_home_organization"
fallback = "guests"
rules = [
  {{ match = "tsinghua.edu.cn", account = "tsinghua" }},
  {{ pattern = "(.+\\\\.)?pku\\\\.edu\\\\.cn", account = "pku" }},
]
"""


def start_oidc_hub(base, logo: str = "") -> tuple[RunningHub, OidcProvider]:
    """A provider and a hub signing in with it (the admin's token already taken)."""
    provider = OidcProvider(base / "oidc", {k: dict(v) for k, v in ACCOUNTS.items()})
    (base / "oidc-client-secret").write_text(provider.client_secret + "\n")
    # at DEBUG: test_no_secret_in_the_hub_log reads the log
    hub = RunningHub(base, extra_toml=oidc_toml(provider.issuer), quota=QUOTA, debug=True)
    if logo:  # [site] is RunningHub's first table: the logo goes into it
        text = hub.config.read_text()
        hub.config.write_text(text.replace("[site]\n", f"[site]\nlogo = {logo!r}\n", 1))
    provider.start(hub.url)
    try:
        hub.start()
        s, r = provider.login(hub.url, ADMIN, PASSWORDS[ADMIN])
        assert r.status_code == 302, r.text
        token = s.post(
            f"{hub.url}/hub/api/users/{ADMIN}/tokens",
            json={"note": "tests"},
            headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/hub/")},
            timeout=30,
        )
        assert token.status_code == 201, token.text
        hub._admin_token = token.json()["token"]  # RunningHub's admin calls use it
    except BaseException:
        hub.stop()
        provider.stop()
        raise
    return hub, provider


@pytest.fixture(scope="module")
def oidc():
    base = workdir()
    hub, provider = start_oidc_hub(base)
    try:
        yield hub, provider
    finally:
        try:
            hub.cleanup()
        finally:
            provider.stop()
            shutil.rmtree(base, ignore_errors=True)


def login(oidc, name: str) -> requests.Response:
    hub, provider = oidc
    _, r = provider.login(hub.url, name, PASSWORDS[name])
    return r


def quota_me(hub: RunningHub, name: str) -> dict:
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/me",
        headers={"Authorization": f"token {hub.token_for(name)}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_login_page_offers_the_provider(oidc):
    hub, _ = oidc
    r = requests.get(f"{hub.url}/hub/login", timeout=30)
    assert r.status_code == 200
    assert f'<h1 id="sz-site-name" class="mt-3">{SITE}</h1>' in r.text
    assert "Sign in with Test SSO" in r.text


def test_authorization_code_flow_maps_the_claim_to_the_account(oidc):
    hub, _ = oidc
    r = login(oidc, "alice")
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/hub/")
    user = hub.api("GET", "/users/alice").json()
    assert (user["groups"], user["admin"]) == (["tsinghua"], False)
    assert quota_me(hub, "alice")["account"] == "tsinghua"

    assert login(oidc, "bob").status_code == 302  # math.pku.edu.cn: the pattern
    assert hub.api("GET", "/users/bob").json()["groups"] == ["pku"]


def test_users_are_keyed_on_sub_not_on_the_name_they_choose(oidc):
    """preferred_username is neither unique nor stable: mallory, who calls herself alice,
    gets a hub user of her own (her `sub`), never alice's sessions, files or quota; a `sub`
    that can't be a user name becomes a stable name derived from it."""
    hub, _ = oidc
    assert login(oidc, "alice").status_code == 302
    alice_token = hub.token_for("alice")
    assert login(oidc, "mallory").status_code == 302
    assert hub.api("GET", "/users/mallory").status_code == 200
    assert hub.api("GET", "/users/alice", token=alice_token).json()["name"] == "alice"
    names = {u["name"] for u in hub.api("GET", "/users").json()}
    assert "mallory" in names
    # the odd sub: the same derived name at every login, the display name kept
    assert login(oidc, "Frank.Li@example.org").status_code == 302
    derived = sorted(names ^ {u["name"] for u in hub.api("GET", "/users").json()})
    assert len(derived) == 1 and derived[0].startswith("x-"), derived
    assert login(oidc, "Frank.Li@example.org").status_code == 302
    assert len({u["name"] for u in hub.api("GET", "/users").json()} - names) == 1


def test_no_institution_claim_means_the_fallback_account(oidc):
    hub, _ = oidc
    assert login(oidc, "dave").status_code == 302
    assert hub.api("GET", "/users/dave").json()["groups"] == ["guests"]
    assert quota_me(hub, "dave")["account"] == "guests"


def test_a_disallowed_group_is_refused_saying_why(oidc):
    hub, _ = oidc
    r = login(oidc, "carol")
    assert r.status_code == 403
    assert f"carol is not allowed on {SITE}: your Test SSO account is not in a group" in r.text
    assert hub.api("GET", "/users/carol", ok=(404,)).status_code == 404


def test_admin_group_makes_an_admin(oidc):
    hub, provider = oidc
    assert login(oidc, "erin").status_code == 302
    assert hub.api("GET", "/users/erin").json()["admin"] is True
    provider.set_claims("erin", groups=["pku"])
    assert login(oidc, "erin").status_code == 302
    assert hub.api("GET", "/users/erin").json()["admin"] is False


def test_a_user_whose_institution_changes_is_charged_to_the_new_account(oidc):
    hub, provider = oidc
    assert login(oidc, "bob").status_code == 302
    assert quota_me(hub, "bob")["account"] == "pku"
    provider.set_claims("bob", schac_home_organization="tsinghua.edu.cn", groups=["tsinghua"])
    assert login(oidc, "bob").status_code == 302
    assert hub.api("GET", "/users/bob").json()["groups"] == ["tsinghua"]
    me = quota_me(hub, "bob")
    assert me["account"] == "tsinghua"
    assert me["resources"]["gpu_hours"]["account"]["allocated"] == 100


def test_leaving_the_allowed_groups_locks_the_user_out(oidc):
    hub, provider = oidc
    assert login(oidc, "dave").status_code == 302
    provider.set_claims("dave", groups=["visitors"])
    assert login(oidc, "dave").status_code == 403


def test_provider_down_during_a_login_is_a_clear_error(oidc):
    hub, provider = oidc
    s, callback = provider.to_callback(hub.url, "alice", PASSWORDS["alice"])
    provider.stop()
    try:
        r = s.get(callback, allow_redirects=False, timeout=30)
        assert r.status_code == 503
        assert f"{SITE} can&#39;t reach Test SSO right now" in r.text
        assert requests.get(f"{hub.url}/hub/api", timeout=10).status_code == 200
    finally:
        provider.start(hub.url)
    assert login(oidc, "alice").status_code == 302


def test_no_secret_in_the_hub_log(oidc):
    hub, provider = oidc
    codes = []
    for name, status in [("alice", 302), ("carol", 403)]:  # a login, and a refusal
        s, callback = provider.to_callback(hub.url, name, PASSWORDS[name])
        codes += parse_qs(urlparse(callback).query)["code"]
        assert s.get(callback, allow_redirects=False, timeout=30).status_code == status
    log = hub.log.read_text(errors="replace")
    assert "[D " in log  # the hub logs at DEBUG: secrets stay out of that too
    assert "alice signs in, charged to account tsinghua" in log
    assert "User 'carol' not allowed." in log
    assert provider.client_secret not in log
    for secret in [*PASSWORDS.values(), *codes]:
        assert secret not in log


def test_hub_refuses_to_start_when_the_issuer_is_unreachable():
    base = workdir()
    (base / "oidc-client-secret").write_text("whatever\n")
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    hub = RunningHub(base, extra_toml=oidc_toml(dead), quota=QUOTA)
    try:
        with pytest.raises(RuntimeError) as failed:
            hub.start(timeout=60)
        assert (
            f"auth.oidc.issuer: can't read {dead}/.well-known/openid-configuration"
            in str(failed.value)
        )
    finally:
        hub.stop()
        shutil.rmtree(base, ignore_errors=True)
