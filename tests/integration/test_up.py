"""`shangzhuang up` as a newcomer meets it: first-run password, clean Ctrl-C, non-root mode."""

import os
import re
import signal
import subprocess
import time
import uuid

import psutil
import pytest

from .conftest import root_only
from .hub import RunningHub, workdir

pytestmark = pytest.mark.integration


def test_first_run_prints_a_generated_admin_password_kept_0600():
    hub = RunningHub(workdir(), admin_password=None)
    try:
        hub.start()
        out = hub.log.read_text()
        m = re.search(r"First start: admin 'admin', password (\S+)", out)
        assert m, out[:2000]
        kept = hub.state / "admin-password"
        assert kept.read_text().strip() == m.group(1)
        assert kept.stat().st_mode & 0o777 == 0o600
        assert hub.state.stat().st_mode & 0o777 == 0o700
        hub.login("admin", m.group(1))

        # Ctrl-C stops hub, proxy and services; the next start resumes with the same users.
        hub.new_user("zoe")
        children = psutil.Process(hub.proc.pid).children(recursive=True)
        assert any("configurable-http-proxy" in " ".join(c.cmdline()) for c in children)
        hub.stop()
        time.sleep(0.5)
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
        hub.start()
        assert "First start" not in hub.log.read_text().split("Shangzhuang Workbench on")[-1]
        assert m.group(1) == kept.read_text().strip()
        hub.login("zoe", "correct-horse-9")
        hub.login("admin", m.group(1))
    finally:
        hub.cleanup()


@root_only
def test_not_root_runs_sessions_as_the_hub_account_and_says_so():
    account = f"szh{uuid.uuid4().hex[:5]}"
    subprocess.run(["useradd", "--create-home", "--user-group", account], check=True)
    base = workdir()
    os.chown(base, *_ids(account))
    hub = RunningHub(base, run_as=account, gpus=0)
    try:
        hub.start()
        browser = hub.new_user("nina")
        home = browser.get(f"{hub.url}/hub/home").text
        assert "users are not isolated" in home
        hub.spawn("nina", "cpu")
        hub.wait_ready("nina")
        assert hub.run_code("nina", "import getpass; print(getpass.getuser())").strip() == account
    finally:
        hub.cleanup()
        subprocess.run(["pkill", "-KILL", "-u", account], check=False)
        subprocess.run(["userdel", "--remove", account], check=False, capture_output=True)


def _ids(account):
    import pwd

    p = pwd.getpwnam(account)
    return p.pw_uid, p.pw_gid


def test_idle_culler_stops_idle_sessions():
    hub = RunningHub(workdir(), gpus=0, idle_timeout=10)
    try:
        hub.start()
        hub.new_user("ivan")
        hub.spawn("ivan", "cpu")
        hub.wait_ready("ivan")
        hub.wait(
            lambda: "" not in hub.api("GET", "/users/ivan").json()["servers"],
            timeout=90,
            what="idle session culled",
        )
    finally:
        hub.cleanup()


def ignore_sigint() -> None:
    """What a job started without a terminal inherits (nohup, `cmd &` in a script, CI)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stops_promptly_whatever_signals_it_inherited(sig):
    """Started with SIGINT ignored, the hub still stops within 10 s on SIGTERM (a service
    manager) and SIGINT (Ctrl-C), and so do its services: before, each service ignored the
    hub's SIGINT and waited out its timeouts (88-95 s in all)."""
    hub = RunningHub(workdir(), gpus=0)
    hub.preexec = ignore_sigint
    with hub:
        children = psutil.Process(hub.proc.pid).children(recursive=True)
        services = [c for c in children if "shangzhuang." in " ".join(c.cmdline())]
        assert len(services) == 2, [c.cmdline() for c in children]  # quota and apps
        started = time.monotonic()
        os.kill(hub.proc.pid, sig)  # the hub alone: it stops what it started
        hub.proc.wait(30)
        took = time.monotonic() - started
        assert took < 10, f"stopped in {took:.1f} s:\n{hub.tail()}"
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
        log = hub.log.read_text()
        assert f"Received signal {sig.name}, initiating shutdown" in log
        assert "quota service stopping" in log and "apps service stopping" in log
        assert "Traceback" not in log, hub.tail()
