"""A throwaway OpenLDAP server for tests: Debian's `slapd`, its own config and database
in a temp dir, on a free port of 127.0.0.1.

`ensure_slapd()` installs slapd and ldap-utils with apt-get when missing (debconf
preseeded, as ../shared/notes/hub.md says); `Slapd.start()` runs it in the foreground of
its own process group; entries are written with ldap3 as the directory's root DN.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import ldap3

from tests.ports import free_port

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SLAPD = "/usr/sbin/slapd"
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
PRESEED = """\
slapd slapd/no_configuration boolean false
slapd slapd/domain string example.org
slapd shared/organization string Example
slapd slapd/password1 password unused-admin-password
slapd slapd/password2 password unused-admin-password
"""


def ensure_slapd() -> None:
    """Install slapd and ldap-utils from Debian when they are missing (needs root)."""
    if Path(SLAPD).exists() and shutil.which("slappasswd"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("slapd is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["debconf-set-selections"], input=PRESEED, text=True, check=True)
    install = [*APT, "install", "-y", "--no-install-recommends", "slapd", "ldap-utils"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([*APT, "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)



def hashed(password: str) -> str:
    return subprocess.run(
        ["slappasswd", "-s", password], capture_output=True, text=True, check=True
    ).stdout.strip()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
        "-keyout", str(ca_key), "-out", str(ca),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return ca, cert, key


class Slapd:
    """slapd with dc=example,dc=org, ou=people (inetOrgPerson) and ou=groups (groupOfNames);
    with `tls`, also StartTLS on its ldap:// port and LDAPS on `ldaps_port`, with a
    certificate for 127.0.0.1 from a throwaway CA (`ca_file`)."""

    def __init__(self, base: Path, tls: bool = False):
        self.base = base
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.urls = [self.url]
        self.ca_file: Path | None = None
        self.ldaps_port: int | None = None
        self.root_password = "root-" + os.urandom(6).hex()
        self.proc: subprocess.Popen | None = None
        (base / "db").mkdir(parents=True, exist_ok=True)
        tls_lines = ""
        if tls:
            self.ca_file, cert, key = make_certificates(base)
            self.ldaps_port = free_port()
            self.urls.append(f"ldaps://127.0.0.1:{self.ldaps_port}")
            tls_lines = (
                f"TLSCACertificateFile {self.ca_file}\nTLSCertificateFile {cert}\n"
                f"TLSCertificateKeyFile {key}\n"
            )
        self.conf = base / "slapd.conf"
        self.conf.write_text(
            f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
{tls_lines}moduleload back_mdb
pidfile {base}/slapd.pid
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {hashed(self.root_password)}
directory {base}/db
access to attrs=userPassword by anonymous auth by self write by * none
access to * by * read
"""
        )
        self.log = base / "slapd.log"

    def start(self, timeout: float = 20) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SLAPD, "-d", "0", "-h", " ".join(f"{u}/" for u in self.urls),
                 "-f", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.log.read_text()[-2000:]}")
            try:
                self.admin().unbind()
                return
            except ldap3.core.exceptions.LDAPException:
                time.sleep(0.1)
        raise TimeoutError(f"slapd not up in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def admin(self) -> ldap3.Connection:
        server = ldap3.Server("127.0.0.1", port=self.port, connect_timeout=2)
        return ldap3.Connection(server, ROOT_DN, self.root_password, auto_bind=True)

    def _add(self, dn: str, classes: list[str], attrs: dict) -> None:
        conn = self.admin()
        try:
            if not conn.add(dn, classes, attrs):
                raise RuntimeError(f"adding {dn}: {conn.result}")
        finally:
            conn.unbind()

    def seed(self) -> None:
        """The base entries: the suffix, ou=people and ou=groups."""
        self._add(SUFFIX, ["dcObject", "organization"], {"dc": "example", "o": "Example"})
        self._add(PEOPLE, ["organizationalUnit"], {"ou": "people"})
        self._add(GROUPS, ["organizationalUnit"], {"ou": "groups"})

    def add_user(self, uid: str, password: str, **attrs) -> str:
        dn = f"uid={uid},{PEOPLE}"
        self._add(
            dn, ["inetOrgPerson"],
            {"uid": uid, "cn": uid, "sn": uid, "userPassword": hashed(password), **attrs},
        )  # fmt: skip
        return dn

    def add_group(self, cn: str, *uids: str) -> str:
        dn = f"cn={cn},{GROUPS}"
        # groupOfNames needs a member: the suffix stands in, so a group may lose all users.
        members = [SUFFIX, *(f"uid={u},{PEOPLE}" for u in uids)]
        self._add(dn, ["groupOfNames"], {"cn": cn, "member": members})
        return dn

    def modify(self, dn: str, changes: dict) -> None:
        conn = self.admin()
        try:
            if not conn.modify(dn, changes):
                raise RuntimeError(f"modifying {dn}: {conn.result}")
        finally:
            conn.unbind()

    def move_user(self, uid: str, from_group: str, to_group: str) -> None:
        """Take `uid` out of one group and into another (as a directory admin would)."""
        member = f"uid={uid},{PEOPLE}"
        self.modify(f"cn={from_group},{GROUPS}", {"member": [(ldap3.MODIFY_DELETE, [member])]})
        self.modify(f"cn={to_group},{GROUPS}", {"member": [(ldap3.MODIFY_ADD, [member])]})
