"""A throwaway PostgreSQL server for tests: Debian's `postgresql`, a cluster in a temp dir.

`start_postgres()` installs the package if it is missing (as root, with apt-get), runs
initdb as the `postgres` user (initdb refuses root), starts the server with pg_ctl on a
free port of 127.0.0.1 (its unix socket in the temp dir, durability off: it is thrown away)
and returns a `Postgres` whose `create_database()` gives SQLAlchemy URLs. `stop()` stops it
and removes the directory. `PostgresUnavailable` says why when none can be had.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from tests.ports import free_port

APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why)."""


def _version(path: str) -> tuple[int, ...]:
    m = re.search(r"/postgresql/([\d.]+)/bin/", path)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb, pg_ctl and postgres."""
    found = [
        p
        for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if os.access(p, os.X_OK)
        and all(os.access(Path(p).parent / x, os.X_OK) for x in ("pg_ctl", "postgres"))
    ]
    return Path(max(found, key=_version)).parent if found else None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def install() -> Path:
    """Debian's postgresql, installed with apt-get if it is not there yet."""
    bindir = find_bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) and installing "
            "it needs root: apt-get install postgresql"
        )
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL is not installed and there is no apt-get here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*APT, "install", "-y", "--no-install-recommends", "postgresql"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        update = subprocess.run([*APT, "update"], env=env, capture_output=True, text=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"apt-get install postgresql failed (exit {done.returncode}):\n"
                f"{_tail(update.stdout + update.stderr, 5)}\n{_tail(done.stdout + done.stderr)}"
            )
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("apt-get installed postgresql but no initdb was found")
    return bindir



@dataclass
class Postgres:
    bindir: Path
    root: Path  # the temp dir: data/, the log and the unix socket
    port: int
    user: str | None  # who runs the server; None: whoever runs the tests
    _names: count = field(default_factory=lambda: count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, autocommit=True
        ) as conn:
            conn.execute(sql)

    def create_schema(self, name: str | None = None, database: str = "postgres") -> str:
        """A new empty schema, first on the search path of the returned SQLAlchemy URL: as
        good as a new database for tables without a schema, and some times faster to make."""
        name = name or f"test_{next(self._names)}"
        self._admin(f'CREATE SCHEMA "{name}"', database)
        return f"{self.url(database)}?options=-csearch_path%3D{name}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or f"test_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], self.user, check)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl("-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _run(cmd: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        cmd, user=user, capture_output=True, text=True, timeout=120, cwd="/",
        **({"group": user, "extra_groups": []} if user else {}),
    )  # fmt: skip
    if check and done.returncode != 0:
        raise PostgresUnavailable(
            f"{' '.join(cmd)} failed (exit {done.returncode}):\n{_tail(done.stdout + done.stderr)}"
        )
    return done


def start_postgres() -> Postgres:
    """Install if needed, initdb, start; the caller must `stop()` it."""
    bindir = install()
    user = None
    root = Path(tempfile.mkdtemp(prefix="shangzhuang-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam(SUPERUSER)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(f"there is no {SUPERUSER!r} system user") from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
        user = SUPERUSER
    server = Postgres(bindir, root, 0, user)
    try:
        _run(
            [str(bindir / "initdb"), "-D", str(server.data), "-U", SUPERUSER, "--auth=trust",
             "-E", "UTF8", "--no-locale", "--no-sync"],
            user,
        )  # fmt: skip
        for attempt in range(3):  # the free port may be taken before the server binds it
            server.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            done = server.pg_ctl(
                "-l", str(server.log), "-o", options, "-w", "-t", "60", "start", check=False
            )
            if done.returncode == 0:
                break
            if attempt == 2:
                log = server.log.read_text(errors="replace") if server.log.exists() else ""
                raise PostgresUnavailable(
                    f"pg_ctl start failed (exit {done.returncode}):\n"
                    f"{_tail(done.stdout + done.stderr)}\n{_tail(log)}"
                )
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    return server


__all__ = ["Postgres", "PostgresUnavailable", "find_bindir", "install", "start_postgres"]
