"""`shangzhuang check` on what strangers could abuse (issue 12): an empty user prefix with
open sign-up, plain LDAP to another host, database passwords in the world-readable config;
secrets from files or the environment instead, and no admin by default for LDAP/OIDC."""

from __future__ import annotations

import pytest

from shangzhuang.settings import SettingsError, load_settings

from .test_check import cli, edit, write
from .test_check_auth import BASE, LDAP, OIDC

PASSWORD = "pg-s3cret-never-echoed"


def problems(tmp_path, text: str) -> list[str]:
    with pytest.raises(SettingsError) as refused:
        load_settings(write(tmp_path, text))
    assert PASSWORD not in str(refused.value)
    return refused.value.problems


def test_native_signup_needs_a_user_prefix(tmp_path):
    text = BASE + '[backend.local]\nuser_prefix = ""\n'
    assert problems(tmp_path, text) == [
        "backend.local.user_prefix: must not be empty with auth.kind = 'native': anyone "
        "signing up would choose their Unix account's name, also one that exists already "
        "(such as 'nobody'); keep a prefix such as 'sz-'"
    ]
    # with a directory the names are the institution's: central accounts are fine
    assert load_settings(write(tmp_path, LDAP + '[backend.local]\nuser_prefix = ""\n'))


def test_plain_ldap_only_to_this_host(tmp_path):
    text = edit('tls = "ldaps"', 'tls = "plain"', LDAP)
    [problem] = problems(tmp_path, text)
    assert problem.startswith("auth.ldap.tls: 'plain' sends passwords unencrypted")
    local = edit('server = "ldap.example.org"', 'server = "127.0.0.1"', text)
    assert load_settings(write(tmp_path, local)).auth.ldap.tls == "plain"


@pytest.mark.parametrize("section", ["hub", "quota"])
def test_database_passwords_stay_out_of_the_file(tmp_path, section, monkeypatch):
    url = f"postgresql+psycopg://workbench:{PASSWORD}@db.example.org/workbench"
    text = BASE.replace(f"[{section}]\n", f'[{section}]\ndatabase_url = "{url}"\n')
    if f"[{section}]\n" not in BASE:
        text = BASE + f'[{section}]\ndatabase_url = "{url}"\n'
    [problem] = problems(tmp_path, text)
    assert problem.startswith(f"{section}.database_url: it holds a password")
    done = cli("check", str(write(tmp_path, text)), cwd=tmp_path)
    assert done.returncode == 2 and PASSWORD not in done.stderr + done.stdout
    # from a file (relative to the config's folder) or the environment instead
    (tmp_path / "db-url").write_text(url + "\n")
    by_file = text.replace(f'database_url = "{url}"', 'database_url_file = "db-url"')
    settings = load_settings(write(tmp_path, by_file))
    got = settings.hub.db_url if section == "hub" else settings.quota.url
    assert got == url
    monkeypatch.setenv("SZ_TEST_DB_URL", url)
    by_env = text.replace(f'database_url = "{url}"', 'database_url_env = "SZ_TEST_DB_URL"')
    settings = load_settings(write(tmp_path, by_env))
    assert (settings.hub.db_url if section == "hub" else settings.quota.url) == url


def test_a_missing_database_url_secret_is_named(tmp_path):
    settings = load_settings(
        write(tmp_path, BASE.replace("[hub]\n", '[hub]\ndatabase_url_env = "SZ_NOT_SET"\n'))
    )
    with pytest.raises(
        ValueError, match="hub.database_url_env: the environment variable SZ_NOT_SET is not set"
    ):
        _ = settings.hub.db_url


def test_only_native_signin_has_a_default_admin(tmp_path, monkeypatch):
    monkeypatch.setenv("SZ_TEST_OIDC_SECRET", "x")
    assert load_settings(write(tmp_path, BASE)).hub.admins == ["admin"]
    assert load_settings(write(tmp_path, LDAP)).hub.admins == []
    assert load_settings(write(tmp_path, OIDC)).hub.admins == []
    named = LDAP.replace("[hub]\n", '[hub]\nadmins = ["ops"]\n')
    assert load_settings(write(tmp_path, named)).hub.admins == ["ops"]


def test_up_names_a_missing_database_url_secret(tmp_path):
    text = BASE.replace("[hub]\n", '[hub]\ndatabase_url_env = "SZ_NOT_SET"\n')
    done = cli("up", "--config", str(write(tmp_path, text)), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "hub.database_url_env: the environment variable SZ_NOT_SET is not set"
    )
