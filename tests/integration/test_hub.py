"""The workbench end to end: sign-up, approval, login, spawn, a kernel, GPUs, restart."""

import http.client
import pwd
import select
import time

import pytest
import requests

from .conftest import root_only

pytestmark = pytest.mark.integration

ENV = "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"


def test_signup_approval_login_spawn_and_run_code(hub):
    hub.signup("alice", "correct-horse-9")
    # Not approved yet: the login page says so.
    _, r = hub.try_login("alice", "correct-horse-9")
    assert r.status_code == 403
    assert "not approved yet" in r.text

    hub.approve("alice")
    browser = hub.login("alice", "correct-horse-9")

    # The spawn page offers the profiles as a form.
    page = browser.get(f"{hub.url}/hub/spawn")
    assert 'data-profile="cpu"' in page.text and 'data-profile="gpu-1"' in page.text
    r = hub.form(browser, "/hub/spawn", {"profile": "cpu"}, allow_redirects=False)
    assert r.status_code == 302, r.text[-400:]
    hub.wait_ready("alice")

    lab = browser.get(f"{hub.user_url('alice')}lab")
    assert lab.status_code == 200
    assert "JupyterLab" in lab.text

    out = hub.run_code(
        "alice",
        "import os, getpass; print(getpass.getuser(), os.environ['CUDA_VISIBLE_DEVICES'] == '',"
        " os.environ['MEM_LIMIT'], os.environ['CPU_LIMIT'], os.getcwd())",
    )
    user, no_gpu, mem, cpu, cwd = out.split()
    assert no_gpu == "True"  # the CPU profile sees no GPU
    assert int(mem) == 4 * 1024**3 and float(cpu) == 2.0
    if hub.isolated:
        assert user == f"{hub.prefix}alice"
        assert cwd == str(hub.homes / f"{hub.prefix}alice")
    hub.stop_server("alice")


def test_gpu_pool_exclusive_refuses_then_frees(hub):
    for name in ("bob", "carol", "dave"):
        hub.new_user(name)
    hub.spawn("bob", "gpu-1")
    hub.spawn("carol", "gpu-1")
    hub.wait_ready("bob")
    hub.wait_ready("carol")
    seen = {n: hub.run_code(n, ENV).strip() for n in ("bob", "carol")}
    assert sorted(seen.values()) == ["'0'", "'1'"], seen

    # The third is refused, and told why.
    r = hub.spawn("dave", "gpu-1", ok=None)
    assert r.status_code == 503
    assert "All 2 GPUs of this node are in use" in r.json()["message"]
    # The spawn page shows gpu-1 unavailable.
    page = hub.login("dave", "correct-horse-9").get(f"{hub.url}/hub/spawn").text
    assert 'data-profile="gpu-1" data-available="false"' in page
    assert "0 of 2 GPUs free" in page

    if hub.isolated:  # device files: only the holder may open them
        for name, seen_id in seen.items():
            dev = hub.devices[int(seen_id.strip("'"))]
            assert dev.stat().st_uid == pwd.getpwnam(hub.prefix + name).pw_uid
            assert dev.stat().st_mode & 0o777 == 0o600

    bob_gpu = int(seen["bob"].strip("'"))
    hub.stop_server("bob")
    if hub.isolated:
        assert hub.devices[bob_gpu].stat().st_uid == 0
    hub.spawn("dave", "gpu-1")
    hub.wait_ready("dave")
    assert hub.run_code("dave", ENV).strip() == f"'{bob_gpu}'"


def test_restart_keeps_users_sessions_and_allocations(hub):
    # From the previous test: carol and dave hold both GPUs.
    before = {n: hub.run_code(n, ENV).strip() for n in ("carol", "dave")}
    hub.restart()
    users = {u["name"]: u for u in hub.api("GET", "/users").json()}
    assert {"alice", "bob", "carol", "dave", "admin"} <= set(users)
    assert users["carol"]["servers"][""]["ready"] and users["dave"]["servers"][""]["ready"]
    # The same sessions answer, with the same GPUs ...
    assert {n: hub.run_code(n, ENV).strip() for n in ("carol", "dave")} == before
    # ... and the restored pool still refuses a third GPU session.
    r = hub.spawn("bob", "gpu-1", ok=None)
    assert r.status_code == 503 and "in use" in r.json()["message"]
    # Login still works for a user approved before the restart.
    hub.login("alice", "correct-horse-9")


def test_session_dead_while_hub_down_frees_its_gpu(hub):
    server = hub.api("GET", "/users/carol").json()["servers"][""]
    hub.stop()
    pid = int(server["state"]["pid"]) if "state" in server else None
    if pid is None:  # the API hides spawner state: find the process by its owner
        pid = _session_pid(hub, "carol")
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
    hub.start()
    hub.wait(lambda: "" not in hub.api("GET", "/users/carol").json()["servers"])
    hub.spawn("bob", "gpu-1")
    hub.wait_ready("bob")
    assert hub.run_code("bob", ENV).strip() in ("'0'", "'1'")
    hub.stop_server("bob")
    hub.stop_server("dave")


def _session_pid(hub, name):
    import subprocess

    out = subprocess.run(
        ["pgrep", "-f", f"jupyterhub-singleuser.*|JUPYTERHUB_USER={name}"],
        capture_output=True, text=True,
    ).stdout.split()
    for pid in out:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"JUPYTERHUB_USER={name}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no session process for {name}")


@root_only
def test_sessions_are_isolated(hub):
    hub.new_user("erin")
    hub.new_user("frank")
    for n in ("erin", "frank"):
        hub.spawn(n, "cpu")
    for n in ("erin", "frank"):
        hub.wait_ready(n)
    frank_home = hub.homes / f"{hub.prefix}frank"
    (frank_home / "secret.txt").write_text("frank's")
    code = f"""
import os
for path in [{str(frank_home / 'secret.txt')!r}, {str(hub.state / 'jupyterhub.sqlite')!r},
             {str(hub.state / 'admin-password')!r}]:
    try:
        open(path).read(); print('READ', path)
    except PermissionError:
        print('DENIED', path)
"""
    out = hub.run_code("erin", code)
    assert out.count("DENIED") == 3, out
    assert oct(frank_home.stat().st_mode & 0o777) == "0o700"

    # Erin's token can't reach Frank's server, nor can her browser.
    erin_token = hub.token_for("erin")
    r = requests.get(
        f"{hub.user_url('frank')}api/contents", headers={"Authorization": f"token {erin_token}"}
    )
    assert r.status_code == 403
    browser = hub.login("erin", "correct-horse-9")
    r = browser.get(f"{hub.user_url('frank')}lab")
    assert r.status_code == 403
    for n in ("erin", "frank"):
        hub.stop_server(n)


def test_failed_logins_do_not_lock_the_account(hub):
    """Failures slow down the address they come from (tests/security/test_login.py plays
    that attacker); the account is never locked and the reply never names the user."""
    hub.new_user("mallory", "right-password-7")
    for _ in range(2):
        _, r = hub.try_login("mallory", "wrong-password")
        assert r.status_code == 403 and "Invalid username or password" in r.text
    _, r = hub.try_login("mallory", "right-password-7")
    assert r.status_code == 302


def test_the_proxy_keeps_a_clients_idle_connection_open(hub):
    """A browser's or a script's kept-alive connection outlives Node's default keep-alive
    (the proxy closed it 5 s + Node's 1 s margin after its last answer): a request sent on
    it just as the proxy closed it got no answer at all, RemoteDisconnected in bench/load.py
    (reproduced by bench/proxy_keep_alive.py). One real connection through the real proxy,
    idle 7 s, then used again."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    headers = {"Host": f"hub.localhost:{hub.port}"}
    try:
        conn.request("GET", "/hub/health", headers=headers)
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        time.sleep(7)
        closed, _, _ = select.select([conn.sock], [], [], 0)  # readable here: the proxy's EOF
        assert not closed, "the proxy closed a connection idle for 7 s"
        conn.request("GET", "/hub/health", headers=headers)
        again = conn.getresponse()
        again.read()
        assert again.status == 200
    finally:
        conn.close()
