"""Clients that come from an address of their own, as strangers on the internet do.

Every 127.0.0.0/8 address is the loopback interface on Linux, so a client bound to
127.0.0.7 reaches the hub like any other and the proxy reports it as 127.0.0.7 (in
X-Forwarded-For): per-address limits see distinct people, with nothing mocked.
"""

from __future__ import annotations

import html as html_text
import re
import time

import requests
from requests.adapters import HTTPAdapter


class _FromAddress(HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str) -> requests.Session:
    """A browser-like session whose connections leave from `address` (127.x.y.z)."""
    s = requests.Session()
    adapter = _FromAddress(address)
    s.mount("http://", adapter)
    return s


def hub_url(hub) -> str:
    """The hub by IPv4 address (a client bound to 127.x can't reach ::1)."""
    return hub.url.replace("://localhost:", "://127.0.0.1:")


def post_form(hub, s: requests.Session, path: str, data: dict) -> requests.Response:
    """GET the page (for its _xsrf cookie), then POST the form as a browser does."""
    url = hub_url(hub) + path
    s.get(url, timeout=60)
    return s.post(
        url, data={**data, "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False, timeout=60
    )


def login_from(hub, address: str, name: str, password: str) -> tuple[requests.Response, float]:
    """A login from `address`: the reply and how long it took (seconds)."""
    s = session_from(address)
    s.get(hub_url(hub) + "/hub/login", timeout=60)
    started = time.monotonic()
    r = s.post(
        hub_url(hub) + "/hub/login",
        data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False, timeout=60,
    )  # fmt: skip
    return r, time.monotonic() - started


def signup_from(hub, address: str, name: str, password: str) -> requests.Response:
    return post_form(
        hub, session_from(address), "/hub/signup",
        {"username": name, "signup_password": password, "signup_password_confirmation": password},
    )  # fmt: skip


def page_message(html: str) -> str:
    """The alert a login or sign-up page shows (its text, whitespace folded)."""
    m = re.search(r'class="[^"]*(?:alert|login_error)[^"]*"[^>]*>(.*?)</(?:div|p)>', html, re.S)
    return html_text.unescape(" ".join(re.sub(r"<[^>]+>", " ", m.group(1)).split())) if m else ""
