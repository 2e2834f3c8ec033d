"""The hub's configuration as data (hub/config.py), without a hub: every sign-in and backend
kind, the services, and the TLJH rule (set once, never appended to or mutated)."""

from __future__ import annotations

import copy
import tomllib

import pytest
from traitlets.config import Config

from shangzhuang.hub import NOT_CONTAINED, NOT_ISOLATED
from shangzhuang.hub.config import Host, apply, hub_config, merge
from shangzhuang.hub.gpus import Gpu
from shangzhuang.settings import DEFAULT_CONFIG, parse_settings

ENDPOINTS = {
    "authorization_endpoint": "https://sso.example.org/auth",
    "token_endpoint": "https://sso.example.org/token",
    "userinfo_endpoint": "https://sso.example.org/me",
}
ROOT = Host(
    is_root=True, python="/venv/bin/python", proxy="/bin/chp", cgroups="v1", iptables=True,
    gpus=(Gpu(index=0, uuid="GPU-a"),), admin_password="kept", service_account="sz",
)  # fmt: skip
USER = Host(python="/venv/bin/python", proxy="/bin/chp")


def settings(tmp_path, auth: str = "native", backend: str = "local", **sections):
    """The embedded default with `auth` and `backend` kinds and sections replaced."""
    doc = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["hub"]["state_dir"] = str(tmp_path / "state")
    doc["auth"] = {"kind": auth}
    if auth == "ldap":
        doc["auth"]["ldap"] = {
            "server": "ldap.example.org", "tls": "ldaps", "user_search_base": "ou=people,dc=x",
            "search_user": "cn=reader,dc=x", "search_password_env": "SZ_UNUSED",
            "group_search_base": "ou=groups,dc=x", "allowed_groups": ["cn=staff,dc=x"],
        }  # fmt: skip
    if auth == "oidc":
        doc["auth"]["oidc"] = {
            "issuer": "https://sso.example.org", "client_id": "sz",
            "client_secret_env": "SZ_UNUSED", "allowed_groups": ["staff"],
        }  # fmt: skip
    doc["backend"]["kind"] = backend
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return parse_settings(doc, tmp_path / "site.toml")


def plain(value):
    """A config with its callables named, to compare two builds."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value] if not isinstance(value, set) else sorted(value)
    if callable(value) and not isinstance(value, type):
        return f"<{getattr(value, '__qualname__', type(value).__qualname__)}>"
    return value


def test_native_local_as_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SHANGZHUANG_ADMIN_PASSWORD", "from-the-environment")
    config = hub_config(settings(tmp_path), ROOT)
    hub, native = config["JupyterHub"], config["WorkbenchAuthenticator"]
    assert hub["authenticator_class"].__name__ == "WorkbenchAuthenticator"
    assert hub["spawner_class"].__name__ == "LocalSpawner"
    # What the host says, never the process's environment or files (pure).
    assert native["bootstrap_admin_password"] == "kept"
    assert native["reset_admin_password"] == ""
    assert not (tmp_path / "state").exists()
    # The proxy keeps idle client connections 330 s (hub.proxy_keep_alive_seconds), not 5.
    assert config["ConfigurableHTTPProxy"]["command"] == [
        "/bin/chp", "--keep-alive-timeout", "330000",
    ]  # fmt: skip
    assert config["Spawner"]["cmd"][0] == "/venv/bin/python"
    assert config["LocalSpawner"]["gpus"] == [Gpu(index=0, uuid="GPU-a")]
    assert config["LocalSpawner"]["cgroups"] == "v1"
    assert "announcement_home" not in hub["template_vars"]  # contained and isolated
    assert config["Authenticator"]["allow_all"] is True


def test_not_root_says_users_are_not_isolated_and_sets_no_cgroups(tmp_path):
    config = hub_config(settings(tmp_path), USER)
    assert config["JupyterHub"]["template_vars"]["announcement_home"] == NOT_ISOLATED
    assert "cgroups" not in config["LocalSpawner"]


def test_root_without_cgroups_says_sessions_are_not_contained(tmp_path):
    config = hub_config(settings(tmp_path), Host(is_root=True, cgroups="", iptables=True))
    assert config["LocalSpawner"]["cgroups"] == ""
    assert config["JupyterHub"]["template_vars"]["announcement_home"] == NOT_CONTAINED


def test_ldap_takes_its_search_password_from_the_host(tmp_path):
    host = Host(signin_secret="directory-secret")
    config = hub_config(settings(tmp_path, auth="ldap"), host)
    ldap = config["WorkbenchLDAPAuthenticator"]
    assert config["JupyterHub"]["authenticator_class"].__name__ == "WorkbenchLDAPAuthenticator"
    assert (ldap["lookup_dn"], ldap["lookup_dn_search_password"]) == (True, "directory-secret")
    assert (ldap["tls_strategy"], ldap["server_port"]) == ("on_connect", 636)
    assert config["Authenticator"]["manage_groups"] is True
    assert config["UserAccounts"]["quota_url"].endswith("/services/quota/")  # LDAP's base
    assert "WorkbenchAuthenticator" not in config


def test_oidc_takes_its_endpoints_and_secret_from_the_host(tmp_path):
    host = Host(signin_secret="client-secret", oidc_endpoints=ENDPOINTS)
    config = hub_config(settings(tmp_path, auth="oidc"), host)
    oidc = config["WorkbenchOIDCAuthenticator"]
    assert (oidc["token_url"], oidc["client_secret"]) == (ENDPOINTS["token_endpoint"],
                                                          "client-secret")  # fmt: skip
    assert oidc["oauth_callback_url"] == "http://hub.localhost:8000/hub/oauth_callback"
    assert oidc["allowed_groups"] == {"staff"}


def test_slurm_sessions(tmp_path):
    config = hub_config(settings(tmp_path, backend="slurm"), ROOT)
    assert config["JupyterHub"]["spawner_class"].__name__ == "SlurmSpawner"
    assert config["Spawner"]["start_timeout"] == 600  # a job may wait in the queue
    assert "LocalSpawner" not in config
    assert "memory_notices" not in config["JupyterHub"]["template_vars"]
    assert config["Spawner"]["environment"]["SHANGZHUANG_BACKEND"] == "slurm"


@pytest.mark.parametrize(
    "quota, apps, idle, names",
    [
        (True, False, 3600, ["quota", "workbench-hub", "idle-culler"]),
        (True, True, 3600, ["quota", "workbench-hub", "apps", "idle-culler"]),
        (False, True, 0, ["apps", "idle-culler"]),  # apps still stop when idle
        (False, False, 0, []),
    ],
)
def test_services_and_their_roles(tmp_path, quota, apps, idle, names):
    s = settings(tmp_path, quota={"enabled": quota}, apps={"enabled": apps},
                 hub={"idle_timeout_seconds": idle})  # fmt: skip
    hub = hub_config(s, ROOT)["JupyterHub"]
    assert [service["name"] for service in hub["services"]] == names
    roles = {role["name"]: role for role in hub["load_roles"]}
    assert set(roles) == {"user", *(f"{n}-service" if n != "idle-culler" else n for n in names)}
    assert ("access:services!service=quota" in roles["user"]["scopes"]) == quota
    assert ("access:services!service=apps" in roles["user"]["scopes"]) == apps
    culler = [service for service in hub["services"] if service["name"] == "idle-culler"]
    if apps:
        assert any(arg.startswith("--config=") for arg in culler[0]["command"])
    tornado = hub["tornado_settings"]  # each request's language (transforms), always
    assert ("oauth_no_confirm_list" in tornado) == apps  # no-confirm list for apps
    assert "headers" not in tornado  # no HSTS on http


def test_the_services_run_as_the_service_account_the_quota_service_on_slurm_as_root(tmp_path):
    s = settings(tmp_path, apps={"enabled": True})
    services = {x["name"]: x for x in hub_config(s, ROOT)["JupyterHub"]["services"]}
    assert services["apps"]["user"] == services["idle-culler"]["user"] == "sz"
    assert services["quota"]["user"] == "sz"  # local backend: it owns the ledger's folder
    assert services["apps"]["cwd"] == services["quota"]["cwd"] == "/"  # not the 0700 state
    # On Slurm it holds and cancels jobs (scontrol, scancel: root or a Slurm operator).
    slurm = settings(tmp_path, backend="slurm", apps={"enabled": True})
    services = {x["name"]: x for x in hub_config(slurm, ROOT)["JupyterHub"]["services"]}
    assert "user" not in services["quota"] and services["apps"]["user"] == "sz"
    as_hub = hub_config(s, Host(is_root=True))["JupyterHub"]["services"]  # no such account
    assert not any("user" in service for service in as_hub)


def test_https_adds_hsts_and_host_cookies(tmp_path):
    hub = hub_config(settings(tmp_path, hub={"public_url": "https://hub.example.org"}), ROOT)
    assert hub["JupyterHub"]["cookie_host_prefix_enabled"] is True
    headers = hub["JupyterHub"]["tornado_settings"]["headers"]
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.parametrize("auth", ["native", "ldap", "oidc"])
@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_two_builds_are_equal_and_share_nothing(tmp_path, auth, backend):
    s = settings(tmp_path, auth=auth, backend=backend, apps={"enabled": True})
    host = Host(is_root=True, cgroups="v2", oidc_endpoints=ENDPOINTS, signin_secret="x")
    first, second = hub_config(s, host), hub_config(s, host)
    assert plain(first) == plain(second)
    # Set, never mutated: changing what one build gave leaves the next one alone.
    before = copy.deepcopy(plain(second))
    first["JupyterHub"]["services"].append({"name": "extra"})
    first["JupyterHub"]["template_vars"]["extra"] = 1
    first["Spawner"]["environment"]["EXTRA"] = "1"
    assert plain(second) == before == plain(hub_config(s, host))


def test_apply_assigns_each_trait_as_built(tmp_path):
    config = hub_config(settings(tmp_path, apps={"enabled": True}), ROOT)
    c = Config()
    apply(c, config)
    for section, traits in config.items():
        assert set(c[section]) == set(traits), section
        for name, value in traits.items():
            assert c[section][name] is value, f"{section}.{name}"


def test_a_trait_set_by_two_parts_is_refused():
    with pytest.raises(ValueError, match="Spawner.cmd is set twice"):
        merge({"Spawner": {"cmd": ["a"]}}, {"Spawner": {"default_url": "/lab"}},
              {"Spawner": {"cmd": ["b"]}})  # fmt: skip
