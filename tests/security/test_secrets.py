"""Secrets absent from logs: the hub's log at DEBUG level and the CLI's error output hold
no admin or user password and no database password (hub and quota databases on a real
PostgreSQL, URLs given by file and environment), each of them in use. The LDAP search
(bind) password and the OIDC client secret are checked the same way by test_auth_ldap's
and test_auth_oidc's log tests, whose hubs run at DEBUG for it."""

from __future__ import annotations

import pytest
import requests

from tests.integration.hub import ADMIN_PASSWORD, RunningHub, workdir
from tests.postgres import PostgresUnavailable, start_postgres
from tests.unit.test_check import cli

pytestmark = pytest.mark.integration

DB_SECRET = "Db-s3cret-4411"
USER_PASSWORD = "user-password-8812"


def assert_no_secrets(text: str, secrets: list[str]) -> None:
    found = [s for s in secrets if s in text]
    assert not found, f"secrets in the output: {found}"


@pytest.fixture(scope="module")
def postgres():
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    try:
        yield server
    finally:
        server.stop()


def with_password(url: str) -> str:
    """The same URL with a password (the test cluster trusts 127.0.0.1 and ignores it)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{DB_SECRET}@{host}"


def test_native_hub_debug_log_has_no_password(postgres, monkeypatch):
    base = workdir()
    hub_db = with_password(postgres.create_database())
    quota_db = with_password(postgres.create_database())
    (base / "hub-db-url").write_text(hub_db + "\n")
    monkeypatch.setenv("SZ_TEST_QUOTA_DB", quota_db)
    hub = RunningHub(base, quota='database_url_env = "SZ_TEST_QUOTA_DB"', debug=True)
    text = hub.config.read_text()
    hub.config.write_text(
        text.replace(
            'state_dir = "state"\n', 'state_dir = "state"\ndatabase_url_file = "hub-db-url"\n', 1
        )
    )
    with hub:
        hub.new_user("sara", USER_PASSWORD)
        hub.try_login("sara", "wrong-" + USER_PASSWORD)
        r = requests.get(
            f"{hub.url}/services/quota/api/v1/me",
            headers={"Authorization": f"token {hub.token_for('sara')}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text  # the quota service reads its database
        log = hub.log.read_text(errors="replace")
    assert "[D " in log  # it was a debug log
    assert_no_secrets(log, [ADMIN_PASSWORD, USER_PASSWORD, DB_SECRET])


def test_cli_errors_have_no_database_password(tmp_path):
    url = f"postgresql+psycopg://workbench:{DB_SECRET}@127.0.0.1:1/none"
    config = tmp_path / "site.toml"
    config.write_text(
        '[quota]\ndatabase_url_env = "SZ_TEST_QUOTA_DB"\n[[profiles]]\nname = "cpu"\n'
        'cores = 1\nmemory = "1G"\n'
    )
    done = cli("quota", "show", "--config", str(config), cwd=tmp_path,
               env={"SZ_TEST_QUOTA_DB": url})  # fmt: skip
    assert done.returncode == 2
    assert "cannot open the quota database postgresql+psycopg://workbench:***@" in done.stderr
    assert_no_secrets(done.stdout + done.stderr, [DB_SECRET])
