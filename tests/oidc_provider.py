"""A real OpenID Connect provider on 127.0.0.1 for tests: node + the npm package
oidc-provider (tests/oidc/, installed there with `npm ci` on first use), configured by a
JSON fixture file of clients and accounts that the provider rereads at every lookup.

`OidcProvider.login()` drives the authorization-code flow the way a browser does: the hub's
/hub/oauth_login, the provider's login form, consent (given at once), back to the hub's
/hub/oauth_callback, whose response it returns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin, urlparse

import requests

from tests.ports import free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "workbench"


def ensure_provider_installed() -> None:
    """`npm ci` in tests/oidc/ when oidc-provider is not there yet (the lock file pins it)."""
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=OIDC_DIR, check=True, capture_output=True, timeout=600,
    )  # fmt: skip


class OidcProvider:
    def __init__(self, base: Path, accounts: dict[str, dict]):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_secret = "client-" + os.urandom(12).hex()
        self.fixture = base / "oidc-fixture.json"
        self.log = base / "oidc-provider.log"
        self.hub_url = ""
        self.accounts = accounts
        self.proc: subprocess.Popen | None = None

    def write(self) -> None:
        """Write the fixture file (the provider rereads accounts at every lookup)."""
        client = {
            "client_id": CLIENT_ID,
            "client_secret": self.client_secret,
            "redirect_uris": [f"{self.hub_url}/hub/oauth_callback"],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        doc = {"port": self.port, "clients": [client], "accounts": self.accounts}
        tmp = self.fixture.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.fixture)

    def set_claims(self, name: str, **claims) -> None:
        self.accounts[name]["claims"].update(claims)
        self.write()

    def start(self, hub_url: str, timeout: float = 30) -> None:
        """Serve with one client: the hub at `hub_url`."""
        ensure_provider_installed()
        self.hub_url = hub_url
        self.write()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["node", str(OIDC_DIR / "provider.mjs"), str(self.fixture)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        url = f"{self.issuer}/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oidc provider exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"oidc provider not up in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    # --- the authorization-code flow over HTTP ------------------------------------------
    def to_callback(
        self, hub_url: str, name: str, password: str
    ) -> tuple[requests.Session, str]:
        """Log in at the provider; return the session and the hub callback URL it sends to."""
        s = requests.Session()
        r = s.get(f"{hub_url}/hub/oauth_login", timeout=30)  # -> provider -> its login form
        assert r.status_code == 200 and 'id="username"' in r.text, (r.status_code, r.text)
        r = s.post(
            f"{r.url.split('?')[0]}/login",
            data={"username": name, "password": password},
            allow_redirects=False,
            timeout=30,
        )
        for _ in range(10):  # the provider's own redirects (resume, consent, resume)
            assert r.status_code in (302, 303), (r.status_code, r.text[:500])
            location = urljoin(r.url, r.headers["Location"])
            if urlparse(location).path == "/hub/oauth_callback":
                return s, location
            r = s.get(location, allow_redirects=False, timeout=30)
        raise AssertionError("the provider never sent the browser back to the hub")

    def login(self, hub_url: str, name: str, password: str):
        """The whole flow; returns (session, the hub's answer at /hub/oauth_callback)."""
        s, callback = self.to_callback(hub_url, name, password)
        return s, s.get(callback, allow_redirects=False, timeout=30)
