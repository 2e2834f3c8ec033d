"""The unverified LDAP certificate: a real slapd (tests/slapd.py) serving LDAPS and
StartTLS with a certificate from a throwaway CA, i.e. a server (or a man in the middle)
the hub has no reason to trust. Without `ca_file` the hub verifies against the system's CA
bundle and refuses to send the password; with the right `ca_file` the login works."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from shangzhuang.hub.signin import WorkbenchLDAPAuthenticator, configure_signin
from shangzhuang.settings import load_settings
from tests.integration.test_auth_ldap import (  # noqa: F401 (the tls_slapd fixture)
    PASSWORDS,
    sign_in,
    tls_authenticator,
    tls_slapd,
)

pytestmark = pytest.mark.integration


def without_ca_file(folder, server, tls: str):
    """The same site config as tls_authenticator's, with no ca_file line."""
    tls_authenticator(folder, server, tls, server.ca_file)  # writes site.toml
    site = folder / "site.toml"
    site.write_text(
        "\n".join(line for line in site.read_text().splitlines() if not line.startswith("ca_file"))
    )
    c = Config()
    c.JupyterHub.template_vars = {}
    configure_signin(c, load_settings(site))
    return WorkbenchLDAPAuthenticator(config=c)


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_a_certificate_nobody_vouches_for_is_refused(tls_slapd, tmp_path, tls):  # noqa: F811
    auth = without_ca_file(tmp_path, tls_slapd, tls)
    user, attempt = sign_in(auth, "alice", PASSWORDS["alice"])
    assert (user, attempt.refusal) == (None, "unavailable")
    # the right CA: the same login works
    auth = tls_authenticator(tmp_path / "right", tls_slapd, tls, tls_slapd.ca_file)
    user, _ = sign_in(auth, "alice", PASSWORDS["alice"])
    assert user is not None and user["name"] == "alice"
