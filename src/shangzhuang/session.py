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

Only the standard library and cryptography are imported here: this runs at every spawn.
"""

from __future__ import annotations

import datetime as dt
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


def prepare(env: dict[str, str]) -> dict[str, str]:
    """The environment the Lab and its kernels run with: a private runtime folder and the
    session's Dask credentials."""
    runtime = tempfile.mkdtemp(prefix=RUNTIME_PREFIX)  # 0700, a name nobody could pre-claim
    home = env.get("HOME") or os.path.expanduser("~")
    tls = credentials_folder(home, env.get("JUPYTERHUB_SERVER_NAME", ""))
    return {**env, "JUPYTER_RUNTIME_DIR": runtime, **make_credentials(tls)}


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
