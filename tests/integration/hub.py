"""A real workbench for tests: `shangzhuang up` (hub + configurable-http-proxy) under a temp folder.

`RunningHub` starts and stops it and speaks to it the way a browser and a notebook
client do: sign-up and login forms with their XSRF cookie, the hub REST API, and the
Jupyter REST + websocket API of a user's session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import websocket

from tests.ports import free_port
from tests.slurm import AT_ZERO_FILE

ADMIN = "admin"
ADMIN_PASSWORD = "admin-test-password-1"


def interruptible() -> None:
    """Let Ctrl-C (SIGINT) stop the process about to run, even if this run of the tests
    ignores it: a background job of a shell without job control (`.ci/run &`, nohup) starts
    with SIGINT ignored, its children inherit that, and Python then installs no
    KeyboardInterrupt handler, so the hub would never hear `stop()`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def workdir() -> Path:
    """A temp folder users' sessions can traverse (mkdtemp makes 0700 folders)."""
    base = Path(tempfile.mkdtemp(prefix="sz-test-"))
    base.chmod(0o755)
    return base


DEFAULT_PROFILES = """
[[profiles]]
name = "cpu"
cores = 2
memory = "4G"
[[profiles]]
name = "gpu-1"
cores = 1
memory = "2G"
gpus = 1
"""


# The quota service of a test hub imports the stand-in `pynvml` (no GPU here).
NVML_STANDIN = """
for _service in c.JupyterHub.services:
    if _service["name"] == "quota":
        _service["environment"].update(
            PYTHONPATH="{folder}", SZ_TEST_NVML_READINGS="{readings}"
        )
"""

# The quota service of a test hub on Slurm runs the stand-in `sstat` (no GPU here).
SSTAT_STANDIN = """
import os
for _service in c.JupyterHub.services:
    if _service["name"] == "quota":
        _service["environment"].update(
            PATH="{folder}:" + os.environ["PATH"], SZ_TEST_SSTAT_READINGS="{readings}"
        )
"""


class RunningHub:
    def __init__(
        self,
        base: Path,
        *,
        gpus: int = 2,
        extra_toml: str = "",
        prefix: str = "",
        run_as: str | None = None,
        admin_password: str | None = ADMIN_PASSWORD,
        admins: tuple[str, ...] = (ADMIN,),
        signups_per_hour: int = 1000,  # per address: the tests sign up many from one
        debug: bool = False,  # the hub logs at DEBUG (tests that read the log for secrets)
        idle_timeout: int = 0,
        quota: str = "",
        apps: str = "",
        slurm_conf: Path | None = None,
        profiles: str = "",
        nvml_readings: Path | None = None,
        sstat_readings: Path | None = None,
    ):
        self.base = base
        self.run_as = run_as  # a Unix account to run the hub as, instead of root
        self.admin_password = admin_password  # None: let `up` generate one
        self.port = free_port()
        # The hub's origin; users' servers are on origins of their own (user_url).
        self.url = f"http://hub.localhost:{self.port}"
        self.state = base / "state"
        self.homes = base / "home"
        self.homes.mkdir(mode=0o755, exist_ok=True)
        self.dev = base / "dev"
        self.dev.mkdir(exist_ok=True)
        # Fake GPUs: plain files stand in for /dev/nvidiaN (ownership and mode are what
        # the pool guards; no CUDA here).
        self.devices = []
        for i in range(gpus):
            d = self.dev / f"nvidia{i}"
            d.touch()
            d.chmod(0o600)
            self.devices.append(d)
        self.prefix = prefix or f"t{uuid.uuid4().hex[:4]}-"
        gpu_lines = "\n".join(
            f'[[backend.local.gpus]]\nindex = {i}\ndevice = "{d}"'
            for i, d in enumerate(self.devices)
        )
        if slurm_conf:  # sessions as jobs on a test Slurm (tests/slurm.py)
            backend = f"""[backend]
kind = "slurm"
[backend.slurm]
conf = "{slurm_conf}"
at_zero_file = "{Path(slurm_conf).parent / AT_ZERO_FILE}"
partition = "debug"
walltime = "00:30:00"
user_prefix = "{self.prefix}"
home_root = "{self.homes}"
"""
        else:
            backend = f"""[backend.local]
user_prefix = "{self.prefix}"
home_root = "{self.homes}"
{gpu_lines}
"""
        self.config = base / "shangzhuang.toml"
        self.config.write_text(
            f"""
[site]
name = "Test Workbench"
[hub]
port = {self.port}
api_port = {free_port()}
proxy_api_port = {free_port()}
state_dir = "state"
admins = {json.dumps(list(admins))}
idle_timeout_seconds = {idle_timeout}
[quota]
port = {free_port()}
{quota}
[apps]
port = {free_port()}
{apps}
[auth.native]
allowed_failed_logins = 3
seconds_before_next_try = 600
signups_per_address_per_hour = {signups_per_hour}
{backend}
{profiles or DEFAULT_PROFILES}
{extra_toml}
"""
        )
        self.isolated = os.geteuid() == 0 and not run_as
        self.proc: subprocess.Popen | None = None
        self.log = base / "hub.log"
        # `shangzhuang up` takes a jupyterhub_config.py beside the site config
        hub_config = '\nc.Application.log_level = "DEBUG"\n' if debug else ""
        if nvml_readings:  # GPU readings from a file: pynvml_standin.py says why
            hub_config += NVML_STANDIN.format(
                folder=Path(__file__).parent / "pynvml_standin", readings=nvml_readings
            )
        if sstat_readings:  # GPU readings of Slurm jobs from a file: sstat_standin/sstat
            hub_config += SSTAT_STANDIN.format(
                folder=Path(__file__).parent / "sstat_standin", readings=sstat_readings
            )
        if hub_config:
            default = Path(__file__).parents[2] / "hub_config" / "jupyterhub_config.py"
            (base / "jupyterhub_config.py").write_text(default.read_text() + hub_config)
        self.preexec = interruptible  # what runs in the hub's process before `shangzhuang up`

    # --- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        env = dict(os.environ)
        env.pop("SHANGZHUANG_ADMIN_PASSWORD", None)
        if self.admin_password:
            env["SHANGZHUANG_ADMIN_PASSWORD"] = self.admin_password
        cmd = [sys.executable, "-m", "shangzhuang.cli", "up", "--config", str(self.config)]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
            env["HOME"] = os.path.expanduser(f"~{self.run_as}")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=self.preexec,
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
        """Stop the hub as Ctrl-C would (SIGINT to its process group: with `run_as`, runuser
        ignores SIGINT while its child runs), and wait until it has exited."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def password_of_admin(self) -> str:
        if self.admin_password:
            return self.admin_password
        return (self.state / "admin-password").read_text().strip()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def __enter__(self) -> RunningHub:
        """`with RunningHub(...) as hub:` starts it and cleans up on the way out, also when
        the start fails (a hub that exits at start still leaves its folder and accounts)."""
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Stop every session, the hub, and remove the Unix accounts the test made."""
        if self.proc and self.proc.poll() is None:
            for user in self.api("GET", "/users").json():
                for name in user.get("servers", {}):
                    self.api("DELETE", f"/users/{user['name']}/servers/{name}", ok=(202, 204, 404))
            self.wait(lambda: not any(u.get("servers") for u in self.api("GET", "/users").json()))
        self.stop()
        for line in Path("/etc/passwd").read_text().splitlines():
            name = line.split(":")[0]
            if name.startswith(self.prefix):
                subprocess.run(["pkill", "-KILL", "-u", name], check=False)
                subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        self._remove_cgroups()
        self._remove_dashboard_rules()
        shutil.rmtree(self.base, ignore_errors=True)

    def _remove_cgroups(self, timeout: float = 10) -> None:
        """The cgroups of sessions a hub left running when it died (their processes were
        just killed above): remove them, and the hub's folder, once they are empty; and the
        hub's own cgroup (containment.hub_cgroup), with what its stopped hub left in it
        (a service or a proxy still exiting, or orphaned by a hub killed with -9)."""
        from shangzhuang.hub.containment import hub_cgroup, hub_parent

        own = hub_cgroup("shangzhuang", self.state)
        ours = (hub_parent("shangzhuang", self.state), own)
        folders = [f for o in ours for f in Path("/sys/fs/cgroup").glob(f"*/{o}") if f.is_dir()]
        deadline = time.monotonic() + timeout
        while folders and time.monotonic() < deadline:
            for folder in list(folders):
                try:
                    if str(folder).endswith(own):  # this hub's helpers, and only theirs
                        for pid in (folder / "cgroup.procs").read_text().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    for session in [d for d in folder.iterdir() if d.is_dir()]:
                        session.rmdir()
                    folder.rmdir()
                    folders.remove(folder)
                except OSError:  # a process still exiting
                    time.sleep(0.1)

    def _remove_dashboard_rules(self) -> None:
        """The iptables chain of sessions a hub left running when it died (their rules
        would keep those dashboard ports reserved on this machine)."""
        from shangzhuang.hub.containment import firewall_chain

        if os.geteuid() != 0 or not shutil.which("iptables"):
            return
        chain = firewall_chain(self.state)
        for args in (["-D", "OUTPUT", "-j", chain], ["-F", chain], ["-X", chain]):
            subprocess.run(["iptables", "-w", *args], check=False, capture_output=True)

    # --- hub REST API ----------------------------------------------------------------
    def admin_token(self) -> str:
        if not hasattr(self, "_admin_token"):
            s = self.login(ADMIN, self.password_of_admin())
            r = s.post(
                f"{self.url}/hub/api/users/{ADMIN}/tokens",
                json={"note": "tests"},
                headers={"X-XSRFToken": s.cookies.get("_xsrf")},
            )
            r.raise_for_status()
            self._admin_token = r.json()["token"]
        return self._admin_token

    def api(self, method: str, path: str, token: str | None = None, ok=(200, 201, 202, 204), **kw):
        r = requests.request(
            method,
            f"{self.url}/hub/api{path}",
            headers={"Authorization": f"token {token or self.admin_token()}"},
            timeout=30,
            **kw,
        )
        if ok and r.status_code not in ok:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        return r

    def token_for(self, name: str) -> str:
        return self.api("POST", f"/users/{name}/tokens", json={"note": "tests"}).json()["token"]

    # --- browser-like forms ----------------------------------------------------------
    def form(self, s: requests.Session, path: str, data: dict, **kw) -> requests.Response:
        s.get(f"{self.url}{path}")  # sets the _xsrf cookie
        return s.post(f"{self.url}{path}", data={**data, "_xsrf": s.cookies.get("_xsrf")}, **kw)

    def signup(self, name: str, password: str) -> requests.Response:
        s = requests.Session()
        return self.form(
            s,
            "/hub/signup",
            {
                "username": name,
                "signup_password": password,
                "signup_password_confirmation": password,
            },
        )

    def try_login(self, name: str, password: str) -> tuple[requests.Session, requests.Response]:
        s = requests.Session()
        r = self.form(
            s, "/hub/login", {"username": name, "password": password}, allow_redirects=False
        )
        return s, r

    def login(self, name: str, password: str) -> requests.Session:
        s, r = self.try_login(name, password)
        assert r.status_code == 302, f"login {name}: {r.status_code} {r.text[-500:]}"
        return s

    def approve(self, name: str) -> None:
        """The admin presses "Authorize" on /hub/authorize (a POST with its XSRF token)."""
        admin = self.login(ADMIN, self.password_of_admin())
        r = self.form(admin, f"/hub/authorize/{name}", {}, allow_redirects=False)
        assert r.status_code == 302, r.status_code

    def new_user(self, name: str, password: str = "correct-horse-9") -> requests.Session:
        """Sign up, get approved by the admin over HTTP, log in."""
        self.signup(name, password)
        self.approve(name)
        return self.login(name, password)

    # --- sessions --------------------------------------------------------------------
    def user_url(self, name: str, server: str = "") -> str:
        """Where NAME's server (or named server) is served: http://NAME.hub.localhost:PORT/
        user/NAME/[SERVER/]. Chromium resolves *.localhost itself; other clients need
        libnss-myhostname (`make test` installs it)."""
        url = f"http://{name}.hub.localhost:{self.port}/user/{name}/"
        return f"{url}{server}/" if server else url

    def spawn(self, name: str, profile: str, ok=(201, 202)) -> requests.Response:
        return self.api("POST", f"/users/{name}/server", json={"profile": profile}, ok=ok)

    def wait_ready(self, name: str, timeout: float = 120) -> dict:
        def ready():
            server = self.api("GET", f"/users/{name}").json()["servers"].get("")
            return server if server and server["ready"] else None

        return self.wait(ready, timeout, f"{name}'s server ready")

    def stop_server(self, name: str) -> None:
        self.api("DELETE", f"/users/{name}/server")
        self.wait(lambda: "" not in self.api("GET", f"/users/{name}").json()["servers"])

    def wait(self, cond, timeout: float = 120, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if v := cond():
                return v
            time.sleep(0.5)
        raise TimeoutError(f"{what} not reached in {timeout}s\n{self.tail()}")

    def run_code(self, name: str, code: str, token: str | None = None) -> str:
        """Run `code` on a new kernel in NAME's session; return what it printed."""
        token = token or self.token_for(name)
        kid = self._new_kernel(name, token)
        try:
            return self._execute(name, kid, code, token)
        finally:
            requests.delete(
                f"{self.user_url(name)}api/kernels/{kid}",
                headers={"Authorization": f"token {token}"}, timeout=30,
            )  # fmt: skip

    def run_code_keep(self, name: str, code: str, token: str) -> str:
        """Run `code` on NAME's one kept kernel, so later calls see its variables."""
        kernels = self.__dict__.setdefault("_kernels", {})
        if name not in kernels:
            kernels[name] = self._new_kernel(name, token)
        return self._execute(name, kernels[name], code, token)

    def _new_kernel(self, name: str, token: str) -> str:
        r = requests.post(
            f"{self.user_url(name)}api/kernels", json={"name": "python3"},
            headers={"Authorization": f"token {token}"}, timeout=60,
        )  # fmt: skip
        r.raise_for_status()
        return r.json()["id"]

    def _execute(self, name: str, kid: str, code: str, token: str, timeout: float = 300) -> str:
        ws = websocket.create_connection(
            f"{self.user_url(name).replace('http', 'ws', 1)}api/kernels/{kid}/channels",
            header=[f"Authorization: token {token}"],
            timeout=timeout,
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps(execute_request(msg_id, code)))
            out = []
            while True:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind == "error":
                    out.append("\n".join(content["traceback"]))
                elif kind == "status" and content["execution_state"] == "idle":
                    return re.sub(r"\x1b\[[0-9;]*m", "", "".join(out))
        finally:
            ws.close()


def execute_request(msg_id: str, code: str) -> dict:
    return {
        "header": {
            "msg_id": msg_id,
            "username": "test",
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False},
        "channel": "shell",
    }
