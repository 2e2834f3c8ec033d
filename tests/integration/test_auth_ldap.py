"""LDAP sign-in against a real slapd: right and wrong passwords, users outside the allowed
groups, admin groups, the institution deciding the quota account at every login (a user
moved between groups is charged to the new one), a directory that is down, and no password
in the hub's log.

The directory: two institutions (groups tsinghua and pku), a partner group with no account
rule (fallback account), visitors (not allowed here) and hub admins.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import ldap3
import pytest
import requests
from traitlets.config import Config

from shangzhuang.hub.signin import (
    LoginAttempt,
    WorkbenchLDAPAuthenticator,
    _attempt,
    configure_signin,
)
from shangzhuang.quota import ledger_file
from shangzhuang.settings import load_settings
from tests.slapd import GROUPS, PEOPLE, ROOT_DN, Slapd, ensure_slapd, make_certificates

from .hub import ADMIN, ADMIN_PASSWORD, RunningHub, workdir
from .test_error_pages import LogWatch

pytestmark = pytest.mark.integration

PASSWORDS = {
    ADMIN: ADMIN_PASSWORD,
    "alice": "alice-Pw-7341",
    "bob": "bob-Pw-1185",
    "carol": "carol-Pw-9902",
    "dave": "dave-Pw-4417",
    "erin": "erin-Pw-6063",
}
WRONG = "Wr0ng-Guess-5521"
SITE = "Test Workbench"

QUOTA = """
default_account = "default"
[quota.accounts.default]
[quota.accounts.tsinghua]
gpu_hours = 100
[quota.accounts.pku]
gpu_hours = 50
[quota.accounts.partners]
gpu_hours = 5
"""


def group(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


@pytest.fixture(scope="module")
def slapd():
    ensure_slapd()
    base = workdir()
    server = Slapd(base / "ldap")
    server.start()
    try:
        server.seed()
        server.add_user(ADMIN, PASSWORDS[ADMIN])
        server.add_user("alice", PASSWORDS["alice"], o="tsinghua.edu.cn")
        server.add_user("bob", PASSWORDS["bob"], o="pku.edu.cn")
        server.add_user("carol", PASSWORDS["carol"], o="example.com")
        server.add_user("dave", PASSWORDS["dave"], o="partner.example")
        server.add_user("erin", PASSWORDS["erin"], o="math.pku.edu.cn")
        server.add_group("tsinghua", "alice")
        server.add_group("pku", "bob", "erin")
        server.add_group("partners", "dave")
        server.add_group("visitors", "carol")
        server.add_group("hubadmins", "erin")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def ldap_toml(server: Slapd) -> str:
    # Rules by exact DN (any case, spaces after commas) and by pattern.
    return f"""
[auth]
kind = "ldap"
[auth.ldap]
server = "127.0.0.1"
port = {server.port}
tls = "plain"
timeout_seconds = 2
bind_dn_template = ["uid={{username}},ou=people,dc=example,dc=org"]
group_search_base = "{GROUPS}"
allowed_groups = ["{group('tsinghua')}", "CN=pku, ou=groups, dc=example, dc=org",
                  "{group('partners')}"]
admin_groups = ["{group('hubadmins')}"]
[auth.institution]
source = "groups"
fallback = "partners"
rules = [
  {{ match = "CN=Tsinghua,OU=groups,DC=example,DC=org", account = "tsinghua" }},
  {{ pattern = "cn=pku,.*", account = "pku" }},
]
"""


@pytest.fixture(scope="module")
def hub(slapd):
    with RunningHub(workdir(), extra_toml=ldap_toml(slapd), quota=QUOTA) as h:
        yield h


def quota_me(hub: RunningHub, name: str) -> dict:
    token = hub.token_for(name)
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/me",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def hub_user(hub: RunningHub, name: str) -> dict:
    return hub.api("GET", f"/users/{name}").json()


def test_login_page_shows_the_site_name(hub):
    r = requests.get(f"{hub.url}/hub/login", timeout=30)
    assert r.status_code == 200
    assert f'<h1 id="sz-site-name" class="mt-3">{SITE}</h1>' in r.text
    assert 'id="username_input"' in r.text


def test_right_password_signs_in_charged_to_the_institution(hub):
    s = hub.login("alice", PASSWORDS["alice"])
    assert s.get(f"{hub.url}/hub/home", timeout=30).status_code == 200
    user = hub_user(hub, "alice")
    assert user["groups"] == ["tsinghua"]
    assert user["admin"] is False
    assert quota_me(hub, "alice")["account"] == "tsinghua"


def test_wrong_password_says_so(hub):
    _, r = hub.try_login("alice", WRONG)
    assert r.status_code == 403
    assert "Wrong username or password." in r.text
    assert "not allowed" not in r.text
    _, r = hub.try_login("nobody", WRONG)  # not in the directory at all
    assert r.status_code == 403
    assert "Wrong username or password." in r.text


def test_expired_login_form_shows_the_form_again(hub):
    """As with native sign-in (test_error_pages): the form again, saying so, and no error
    or warning in the hub log beyond the request's access line."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30)
    watch = LogWatch(hub)
    form = {"username": "alice", "password": PASSWORDS["alice"], "_xsrf": "2|x|y|1"}
    r = s.post(f"{hub.url}/hub/login", data=form, timeout=30, allow_redirects=False)
    assert r.status_code == 403
    assert "This form has expired" in r.text and 'id="username_input"' in r.text
    assert watch.clean_after("POST", "/hub/login") == []


def test_user_outside_the_allowed_groups_is_not_allowed(hub):
    _, r = hub.try_login("carol", PASSWORDS["carol"])
    assert r.status_code == 403
    assert f"carol is not allowed on {SITE}" in r.text
    assert "Wrong username or password" not in r.text
    assert hub.api("GET", "/users/carol", ok=(404,)).status_code == 404


def test_no_rule_matches_so_the_fallback_account(hub):
    hub.login("dave", PASSWORDS["dave"])
    assert hub_user(hub, "dave")["groups"] == ["partners"]
    assert quota_me(hub, "dave")["account"] == "partners"


def test_admin_group_members_are_admins_while_they_are_members(hub, slapd):
    hub.login("erin", PASSWORDS["erin"])
    user = hub_user(hub, "erin")
    assert user["admin"] is True
    assert user["groups"] == ["pku"]
    slapd.modify(group("hubadmins"), {"member": [(ldap3.MODIFY_DELETE, [f"uid=erin,{PEOPLE}"])]})
    hub.login("erin", PASSWORDS["erin"])
    assert hub_user(hub, "erin")["admin"] is False


def test_a_user_moved_between_institutions_is_charged_to_the_new_one(hub, slapd):
    hub.login("bob", PASSWORDS["bob"])
    assert hub_user(hub, "bob")["groups"] == ["pku"]
    assert quota_me(hub, "bob")["account"] == "pku"

    slapd.move_user("bob", "pku", "tsinghua")
    hub.login("bob", PASSWORDS["bob"])
    assert hub_user(hub, "bob")["groups"] == ["tsinghua"]
    me = quota_me(hub, "bob")
    assert me["account"] == "tsinghua"
    assert me["resources"]["gpu_hours"]["account"]["allocated"] == 100

    slapd.move_user("bob", "tsinghua", "pku")  # and back again
    hub.login("bob", PASSWORDS["bob"])
    assert quota_me(hub, "bob")["account"] == "pku"


def test_login_goes_ahead_while_the_quota_database_is_locked(hub):
    ledger = ledger_file(load_settings(hub.config))
    db = sqlite3.connect(ledger, timeout=1, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # as a long write elsewhere would hold it
    try:
        started = time.monotonic()
        _, r = hub.try_login("dave", PASSWORDS["dave"])
        assert r.status_code == 302
        assert time.monotonic() - started < 15  # the ledger gets 5 s, not the hub's 30 s
    finally:
        db.execute("ROLLBACK")
        db.close()
    # The hub asks the quota service (issue 16), which waits on the locked ledger.
    assert (
        "quota service unavailable at dave's login, account partners not recorded yet"
        in hub.log.read_text()
    )
    assert quota_me(hub, "dave")["account"] == "partners"


def test_directory_down_is_a_clear_error_and_the_hub_keeps_serving(hub, slapd):
    hub.admin_token()  # the admin's token outlives the directory
    slapd.stop()
    try:
        _, r = hub.try_login("alice", PASSWORDS["alice"])
        assert r.status_code == 503
        assert f"{SITE} can&#39;t reach the directory (LDAP) right now" in r.text
        assert requests.get(f"{hub.url}/hub/api", timeout=10).status_code == 200
        assert hub_user(hub, "alice")["name"] == "alice"  # the hub API still answers
        assert (
            f"LDAP server ldap://127.0.0.1:{slapd.port} (auth.ldap.server) can't be reached, "
            "login of alice refused" in hub.log.read_text()
        )
    finally:
        slapd.start()
    hub.login("alice", PASSWORDS["alice"])  # and back once the directory is


def test_no_password_in_the_hub_log(hub):
    hub.try_login("alice", WRONG)
    hub.login("alice", PASSWORDS["alice"])
    log = hub.log.read_text(errors="replace")
    assert "alice signs in, charged to account tsinghua" in log
    for secret in [*PASSWORDS.values(), WRONG]:
        assert secret not in log


# --- DN lookup, an attribute as the institution, the search password from a file -----


@pytest.fixture(scope="module")
def lookup_hub(slapd):
    base = workdir()
    secret = base / "ldap-search-password"
    secret.write_text(slapd.root_password + "\n")
    secret.chmod(0o600)
    toml = f"""
[auth]
kind = "ldap"
[auth.ldap]
server = "127.0.0.1"
port = {slapd.port}
tls = "plain"
user_search_base = "ou=people,dc=example,dc=org"
user_attribute = "uid"
search_user = "{ROOT_DN}"
search_password_file = "ldap-search-password"
allow_all = true
[auth.institution]
source = "o"
rules = [
  {{ match = "tsinghua.edu.cn", account = "tsinghua" }},
  {{ pattern = "(.+\\\\.)?pku\\\\.edu\\\\.cn", account = "pku" }},
]
"""
    with RunningHub(base, extra_toml=toml, quota=QUOTA, debug=True) as h:  # no secret at DEBUG
        yield h


def test_dn_lookup_and_an_attribute_decide_the_account(lookup_hub, slapd):
    hub = lookup_hub
    hub.login("erin", PASSWORDS["erin"])  # o = math.pku.edu.cn: the pattern
    assert hub_user(hub, "erin")["groups"] == ["pku"]
    hub.login("carol", PASSWORDS["carol"])  # allow_all; o = example.com: no rule
    assert quota_me(hub, "carol")["account"] == "default"
    _, r = hub.try_login("alice", WRONG)
    assert r.status_code == 403 and "Wrong username or password." in r.text

    hub.login("alice", PASSWORDS["alice"])
    assert quota_me(hub, "alice")["account"] == "tsinghua"
    slapd.modify(f"uid=alice,{PEOPLE}", {"o": [(ldap3.MODIFY_REPLACE, ["pku.edu.cn"])]})
    hub.login("alice", PASSWORDS["alice"])
    assert hub_user(hub, "alice")["groups"] == ["pku"]
    assert quota_me(hub, "alice")["account"] == "pku"

    log = hub.log.read_text(errors="replace")
    assert "[D " in log  # the hub logs at DEBUG: the search password stays out of that too
    for secret in [slapd.root_password, *PASSWORDS.values(), WRONG]:
        assert secret not in log


# --- LDAPS and StartTLS: the authenticator itself against a TLS slapd --------------------


@pytest.fixture(scope="module")
def tls_slapd():
    ensure_slapd()
    base = workdir()
    server = Slapd(base / "ldap", tls=True)
    server.start()
    try:
        server.seed()
        server.add_user("alice", PASSWORDS["alice"])
        server.add_group("tsinghua", "alice")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def tls_authenticator(folder: Path, server: Slapd, tls: str, ca_file: Path):
    port = server.ldaps_port if tls == "ldaps" else server.port
    text = f"""
[quota]
enabled = false
[quota.accounts.default]
[quota.accounts.tsinghua]
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
[auth]
kind = "ldap"
[auth.ldap]
server = "127.0.0.1"
port = {port}
tls = "{tls}"
ca_file = "{ca_file}"
bind_dn_template = ["uid={{username}},ou=people,dc=example,dc=org"]
group_search_base = "{GROUPS}"
allowed_groups = ["{group('tsinghua')}"]
[auth.institution]
rules = [{{ pattern = "cn=tsinghua,.*", account = "tsinghua" }}]
"""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.toml").write_text(text)
    c = Config()
    c.JupyterHub.template_vars = {}
    configure_signin(c, load_settings(folder / "site.toml"))
    return WorkbenchLDAPAuthenticator(config=c)


def sign_in(auth, name: str, password: str) -> tuple[dict | None, LoginAttempt]:
    """One login through the authenticator, as JupyterHub's login handler runs it."""

    async def go():
        attempt = LoginAttempt(username=name)
        _attempt.set(attempt)
        data = {"username": name, "password": password}
        return await auth.get_authenticated_user(None, data), attempt

    return asyncio.run(go())


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_tls_modes_verify_the_server_certificate(tls_slapd, tmp_path, tls):
    auth = tls_authenticator(tmp_path, tls_slapd, tls, tls_slapd.ca_file)
    user, _ = sign_in(auth, "alice", PASSWORDS["alice"])
    assert (user["name"], user["groups"]) == ("alice", ["tsinghua"])
    user, attempt = sign_in(auth, "alice", WRONG)
    assert (user, attempt.refusal) == (None, "password")

    other_ca, _, _ = make_certificates(tmp_path)  # a certificate the hub must not trust
    auth = tls_authenticator(tmp_path / "other", tls_slapd, tls, other_ca)
    user, attempt = sign_in(auth, "alice", PASSWORDS["alice"])
    assert (user, attempt.refusal) == (None, "unavailable")
