"""A server install, run the way its systemd units would run it: the workbench's wheel in a
fresh venv outside the checkout, `shangzhuang install` into a temp /etc-like tree, then the
proxy's and the hub's ExecStart lines run as given (no systemd here: this test plays it, and
stops the hub as `KillMode=process` does, with SIGTERM to the hub alone).

Through the TLS front end (configurable-http-proxy with a certificate of a test CA, verified
by every client): login, spawn, the user's server on its own subdomain, a quota read; HTTP
redirected to HTTPS; HSTS; Secure cookies. Then the hub stops and starts again while a
user's kernel websocket is open through the separate proxy: the websocket carries on, and
while the hub is down new requests and websockets to the user's server still get through.

The fresh venv gets the workbench from its wheel (`pip install --no-deps`); its dependencies
(JupyterHub, JupyterLab, ...) come from the checkout's .venv through a .pth line, which is
added after the venv's own site-packages, so `import shangzhuang` is the wheel's (asserted),
and their console scripts are written into the venv as pip would.
Building every dependency's wheel would cost minutes of CI for no more truth.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_port

from .apps_kit import cli, write_app
from .conftest import root_only
from .hub import RunningHub, execute_request, interruptible, workdir

pytestmark = [pytest.mark.integration, root_only]

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_test_ca(folder: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for `hosts` (wildcards allowed)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("Shangzhuang test CA"))
        .issuer_name(_name("Shangzhuang test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    paths[2].chmod(0o600)
    return paths


def outside_env() -> dict[str, str]:
    """This process's environment without what would point the installed venv back at a
    checkout (a unit's environment has no PYTHONPATH)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def fresh_venv(base: Path) -> Path:
    """The workbench's wheel, built from this checkout, in a new venv outside it."""
    dist, venv = base / "dist", base / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("shangzhuang-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=300, env=outside_env(),
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=outside_env(),
    ).stdout.strip()  # fmt: skip
    (Path(site) / "_checkout_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # ... and their data files as pip would put them: Voila's templates and the Lab extensions
    # (share/jupyter), the server extensions' enabling JSON, JupyterLab's too (etc/jupyter).
    for data in ("share", "etc"):
        (venv / data).mkdir(exist_ok=True)
        (venv / data / "jupyter").symlink_to(Path(sys.prefix) / data / "jupyter")
    # The dependencies' console scripts (jupyterhub-singleuser...), as pip would write them.
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points.select(group="console_scripts"):
            script = venv / "bin" / ep.name
            if script.exists() or dist.metadata["Name"] == "shangzhuang":
                continue
            module, _, attr = ep.value.partition(":")
            script.write_text(
                f"#!{python}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
                f"sys.exit({attr}())\n"
            )
            script.chmod(0o755)
    where = subprocess.run(
        [str(python), "-c", "import shangzhuang; print(shangzhuang.__file__)"],
        capture_output=True, text=True, check=True, cwd=base, env=outside_env(),
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(venv)), f"shangzhuang imported from {where}, not the wheel"
    return venv


def unit(path: Path) -> dict[str, str]:
    """The [Service] keys of a unit file (each given once in ours)."""
    keys = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys[k] = v
    return keys


class InstalledHub(RunningHub):
    """RunningHub's client side (forms, API, kernels) against an installed site over https."""

    def __init__(self, base: Path, account: str):
        # 3600: the culler runs. Two tutorials, copied into new homes from the wheel.
        tutorials = '[tutorials]\ncopy_to_new_homes = ["01-welcome.ipynb", "shapes.py"]\n'
        super().__init__(base, gpus=0, idle_timeout=3600, extra_toml=tutorials)
        self.account = account  # the platform's system account: the proxy's
        self.venv = fresh_venv(base)
        etc = base / "etc" / "shangzhuang"
        etc.mkdir(parents=True)
        self.state = base / "var" / "lib" / "shangzhuang" / "state"
        self.url = f"https://hub.localhost:{self.port}"
        self.http_port = free_port()
        text = self.config.read_text().replace(
            'state_dir = "state"',
            f'state_dir = "{self.state}"\nseparate_proxy = true\npublic_url = "{self.url}"',
        ).replace("[site]\n", f'[site]\nservice_account = "{account}"\n')
        self.config.unlink()
        self.config = etc / "site.toml"
        self.config.write_text(text)
        self.ca, cert, key = make_test_ca(etc, ["hub.localhost", "*.hub.localhost"])
        os.chown(key, 0, pwd.getpwnam(account).pw_gid)  # as docs/operating.md says
        key.chmod(0o640)
        out = subprocess.run(
            [str(self.venv / "bin" / "shangzhuang"), "install", "--config", str(self.config),
             "--root", str(base), "--proxy-command", str(PROXY), "--tls-cert", str(cert),
             "--tls-key", str(key), "--http-port", str(self.http_port), "--account", account],
            capture_output=True, text=True, timeout=120, env=outside_env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        units = base / "etc" / "systemd" / "system"
        self.proxy_unit = unit(units / "shangzhuang-proxy.service")
        self.hub_unit = unit(units / "shangzhuang-hub.service")
        env_file = Path(self.hub_unit["EnvironmentFile"])
        self.unit_env = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        self.proxy: subprocess.Popen | None = None

    def user_url(self, name: str, server: str = "") -> str:
        url = f"https://{name}.hub.localhost:{self.port}/user/{name}/"
        return f"{url}{server}/" if server else url

    def start_proxy(self) -> None:
        with open(self.base / "proxy.log", "ab") as log:
            # User= of the unit: the platform's account, no root.
            assert self.proxy_unit["User"] == self.account
            self.proxy = subprocess.Popen(
                ["runuser", "-u", self.account, "--", *shlex.split(self.proxy_unit["ExecStart"])],
                stdout=log, stderr=subprocess.STDOUT, env={**outside_env(), **self.unit_env},
                start_new_session=True,
            )  # fmt: skip

        def listening():
            try:
                return requests.get(f"{self.url}/", timeout=2, verify=self.ca).status_code
            except requests.ConnectionError:
                return None

        self.wait(listening, 30, "the proxy listening")

    def start(self, timeout: float = 120) -> None:
        if self.proxy is None:
            self.start_proxy()
        env = {
            **outside_env(), **self.unit_env, "SHANGZHUANG_ADMIN_PASSWORD": self.admin_password,
            "SHANGZHUANG_CONFIG": str(self.config),
        }  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                shlex.split(self.hub_unit["ExecStart"]), cwd=self.hub_unit["WorkingDirectory"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=interruptible,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"hub not up in {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        """As systemd stops the hub unit (KillMode=process): SIGTERM to the hub alone."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        for log in (self.log, self.base / "proxy.log", *self.state.glob("sessions/*")):
            if log.exists():
                (artifacts / f"install-{log.name}").write_bytes(log.read_bytes())
        try:
            super().cleanup()
        finally:
            if self.proxy and self.proxy.poll() is None:
                os.killpg(self.proxy.pid, signal.SIGTERM)
                self.proxy.wait(30)


@contextlib.contextmanager
def platform_account():
    """A throwaway system account like the one `shangzhuang install` makes."""
    account = f"szs{uuid.uuid4().hex[:5]}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", account],
        check=True,
    )  # fmt: skip
    try:
        yield account
    finally:
        subprocess.run(["pkill", "-KILL", "-u", account], check=False)
        subprocess.run(["userdel", account], check=False, capture_output=True)


@pytest.fixture(scope="module")
def site():
    with platform_account() as account:
        yield from _site(account)


def _site(account):
    base = workdir()
    hub = None
    saved = {k: os.environ.get(k) for k in ("REQUESTS_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE")}
    try:
        hub = InstalledHub(base, account)
        # Every client of these tests verifies the proxy's certificate against the test CA.
        for k in saved:
            os.environ[k] = str(hub.ca)
        hub.start()
        yield hub
    finally:
        if hub:
            hub.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_login_spawn_and_quota_through_the_tls_front_end(site):
    # HTTP answers with a redirect to HTTPS, nothing else.
    r = requests.get(
        f"http://hub.localhost:{site.http_port}/hub/login?next=x", allow_redirects=False,
        timeout=30,
    )  # fmt: skip
    assert r.status_code in (301, 302, 307, 308), r.status_code
    assert r.headers["Location"] == f"{site.url}/hub/login?next=x"

    page = requests.get(f"{site.url}/hub/login", timeout=30)  # verified against the test CA
    assert page.status_code == 200
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"

    site.signup("ann", "correct-horse-9")
    site.approve("ann")
    browser, r = site.try_login("ann", "correct-horse-9")
    assert r.status_code == 302
    cookies = {c.name: c for c in browser.cookies}
    session_cookies = [c for c in cookies.values() if "hub-session-id" in c.name or
                       c.name.endswith("jupyterhub-session-id")]  # fmt: skip
    assert session_cookies and all(c.secure for c in session_cookies), cookies
    assert all(c.secure for c in cookies.values() if c.name.startswith("__Host-"))

    site.spawn("ann", "cpu")
    site.wait_ready("ann")
    token = site.token_for("ann")
    status = requests.get(
        f"{site.user_url('ann')}api/status", headers={"Authorization": f"token {token}"},
        timeout=30,
    )  # fmt: skip
    assert status.status_code == 200, status.text  # ann.hub.localhost: the wildcard name
    quota = requests.get(
        f"{site.url}/services/quota/api/v1/me", headers={"Authorization": f"token {token}"},
        timeout=30,
    )  # fmt: skip
    assert quota.status_code == 200, quota.text
    assert quota.json()["user"] == "ann"


def test_the_proxy_culler_and_services_run_as_the_platform_account(site, monkeypatch):
    """The hub stays root (it makes accounts and starts sessions as them); the rest run as
    the platform's account: the quota service too on this local backend, owning its ledger
    (on Slurm it stays root: docs/operating.md says why)."""
    uid = pwd.getpwnam(site.account).pw_uid
    proxy = [p for p in psutil.Process(site.proxy.pid).children(recursive=True)
             if "configurable-http-proxy" in " ".join(p.cmdline())]  # fmt: skip
    assert proxy and all(p.uids().effective == uid for p in proxy)
    hub = psutil.Process(site.proc.pid)
    assert hub.uids().effective == 0
    services = {}
    for p in hub.children():
        for name in ("jupyterhub_idle_culler", "shangzhuang.quota.service",
                     "shangzhuang.apps.service"):  # fmt: skip
            if name in " ".join(p.cmdline()):
                services[name] = p.uids()
    assert services == {
        "jupyterhub_idle_culler": (uid, uid, uid),
        "shangzhuang.apps.service": (uid, uid, uid),
        "shangzhuang.quota.service": (uid, uid, uid),
    }, services
    # Its ledger, in a folder it owns beside the root-only state folder; nothing of root's
    # there (the hub's schema check at start leaves no -wal/-shm behind).
    ledger = site.state.parent / "ledger"
    assert (ledger.stat().st_uid, ledger.stat().st_mode & 0o777) == (uid, 0o700)
    assert {p.name: p.stat().st_uid for p in ledger.iterdir()}.get("quota.sqlite") == uid
    assert all(p.stat().st_uid == uid for p in ledger.iterdir()), list(ledger.iterdir())
    # The apps service writes the registry as that account; the owner's group reads it
    # (her app server starts, as her), and so does the culler (its arbiter reads app.json).
    if "ann" not in [u["name"] for u in site.api("GET", "/users").json()]:
        site.new_user("ann")
    nb = write_app(site.base / "ann-work")
    monkeypatch.setenv("SSL_CERT_FILE", str(site.ca))  # the CLI's client verifies the test CA
    published = cli(site, site.token_for("ann"), "publish", str(nb), "--name", "dial")
    assert published.returncode == 0, published.stdout + published.stderr
    record = site.state.parent / "apps" / "ann" / "dial" / "app.json"
    gid = pwd.getpwnam(f"{site.prefix}ann").pw_gid
    assert (record.stat().st_uid, record.stat().st_gid) == (uid, gid)
    site.wait(lambda: site.api("GET", "/users/ann").json()["servers"].get("app-dial", {})
              .get("ready"), 120, "ann's app running")  # fmt: skip
    read = subprocess.run(["runuser", "-u", site.account, "--", "cat", str(record)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert read.returncode == 0 and '"dial"' in read.stdout, read.stderr
    # The quota service, as the account, opened ann's app in its ledger and charges it.
    token = site.token_for("ann")

    def charged() -> float:
        usage = requests.get(f"{site.url}/services/quota/api/v1/usage?user=ann",
                             headers={"Authorization": f"token {token}"}, timeout=30)  # fmt: skip
        assert usage.status_code == 200, usage.text
        return sum(r["amount"] for r in usage.json()["records"] if r["source"] == "app")

    site.wait(lambda: charged() > 0, 120, "ann's app charged to her")


def test_the_wheel_carries_its_default_config_tutorials_and_templates(site):
    """Package data, not the checkout: what the installed package finds, and the tutorials
    a new user's home gets, come from the venv; psycopg is the `postgres` extra."""
    python = site.venv / "bin" / "python"
    found = json.loads(subprocess.run(
        [str(python), "-c", "import json, importlib.metadata as m\n"
         "from shangzhuang import settings\nfrom shangzhuang.hub import config\n"
         "print(json.dumps({'config': str(settings.DEFAULT_CONFIG), 'tutorials': "
         "str(settings.TUTORIALS), 'templates': str(config.HUB_TEMPLATES), "
         "'extras': m.metadata('shangzhuang').get_all('Provides-Extra')}))"],
        capture_output=True, text=True, check=True, cwd=site.base, env=outside_env(),
    ).stdout)  # fmt: skip
    assert "postgres" in found.pop("extras")
    for what, path in found.items():
        assert path.startswith(str(site.venv)) and Path(path).exists(), (what, path)
    env = {k: v for k, v in outside_env().items() if k != "SHANGZHUANG_CONFIG"}
    check = subprocess.run(
        [str(site.venv / "bin" / "shangzhuang"), "check"], capture_output=True, text=True,
        cwd=site.base, env=env, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0 and found["config"] in check.stdout, check.stdout + check.stderr

    if "ann" not in [u["name"] for u in site.api("GET", "/users").json()]:
        site.new_user("ann")
    if not site.api("GET", "/users/ann").json()["servers"].get(""):
        site.spawn("ann", "cpu")
    site.wait_ready("ann")
    copied = site.homes / f"{site.prefix}ann" / "tutorials"
    for name in ("01-welcome.ipynb", "shapes.py"):
        assert (copied / name).read_bytes() == (Path(found["tutorials"]) / name).read_bytes()
    # Her Lab has the workbench's extension, installed (from its wheel; here the checkout's
    # .venv lends it, see fresh_venv), not the extension's source folder.
    token = site.token_for("ann")
    lab = requests.get(f"{site.user_url('ann')}lab", timeout=60,
                       headers={"Authorization": f"token {token}"})  # fmt: skip
    assert lab.status_code == 200 and '"shangzhuang-lab"' in lab.text, lab.status_code
    where = site.run_code("ann", "import shangzhuang_lab; print(shangzhuang_lab.__file__)", token)
    assert "site-packages" in where and not where.startswith(str(ROOT / "extensions")), where


ATTACK = """
import json, os, urllib.request
found = {"env": os.environ.get("CONFIGPROXY_AUTH_TOKEN")}
for path in [ENV_FILE] + [f"/proc/{p}/environ" for p in os.listdir("/proc") if p.isdigit()]:
    try:
        with open(path, "rb") as f:
            if b"CONFIGPROXY_AUTH_TOKEN" in f.read():
                found[path] = "read"
    except OSError:
        pass
req = urllib.request.Request(
    "http://127.0.0.1:API/api/routes/evil", method="POST",
    data=json.dumps({"target": "http://127.0.0.1:1"}).encode(),
)
try:
    found["route"] = urllib.request.urlopen(req, timeout=10).status
except urllib.error.HTTPError as e:
    found["route_refused"] = e.code
print(json.dumps(found))
"""


def test_a_user_session_gets_no_proxy_token_and_changes_no_route(site):
    """The attacker: a user's own code in their session on the hub's host, after the proxy's
    token (environment, proxy.env, any process's /proc/PID/environ) to rewrite routes."""
    if "ann" not in [u["name"] for u in site.api("GET", "/users").json()]:
        site.new_user("ann")
    if not site.api("GET", "/users/ann").json()["servers"].get(""):
        site.spawn("ann", "cpu")
    site.wait_ready("ann")
    argv = shlex.split(site.proxy_unit["ExecStart"])
    code = ATTACK.replace("ENV_FILE", repr(site.proxy_unit["EnvironmentFile"])).replace(
        "API", argv[argv.index("--api-port") + 1]
    )
    found = json.loads(site.run_code("ann", code).strip().splitlines()[-1])
    assert found == {"env": None, "route_refused": 403}, found


def test_a_hub_restart_drops_no_open_websocket_and_refuses_no_request(site):
    if "ann" not in [u["name"] for u in site.api("GET", "/users").json()]:
        site.new_user("ann")
    if not site.api("GET", "/users/ann").json()["servers"].get(""):
        site.spawn("ann", "cpu")
    site.wait_ready("ann")
    token = site.token_for("ann")
    kernel = site._new_kernel("ann", token)
    ws = websocket.create_connection(
        f"{site.user_url('ann').replace('https', 'wss', 1)}api/kernels/{kernel}/channels",
        header=[f"Authorization: token {token}"], timeout=120,
    )  # fmt: skip

    def run(code: str) -> str:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps(execute_request(msg_id, code)))
        out = []
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)

    try:
        assert run("x = 41; print('before')").strip() == "before"
        proxy_pid = site.proxy.pid
        site.stop()
        assert run("x += 1; print('hub down', x)").strip() == "hub down 42"
        # With the hub down, the proxy still serves new requests and new websockets to
        # running servers (a proxy started by the hub stops with it: connections refused).
        status = requests.get(
            f"{site.user_url('ann')}api/status", headers={"Authorization": f"token {token}"},
            timeout=30,
        )  # fmt: skip
        assert status.status_code == 200, status.text
        websocket.create_connection(
            f"{site.user_url('ann').replace('https', 'wss', 1)}api/kernels/{kernel}/channels",
            header=[f"Authorization: token {token}"], timeout=60,
        ).close()  # fmt: skip
        site.start()
        assert run("print('after', x)").strip() == "after 42"
        assert site.proxy.pid == proxy_pid and site.proxy.poll() is None
    finally:
        ws.close()
