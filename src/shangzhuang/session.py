"""What runs first in every Lab session, as its user, before JupyterLab: the hub's
`Spawner.cmd` runs this file (by its path), which then becomes jupyterhub-singleuser.

- Kernels talk over IPC (Unix) sockets in a private runtime folder (0700, made by mkdtemp),
  never over TCP on 127.0.0.1 where any user of the node could connect to a kernel's
  iopub and read its output. `--KernelManager.transport=ipc` is on the command line, which
  beats every config file, so a user's own config can't turn it back.
- Dask gets this session's own credentials: a new self-signed certificate and key, as the
  user, in a 0700 folder of their home (`~/.shangzhuang/dask-tls/SERVER/`, files 0600; the
  home is on the storage Slurm nodes share, so worker jobs read them too). Their paths
  reach Dask as config (DASK_DISTRIBUTED__COMM__TLS__*, require-encryption on), so every
  scheduler, worker and client of the session speaks TLS with a certificate of this
  session's own, and its schedulers refuse anyone without one (shangzhuang.cluster).
- JupyterLab opens in the user's language ($SHANGZHUANG_LANGUAGE, which the hub's spawner
  sets: zh_CN or en) and without the upstream news prompt: the session's own
  labconfig/default_setting_overrides.json, on JUPYTER_CONFIG_PATH. These are *defaults*:
  a language the user then picks in Lab's own menu is saved in their settings and wins at
  every later start; the hub's choice is not forced on them again.
- Plots can write Chinese: matplotlib gets the workbench's matplotlibrc (Noto Sans CJK after
  DejaVu Sans) unless the user has a matplotlibrc of their own.

Only the standard library and cryptography are imported here: this runs at every spawn.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# What a kernel's sockets need: "<runtime>/kernel-<uuid>-ipc-<n>" must fit a Unix socket
# path (108 bytes on Linux), which a home such as /home/NAME/.local/share/jupyter/runtime
# already nearly fills; a short private folder under /tmp always fits.
RUNTIME_PREFIX = "jupyter-run-"
KERNEL_ARGS = ["--KernelManager.transport=ipc"]
# The languages the hub hands sessions (SHANGZHUANG_LANGUAGE), as JupyterLab names them.
LAB_LOCALES = {"zh_CN": "zh_CN", "en": "en"}
# The workbench's matplotlib settings: a font with Chinese glyphs after matplotlib's own.
MATPLOTLIBRC = Path(__file__).with_name("matplotlibrc")


def prepare(env: dict[str, str]) -> dict[str, str]:
    """The environment the Lab and its kernels run with: a private runtime folder, the
    session's Dask credentials, its Lab settings and its matplotlib settings."""
    runtime = tempfile.mkdtemp(prefix=RUNTIME_PREFIX)  # 0700, a name nobody could pre-claim
    home = env.get("HOME") or os.path.expanduser("~")
    tls = credentials_folder(home, env.get("JUPYTERHUB_SERVER_NAME", ""))
    return {
        **env,
        "JUPYTER_RUNTIME_DIR": runtime,
        **make_credentials(tls),
        **lab_settings(Path(runtime, "config"), env),
        **matplotlib_settings(home, env),
    }


def lab_defaults(language: str | None) -> dict[str, dict]:
    """The session's JupyterLab setting defaults: the user's language (when the hub named
    one) and no "Jupyter news" prompt or update check, which a platform's users can't act on."""
    defaults: dict[str, dict] = {
        "@jupyterlab/apputils-extension:notification": {
            "fetchNews": "false",
            "checkForUpdates": False,
        }
    }
    if language in LAB_LOCALES:
        defaults["@jupyterlab/translation-extension:plugin"] = {"locale": LAB_LOCALES[language]}
    return defaults


def lab_settings(folder: Path, env: dict[str, str]) -> dict[str, str]:
    """Write `lab_defaults` where jupyterlab_server reads default setting overrides
    (FOLDER/labconfig/default_setting_overrides.json) and put FOLDER on JUPYTER_CONFIG_PATH,
    after the user's own ~/.jupyter, which keeps the last word."""
    (folder / "labconfig").mkdir(parents=True)
    defaults = lab_defaults(env.get("SHANGZHUANG_LANGUAGE"))
    (folder / "labconfig" / "default_setting_overrides.json").write_text(json.dumps(defaults))
    path = [str(folder), *filter(None, env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
    return {"JUPYTER_CONFIG_PATH": os.pathsep.join(path)}


def matplotlib_settings(home: str | Path, env: dict[str, str]) -> dict[str, str]:
    """MATPLOTLIBRC for the workbench's matplotlibrc, unless the user set their own (it
    would otherwise win over their ~/.config/matplotlib/matplotlibrc)."""
    own = Path(env.get("MPLCONFIGDIR") or Path(home, ".config", "matplotlib"), "matplotlibrc")
    if env.get("MATPLOTLIBRC") or own.exists():
        return {}
    return {"MATPLOTLIBRC": str(MATPLOTLIBRC)}


# The roles of Dask's TLS config (`distributed.comm.tls.ROLE.cert`, `.key`).
ROLES = ("client", "scheduler", "worker")


def credentials_folder(home: str | Path, server_name: str = "") -> Path:
    """Where a session's credentials live: one folder per server, so two named servers of
    the same user never replace each other's."""
    return Path(home, ".shangzhuang", "dask-tls", server_name or "lab")


def make_credentials(folder: Path) -> dict[str, str]:
    """Write a new self-signed certificate and its key into `folder` (0700; files 0600)
    and return the environment that makes Dask use them."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    key = ec.generate_private_key(ec.SECP256R1())  # milliseconds, where RSA takes ~0.1 s
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(cert_file),
    }
    for role in ROLES:
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT"] = str(cert_file)
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY"] = str(key_file)
    return env


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by its owner alone from the first byte."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    env = prepare(dict(os.environ))
    singleuser = os.path.join(sys.prefix, "bin", "jupyterhub-singleuser")
    os.execve(singleuser, [singleuser, *KERNEL_ARGS, *argv], env)


if __name__ == "__main__":
    main(sys.argv[1:])
