"""`shangzhuang install --root DIR`: the systemd units and files it lays down, read back by a
unit-file parser and, where systemd is installed, by `systemd-analyze verify`. No systemd runs
here; tests/integration/test_install.py runs what the units start."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat); continuation
    lines, comments and stray text are errors here, as they are mistakes in our templates."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if line.startswith("[") and line.rstrip().endswith("]"):
            current = sections.setdefault(line.strip()[1:-1], {})
            continue
        assert current is not None, f"line {n} outside a section: {line!r}"
        assert "=" in line and not line.endswith("\\"), f"line {n}: {line!r}"
        key, value = line.split("=", 1)
        assert key == key.strip() and key.isidentifier(), f"line {n}: key {key!r}"
        current.setdefault(key, []).append(value.strip())
    return sections


def options(args: list[str]) -> dict[str, str]:
    """--name value pairs of a command line; a flag alone maps to ""."""
    opts = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else "--"
            opts[a] = "" if nxt.startswith("--") else nxt
    return opts


def site(tmp_path: Path, hub: str) -> Path:
    etc = tmp_path / "etc" / "shangzhuang"
    etc.mkdir(parents=True)
    config = etc / "site.toml"
    config.write_text(f"""
[hub]
{hub}
state_dir = "{tmp_path}/var/lib/shangzhuang/state"
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
""")
    return config


def install(tmp_path, config, *args):
    return subprocess.run(
        [sys.executable, "-m", "shangzhuang.cli", "install", "--config", str(config),
         "--root", str(tmp_path), "--proxy-command", str(PROXY), *map(str, args)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=hub.example.org", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_install_lays_down_units_the_parser_and_systemd_accept(tmp_path, certificate):
    config = site(tmp_path, 'public_url = "https://hub.example.org"\nip = "0.0.0.0"\n'
                  "port = 443\nseparate_proxy = true")  # fmt: skip
    cert, key = certificate
    out = install(tmp_path, config, "--tls-cert", cert, "--tls-key", key)
    assert out.returncode == 0, out.stderr
    etc, units = config.parent, tmp_path / "etc" / "systemd" / "system"

    token = (etc / "proxy.env").read_text()
    assert token.startswith("CONFIGPROXY_AUTH_TOKEN=") and len(token.strip()) > 60
    assert (etc / "proxy.env").stat().st_mode & 0o777 == 0o640
    assert "configure(c, load_settings())" in (etc / "jupyterhub_config.py").read_text()
    state = tmp_path / "var/lib/shangzhuang/state"
    assert state.stat().st_mode & 0o777 == 0o700

    proxy = parse_unit((units / "shangzhuang-proxy.service").read_text())
    service = proxy["Service"]
    assert service["User"] == ["shangzhuang"] and service["Group"] == ["shangzhuang"]
    assert service["EnvironmentFile"] == [str(etc / "proxy.env")]
    assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    argv = shlex.split(service["ExecStart"][0])
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK)
    opts = options(argv[1:])
    assert opts["--ip"] == "0.0.0.0" and opts["--port"] == "443"
    assert opts["--api-ip"] == "127.0.0.1"
    assert opts["--ssl-cert"] == str(cert) and opts["--ssl-key"] == str(key)
    assert opts["--redirect-port"] == "80" and opts["--redirect-to"] == "443"
    assert opts["--host-routing"] == ""  # per-user subdomains
    assert opts["--keep-alive-timeout"] == "330000"  # as when the hub starts it (config.py)
    assert proxy["Install"]["WantedBy"] == ["multi-user.target"]

    hub = parse_unit((units / "shangzhuang-hub.service").read_text())
    assert hub["Unit"]["Requires"] == ["shangzhuang-proxy.service"]
    assert hub["Unit"]["PartOf"] == ["shangzhuang-proxy.service"]
    assert "shangzhuang-proxy.service" in hub["Unit"]["After"][0].split()
    service = hub["Service"]
    assert service["User"] == ["root"]
    assert service["EnvironmentFile"] == [str(etc / "proxy.env")]
    assert service["KillMode"] == ["process"]  # sessions outlive a hub restart
    assert service["WorkingDirectory"] == [str(state)]
    argv = shlex.split(service["ExecStart"][0])
    assert argv == [str(Path(sys.executable).parent / "shangzhuang"), "up", "--config",
                    str(config)]  # fmt: skip

    if not shutil.which("systemd-analyze"):
        return  # the parser above is the check; no systemd here
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, sorted(units.iterdir()))],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert not verify.stderr.strip(), verify.stderr  # no warnings either

    # A reinstall keeps the token the running proxy holds.
    assert install(tmp_path, config, "--tls-cert", cert, "--tls-key", key).returncode == 0
    assert (etc / "proxy.env").read_text() == token


def test_install_refuses_a_config_that_would_not_run_as_installed(tmp_path, certificate):
    config = site(tmp_path, 'public_url = "https://hub.example.org"')
    out = install(tmp_path, config)
    assert out.returncode == 2
    assert "set hub.separate_proxy = true" in out.stderr

    config.write_text(config.read_text().replace("[hub]", "[hub]\nseparate_proxy = true", 1)
                      .replace("https://", "http://"))  # fmt: skip
    cert, key = certificate
    out = install(tmp_path, config, "--tls-cert", cert, "--tls-key", key)
    assert out.returncode == 2
    assert "hub.public_url is 'http://hub.example.org': make it https://" in out.stderr
    out = install(tmp_path, config, "--tls-cert", cert)
    assert out.returncode == 2 and "--tls-cert and --tls-key go together" in out.stderr
