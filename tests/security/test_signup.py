"""Strangers at the sign-up page.

- the admin-name sign-up: signing up as a name in `hub.admins` (the first, bootstrapped
  with a password, and the others, which had none) or a name the site reserves gets no
  account, let alone an approved admin one;
- the sign-up flood: anonymous sign-ups in a loop from several addresses while the hub's
  /hub/health is timed: it keeps answering within 0.5 s (bcrypt runs off the event
  loop), and each address is told to wait (429) after its allowance.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from jupyterhub import orm
from nativeauthenticator.orm import UserInfo

from shangzhuang.hub.auth import WorkbenchAuthenticator
from tests.integration.hub import ADMIN, RunningHub, workdir
from tests.security.strangers import (
    hub_url,
    login_from,
    page_message,
    post_form,
    session_from,
    signup_from,
)

pytestmark = pytest.mark.integration

PER_HOUR = 3


@pytest.fixture(scope="module")
def hub():
    with RunningHub(workdir(), admins=(ADMIN, "ops"), signups_per_hour=PER_HOUR) as h:
        yield h


@pytest.mark.parametrize("name", [ADMIN, "ops", "root"])
def test_admin_and_reserved_names_cannot_be_signed_up(hub, name):
    password = "attacker-password-1"
    r = signup_from(hub, "127.0.5.1", name, password)
    assert f"The name {name} is reserved on this site" in page_message(r.text), r.text
    r, _ = login_from(hub, "127.0.5.2", name, password)
    assert r.status_code == 403, r.text


def test_every_admin_has_an_account_without_a_bootstrap_password():
    """No `shangzhuang up` and no bootstrap password (a hub started by hand): every admin
    name still has an approved account, with a password nobody knows, so no sign-up can
    take it. (The authenticator on its own, on an in-memory hub database.)"""
    db = orm.new_session_factory("sqlite://")()
    auth = WorkbenchAuthenticator(db=db, admin_users={"admin", "ops"})
    for name in ("admin", "ops"):
        info = UserInfo.find(db, name)
        assert info is not None and info.is_authorized
        assert "reserved" in auth.signup_problem(name, "pw-123456789", "pw-123456789")
        assert auth.create_user(name, "pw-123456789") is None  # upstream's path refuses too


def test_an_admin_sets_the_password_of_another_admin(hub):
    """The second admin's account exists from the start with a password nobody knows; the
    first admin sets it on /hub/change-password/ops (a POST with _xsrf), then ops logs in."""
    admin = session_from("127.0.5.3")
    r = post_form(
        hub, admin, "/hub/login", {"username": ADMIN, "password": hub.password_of_admin()}
    )
    assert r.status_code == 302, r.text
    new = "ops-password-4471"
    r = post_form(
        hub, admin, "/hub/change-password/ops",
        {"new_password": new, "new_password_confirmation": new},
    )  # fmt: skip
    assert "The password of ops has been changed." in page_message(r.text), r.text
    r, _ = login_from(hub, "127.0.5.4", "ops", new)
    assert r.status_code == 302, r.text


def test_pending_signups_are_capped():
    base = workdir()
    hub = RunningHub(base)
    text = hub.config.read_text()
    hub.config.write_text(
        text.replace("[auth.native]\n", "[auth.native]\nmax_pending_signups = 2\n", 1)
    )
    with hub:
        for i in (1, 2):
            assert (
                signup_from(hub, f"127.0.7.{i}", f"wait{i}", "waiting-password-1").status_code
                == 200
            )
        r = signup_from(hub, "127.0.7.3", "wait3", "waiting-password-1")
        assert r.status_code == 503
        assert page_message(r.text) == (
            "Sign-up is closed for now: 2 sign-ups are waiting for an admin's approval. "
            "Try again later."
        )
        hub.approve("wait1")  # one approved: room for one more
        assert signup_from(hub, "127.0.7.3", "wait3", "waiting-password-1").status_code == 200


def health_latencies(hub, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        r = requests.get(f"{hub_url(hub)}/hub/health", timeout=10)
        out.append(time.monotonic() - started)
        assert r.status_code == 200
        time.sleep(0.05)


def test_a_signup_flood_neither_stalls_the_hub_nor_gets_through(hub):
    addresses = [f"127.0.6.{i}" for i in range(1, 5)]
    replies: dict[str, list[requests.Response]] = {a: [] for a in addresses}

    def flood(address: str) -> None:
        for i in range(PER_HOUR + 3):
            name = f"f{address.rsplit('.', 1)[1]}x{i}"
            replies[address].append(signup_from(hub, address, name, "flood-password-1"))

    stop, latencies = threading.Event(), []
    timer = threading.Thread(target=health_latencies, args=(hub, stop, latencies))
    timer.start()
    floods = [threading.Thread(target=flood, args=(a,)) for a in addresses]
    for t in floods:
        t.start()
    for t in floods:
        t.join(300)
    stop.set()
    timer.join(30)

    # probes did run during the flood (a busy machine gets fewer of them in: 9 at load 9)
    assert len(latencies) >= 5
    assert max(latencies) < 0.5, sorted(latencies)[-5:]
    for address, rs in replies.items():
        codes = [r.status_code for r in rs]
        assert codes[:PER_HOUR] == [200] * PER_HOUR, (address, codes)
        assert set(codes[PER_HOUR:]) == {429}, (address, codes)
        message = page_message(rs[-1].text)
        assert message.startswith("Too many sign-ups from your address: try again in"), message
    # the admin approves nobody by accident: the sign-ups wait for approval
    r, _ = login_from(hub, "127.0.6.9", "f1x0", "flood-password-1")
    assert "not approved yet" in page_message(r.text)
