"""`shangzhuang check` on the sign-in sections: `[auth.ldap]`, `[auth.oidc]`,
`[auth.institution]` and `site.logo`. Each broken file is a valid LDAP or OIDC config with
one thing changed; each problem names its key and why, and a secret written into the file
is refused without being echoed. Also: the institution rules, secrets read from files and
the environment, OIDC discovery, and what `configure` tells JupyterHub.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from traitlets.config import Config

from shangzhuang.hub.signin import configure_signin, discover, read_secret
from shangzhuang.settings import (
    DEFAULT_CONFIG,
    AccountRule,
    Institution,
    SettingsError,
    load_settings,
)

from .test_check import cli, edit, refusal, write

EXAMPLES = DEFAULT_CONFIG.parent / "examples"
BASE = """
[site]
name = "Test"
[hub]
state_dir = "state"
[quota.accounts.default]
[quota.accounts.tsinghua]
[quota.accounts.pku]
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
"""
LDAP = (
    BASE
    + """
[auth]
kind = "ldap"
[auth.ldap]
server = "ldap.example.org"
tls = "ldaps"
bind_dn_template = ["uid={username},ou=people,dc=example,dc=org"]
group_search_base = "ou=groups,dc=example,dc=org"
allowed_groups = ["cn=tsinghua,ou=groups,dc=example,dc=org"]
[auth.institution]
source = "groups"
fallback = "default"
rules = [{ match = "cn=tsinghua,ou=groups,dc=example,dc=org", account = "tsinghua" }]
"""
)
OIDC = (
    BASE
    + """
[auth]
kind = "oidc"
[auth.oidc]
issuer = "https://sso.example.org/realms/research"
client_id = "workbench"
client_secret_env = "SZ_TEST_OIDC_SECRET"
allowed_groups = ["tsinghua"]
[auth.institution]
source = "schac_home_organization"
rules = [{ pattern = "(.+\\\\.)?pku\\\\.edu\\\\.cn", account = "pku" }]
"""
)
SECRET = "s3cr3t-never-echoed"
CLIENT_SECRET_HINT = (
    "auth.oidc.client_secret: a secret never goes in the config file; use client_secret_file "
    "(a file only the hub's account can read) or client_secret_env (an environment variable)"
)

# (id, file content, the problems reported)
BROKEN: list[tuple[str, str, list[str]]] = [
    (
        "ldap-kind-without-section",
        BASE + '[auth]\nkind = "ldap"\n',
        ["auth.ldap: required when auth.kind = 'ldap'"],
    ),
    (
        "oidc-kind-without-section",
        BASE + '[auth]\nkind = "oidc"\n',
        ["auth.oidc: required when auth.kind = 'oidc'"],
    ),
    (
        "ldap-missing-server",
        edit('server = "ldap.example.org"\n', "", LDAP),
        ["auth.ldap.server: required key is missing"],
    ),
    (
        "ldap-unknown-tls",
        edit('tls = "ldaps"', 'tls = "ssl"', LDAP),
        ["auth.ldap.tls: input should be 'ldaps', 'starttls' or 'plain', got 'ssl'"],
    ),
    (
        "ldap-port-out-of-range",
        edit('tls = "ldaps"', 'tls = "ldaps"\nport = 0', LDAP),
        ["auth.ldap.port: Input should be greater than or equal to 1"],
    ),
    (
        "ldap-template-without-username",
        edit("uid={username},ou=people", "uid=alice,ou=people", LDAP),
        [
            "auth.ldap.bind_dn_template: 'uid=alice,ou=people,dc=example,dc=org' has no "
            "{username} in it"
        ],
    ),
    (
        "ldap-template-and-lookup",
        edit('tls = "ldaps"', 'tls = "ldaps"\nuser_search_base = "ou=people,dc=x"', LDAP),
        [
            "auth.ldap: set exactly one of bind_dn_template (users' DNs from their names) "
            "and user_search_base (DNs looked up in the directory)"
        ],
    ),
    (
        "ldap-neither-template-nor-lookup",
        edit('bind_dn_template = ["uid={username},ou=people,dc=example,dc=org"]\n', "", LDAP),
        [
            "auth.ldap: set exactly one of bind_dn_template (users' DNs from their names) "
            "and user_search_base (DNs looked up in the directory)"
        ],
    ),
    (
        "ldap-inline-search-password",
        edit('tls = "ldaps"', f'tls = "ldaps"\nsearch_password = "{SECRET}"', LDAP),
        [
            "auth.ldap.search_password: a secret never goes in the config file; use "
            "search_password_file (a file only the hub's account can read) or "
            "search_password_env (an environment variable)"
        ],
    ),
    (
        "ldap-search-user-without-password",
        edit(
            'bind_dn_template = ["uid={username},ou=people,dc=example,dc=org"]',
            'user_search_base = "ou=people,dc=example,dc=org"\nsearch_user = "cn=reader,dc=x"',
            LDAP,
        ),
        ["auth.ldap: set exactly one of search_password_file and search_password_env"],
    ),
    (
        "ldap-password-without-search-user",
        edit('tls = "ldaps"', 'tls = "ldaps"\nsearch_password_env = "LDAP_PW"', LDAP),
        ["auth.ldap.search_user: a search password is set but no search_user"],
    ),
    (
        "ldap-nobody-allowed",
        edit('allowed_groups = ["cn=tsinghua,ou=groups,dc=example,dc=org"]\n', "", LDAP),
        [
            "auth.ldap.allowed_groups: empty, so nobody could sign in; list the group DNs "
            "whose members may, or set allow_all = true to let everyone in the directory in"
        ],
    ),
    (
        "ldap-group-not-a-dn",
        edit(
            'allowed_groups = ["cn=tsinghua,ou=groups,dc=example,dc=org"]',
            'allowed_groups = ["tsinghua"]',
            LDAP,
        ),
        [
            "auth.ldap.allowed_groups: 'tsinghua' is not a DN such as "
            "'cn=staff,ou=groups,dc=example,dc=org'"
        ],
    ),
    (
        "ldap-groups-without-search-base",
        edit('group_search_base = "ou=groups,dc=example,dc=org"\n', "", LDAP),
        [
            "auth.ldap.group_search_base: needed to find users' groups (for allowed_groups, "
            "admin_groups or auth.institution.source = 'groups')"
        ],
    ),
    (
        "ldap-timeout-zero",
        edit('tls = "ldaps"', 'tls = "ldaps"\ntimeout_seconds = 0', LDAP),
        ["auth.ldap.timeout_seconds: Input should be greater than 0"],
    ),
    (
        "oidc-inline-client-secret",
        edit("client_id", f'client_secret = "{SECRET}"\nclient_id', OIDC),
        [CLIENT_SECRET_HINT],
    ),
    (
        "oidc-no-secret-source",
        edit('client_secret_env = "SZ_TEST_OIDC_SECRET"\n', "", OIDC),
        ["auth.oidc: set exactly one of client_secret_file and client_secret_env"],
    ),
    (
        "oidc-two-secret-sources",
        edit("client_id", 'client_secret_file = "/etc/secret"\nclient_id', OIDC),
        ["auth.oidc: set exactly one of client_secret_file and client_secret_env"],
    ),
    (
        "oidc-http-issuer",
        edit("https://sso.example.org", "http://sso.example.org", OIDC),
        ["auth.oidc.issuer: must be https:// (plain http only for a provider on localhost)"],
    ),
    (
        "oidc-issuer-not-a-url",
        edit('"https://sso.example.org/realms/research"', '"sso.example.org"', OIDC),
        [
            "auth.oidc.issuer: 'sso.example.org' is not an http(s) URL such as "
            "'https://sso.example.org'"
        ],
    ),
    (
        "oidc-scopes-without-openid",
        edit('client_id = "workbench"', 'client_id = "workbench"\nscopes = ["profile"]', OIDC),
        ["auth.oidc.scopes: must include 'openid'"],
    ),
    (
        "oidc-empty-client-id",
        edit('client_id = "workbench"', 'client_id = ""', OIDC),
        ["auth.oidc.client_id: String should have at least 1 character"],
    ),
    (
        "oidc-unknown-client-auth",
        edit('client_id = "workbench"', 'client_id = "workbench"\nclient_auth = "jwt"', OIDC),
        [
            "auth.oidc.client_auth: input should be 'client_secret_basic' or "
            "'client_secret_post', got 'jwt'"
        ],
    ),
    (
        "oidc-nobody-allowed",
        edit('allowed_groups = ["tsinghua"]\n', "", OIDC),
        [
            "auth.oidc.allowed_groups: empty, so nobody could sign in; list the groups whose "
            "members may, or set allow_all = true to let in everyone the provider signs in"
        ],
    ),
    (
        "oidc-unknown-key",
        edit('client_id = "workbench"', 'client_id = "workbench"\nclaim = "x"', OIDC),
        ["auth.oidc.claim: unknown key"],
    ),
    (
        "institution-with-native-sign-in",
        BASE + '[auth.institution]\nfallback = "default"\n',
        [
            "auth.institution: only used with auth.kind = 'ldap' or 'oidc' (with native "
            "sign-in an admin puts users in a hub group named like their account)"
        ],
    ),
    (
        "institution-rule-to-unknown-account",
        edit('account = "pku"', 'account = "peking"', OIDC),
        ["auth.institution.rules[0].account: 'peking' is not in quota.accounts"],
    ),
    (
        "institution-unknown-fallback",
        edit('fallback = "default"', 'fallback = "guests"', LDAP),
        ["auth.institution.fallback: 'guests' is not in quota.accounts"],
    ),
    (
        "institution-rule-match-and-pattern",
        edit('{ match = "cn=tsinghua', '{ pattern = "cn=.*", match = "cn=tsinghua', LDAP),
        ["auth.institution.rules[0]: set exactly one of match and pattern"],
    ),
    (
        "institution-rule-without-test",
        edit('{ match = "cn=tsinghua,ou=groups,dc=example,dc=org", ', "{ ", LDAP),
        ["auth.institution.rules[0]: set exactly one of match and pattern"],
    ),
    (
        "institution-rule-bad-pattern",
        edit('pattern = "(.+', 'pattern = "((.+', OIDC),
        [
            "auth.institution.rules[0].pattern: not a regular expression (missing ), "
            "unterminated subpattern at position 0)"
        ],
    ),
    (
        "institution-rule-without-account",
        edit(', account = "tsinghua"', "", LDAP),
        ["auth.institution.rules[0].account: required key is missing"],
    ),
    (
        "institution-empty-source",
        edit('source = "groups"', 'source = ""', LDAP),
        ["auth.institution.source: String should have at least 1 character"],
    ),
]
CASES = {case_id: (content, problems) for case_id, content, problems in BROKEN}


@pytest.mark.parametrize("case_id", list(CASES))
def test_broken_sign_in_config_names_key_and_reason(tmp_path, case_id):
    content, problems = CASES[case_id]
    path = write(tmp_path, content)
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    assert refused.value.problems == problems
    assert SECRET not in str(refused.value)


def test_every_case_is_different():
    assert len(CASES) == len(BROKEN)
    assert len({content for _, content, _ in BROKEN}) == len(BROKEN)


@pytest.mark.parametrize("base", [LDAP, OIDC], ids=["ldap", "oidc"])
def test_the_bases_are_valid(tmp_path, base):
    settings = load_settings(write(tmp_path, base))
    assert settings.auth.kind in ("ldap", "oidc")


def test_inline_secret_refused_by_the_cli_without_echoing_it(tmp_path):
    content, problems = CASES["oidc-inline-client-secret"]
    path = write(tmp_path / "conf", content)
    done = cli("check", str(path), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == refusal(path, problems)
    assert SECRET not in done.stderr


@pytest.mark.parametrize("example", ["ldap.toml", "oidc.toml", "slurm.toml"])
def test_cli_passes_the_shipped_examples(tmp_path, example):
    done = cli("check", str(EXAMPLES / example), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == f"ok: {EXAMPLES / example}\n"


def test_files_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "logo.svg").write_text("<svg/>")
    text = edit('name = "Test"', 'name = "Test"\nlogo = "logo.svg"', OIDC)
    text = edit('client_secret_env = "SZ_TEST_OIDC_SECRET"', 'client_secret_file = "secret"', text)
    settings = load_settings(write(tmp_path, text))
    assert settings.site.logo == tmp_path / "logo.svg"
    assert settings.auth.oidc.client_secret_file == tmp_path / "secret"


def test_a_missing_logo_is_named(tmp_path):
    path = write(tmp_path, edit('name = "Test"', 'name = "Test"\nlogo = "nope.png"', LDAP))
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    assert refused.value.problems == [f"site.logo: no such file {str(tmp_path / 'nope.png')!r}"]


def test_dns_are_tidied_for_ldap3(tmp_path):
    text = edit(
        'allowed_groups = ["cn=tsinghua,ou=groups,dc=example,dc=org"]',
        'allowed_groups = ["CN = Tsinghua, ou=groups, dc=example, dc=org"]',
        LDAP,
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.auth.ldap.allowed_groups == ["CN=Tsinghua,ou=groups,dc=example,dc=org"]


# --- institution -> account ---------------------------------------------------------------


def test_first_matching_rule_wins_else_the_fallback():
    institution = Institution(
        source="groups",
        rules=[
            AccountRule(match="CN=Tsinghua,ou=groups,dc=example,dc=org", account="tsinghua"),
            AccountRule(pattern=r"(.+\.)?pku\.edu\.cn", account="pku"),
            AccountRule(pattern=r".*", account="catch-all"),
        ],
        fallback="guests",
    )
    assert institution.account_for(["cn=tsinghua,ou=groups,dc=example,dc=org"], "d") == "tsinghua"
    assert institution.account_for(["math.PKU.edu.cn"], "d") == "pku"
    assert institution.account_for(["pku.edu.cn.evil.org"], "d") == "catch-all"  # whole value
    assert institution.account_for([], "d") == "guests"
    assert Institution().account_for(["anything"], "default") == "default"


# --- secrets ------------------------------------------------------------------------------


def test_secret_from_a_file_or_the_environment(tmp_path, monkeypatch):
    f = tmp_path / "secret"
    f.write_text(" abc \n")
    assert read_secret("auth.oidc.client_secret", f, None) == "abc"
    monkeypatch.setenv("SZ_SECRET", "from-env")
    assert read_secret("auth.oidc.client_secret", None, "SZ_SECRET") == "from-env"


def test_missing_secrets_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("SZ_SECRET", raising=False)
    with pytest.raises(
        ValueError,
        match=r"^auth.oidc.client_secret_env: the environment "
        r"variable SZ_SECRET is not set$",
    ):
        read_secret("auth.oidc.client_secret", None, "SZ_SECRET")
    with pytest.raises(
        ValueError,
        match=r"^auth.oidc.client_secret_file: can't read .* "
        r"\(No such file or directory\)$",
    ):
        read_secret("auth.oidc.client_secret", tmp_path / "nope", None)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"^auth.oidc.client_secret_file: .* is empty$"):
        read_secret("auth.oidc.client_secret", tmp_path / "empty", None)


# --- OIDC discovery -----------------------------------------------------------------------


@pytest.fixture
def discovery_server():
    """A tiny HTTP server whose well-known document the test sets."""
    docs: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = docs.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    issuer = f"http://127.0.0.1:{server.server_port}"
    yield issuer, docs
    server.shutdown()
    server.server_close()


WELL_KNOWN = "/.well-known/openid-configuration"


def provider_doc(issuer: str) -> bytes:
    return json.dumps(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/auth",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/me",
        }
    ).encode()


def test_discovery_finds_the_endpoints(discovery_server):
    issuer, docs = discovery_server
    docs[WELL_KNOWN] = (200, provider_doc(issuer))
    assert discover(issuer) == {
        "authorization_endpoint": f"{issuer}/auth",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/me",
    }


def test_discovery_errors_name_the_issuer_setting(discovery_server):
    issuer, docs = discovery_server
    url = f"{issuer}{WELL_KNOWN}"
    with pytest.raises(ValueError) as e:
        discover(issuer)
    assert str(e.value) == f"auth.oidc.issuer: {url} answered 404 Not Found"
    docs[WELL_KNOWN] = (200, b"<html>")
    with pytest.raises(ValueError) as e:
        discover(issuer)
    assert str(e.value) == f"auth.oidc.issuer: {url} is not a JSON document"
    docs[WELL_KNOWN] = (200, provider_doc("https://elsewhere.example"))
    with pytest.raises(ValueError) as e:
        discover(issuer)
    assert str(e.value) == (
        f"auth.oidc.issuer: {url} names another issuer ('https://elsewhere.example')"
    )
    with pytest.raises(ValueError) as e:
        discover("http://127.0.0.1:9", timeout=2)  # nothing listens on the discard port
    assert str(e.value).startswith(
        "auth.oidc.issuer: can't read http://127.0.0.1:9/.well-known/openid-configuration ("
    )


# --- what configure tells JupyterHub ----------------------------------------------------


def configured(settings) -> Config:
    c = Config()
    c.JupyterHub.template_vars = {}
    configure_signin(c, settings)
    return c


def test_configure_ldap(tmp_path):
    c = configured(load_settings(write(tmp_path, LDAP)))
    a = c.WorkbenchLDAPAuthenticator
    assert c.JupyterHub.authenticator_class.__name__ == "WorkbenchLDAPAuthenticator"
    assert c.Authenticator.manage_groups is True
    assert (a.tls_strategy, a.server_port) == ("on_connect", 636)
    assert a.bind_dn_template == ["uid={username},ou=people,dc=example,dc=org"]
    assert a.allowed_groups == ["cn=tsinghua,ou=groups,dc=example,dc=org"]
    assert a.account_rules == [
        {"match": "cn=tsinghua,ou=groups,dc=example,dc=org", "account": "tsinghua"}
    ]
    assert (a.fallback_account, a.site_name) == ("default", "Test")


def test_configure_oidc_discovers_and_reads_the_secret(tmp_path, discovery_server, monkeypatch):
    issuer, docs = discovery_server
    docs[WELL_KNOWN] = (200, provider_doc(issuer))
    monkeypatch.setenv("SZ_TEST_OIDC_SECRET", SECRET)
    text = edit("https://sso.example.org/realms/research", issuer, OIDC)
    c = configured(load_settings(write(tmp_path, text)))
    a = c.WorkbenchOIDCAuthenticator
    assert (a.authorize_url, a.token_url, a.userdata_url) == (
        f"{issuer}/auth", f"{issuer}/token", f"{issuer}/me",
    )  # fmt: skip
    assert a.client_secret == SECRET
    assert a.basic_auth is True
    assert a.auth_state_groups_key == "oauth_user.groups"
    assert a.allowed_groups == {"tsinghua"}
    assert a.account_source == "schac_home_organization"
    assert a.fallback_account == "default"  # quota.default_account


def test_configure_oidc_refuses_to_start_without_the_provider(tmp_path, monkeypatch):
    monkeypatch.setenv("SZ_TEST_OIDC_SECRET", SECRET)
    path = write(
        tmp_path, edit("https://sso.example.org/realms/research", "http://127.0.0.1:9", OIDC)
    )
    with pytest.raises(SettingsError) as refused:
        configured(load_settings(path))
    [problem] = refused.value.problems
    assert problem.startswith("auth.oidc.issuer: can't read http://127.0.0.1:9/.well-known/")
    assert SECRET not in str(refused.value)


def test_configure_oidc_refuses_to_start_without_the_secret(
    tmp_path, discovery_server, monkeypatch
):
    issuer, docs = discovery_server
    docs[WELL_KNOWN] = (200, provider_doc(issuer))
    monkeypatch.delenv("SZ_TEST_OIDC_SECRET", raising=False)
    path = write(tmp_path, edit("https://sso.example.org/realms/research", issuer, OIDC))
    with pytest.raises(SettingsError) as refused:
        configured(load_settings(path))
    assert refused.value.problems == [
        "auth.oidc.client_secret_env: the environment variable SZ_TEST_OIDC_SECRET is not set"
    ]


def test_native_stays_the_default(tmp_path):
    c = configured(load_settings(write(tmp_path, BASE)))
    assert c.JupyterHub.authenticator_class.__name__ == "WorkbenchAuthenticator"
    assert c.Authenticator.allow_all is True
    assert "manage_groups" not in c.Authenticator


# --- where each kind reads the institution ------------------------------------------------


def test_institution_values_ldap():
    from shangzhuang.hub.signin import WorkbenchLDAPAuthenticator

    auth = WorkbenchLDAPAuthenticator(bind_dn_template=["uid={username},dc=x"])
    model = {
        "name": "alice",
        "auth_state": {
            "ldap_groups": ["cn=pku,ou=groups,dc=x"],
            "user_attributes": {"o": ["pku.edu.cn"], "ou": "maths"},
        },
    }
    assert auth.institution_values(model) == ["cn=pku,ou=groups,dc=x"]
    auth.account_source = "o"
    assert auth.institution_values(model) == ["pku.edu.cn"]
    auth.account_source = "ou"  # a single value, not a list
    assert auth.institution_values(model) == ["maths"]
    auth.account_source = "departmentNumber"  # not in the entry
    assert auth.institution_values(model) == []


def test_institution_values_oidc():
    from shangzhuang.hub.signin import WorkbenchOIDCAuthenticator

    auth = WorkbenchOIDCAuthenticator()
    model = {
        "name": "bob",
        "groups": ["pku", "staff"],  # from the groups claim, before the account replaces them
        "auth_state": {"oauth_user": {"schac_home_organization": "pku.edu.cn", "n": 7}},
    }
    assert auth.institution_values(model) == ["pku", "staff"]
    auth.account_source = "schac_home_organization"
    assert auth.institution_values(model) == ["pku.edu.cn"]
    auth.account_source = "n"
    assert auth.institution_values(model) == ["7"]
    auth.account_source = "missing"
    assert auth.institution_values(model) == []
