"""One Unix account per hub user, so sessions can't read each other's files (hub as root)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

FIRST_USER_UID = 1000  # Debian's UID_MIN: below are system accounts
# A deleted hub user's account is kept, locked, as `{user_prefix}retiredUID` (hub/accounts.py).
RETIRED = "retired"
RETIRED_COMMENT = "Retired Shangzhuang account of"


class AccountError(Exception):
    pass


async def ensure_account(
    unix_name: str,
    home: str,
    hub_name: str,
    on_create: Callable[[pwd.struct_passwd], None] | None = None,
) -> pwd.struct_passwd:
    """Create the account if missing (home 0700, own group); return its passwd entry.
    `on_create` runs once, right after the account is made (to fill the new home).

    Runs on the hub's event loop, so what may wait runs off it: the account lookup (NSS,
    which may ask a directory server: sssd, nslcd), useradd, and the home's files (NFS)."""
    created = False
    try:
        account = await asyncio.to_thread(pwd.getpwnam, unix_name)
    except KeyError:
        proc = await asyncio.create_subprocess_exec(
            "useradd", "--create-home", "--home-dir", home, "--shell", "/bin/bash",
            "--user-group", "--comment", f"Shangzhuang user {hub_name}", unix_name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise AccountError(f"useradd {unix_name} failed: {out.decode().strip()}") from None
        account = await asyncio.to_thread(pwd.getpwnam, unix_name)
        created = True
    return await asyncio.to_thread(_settle, account, created, on_create)


def _settle(
    account: pwd.struct_passwd,
    created: bool,
    on_create: Callable[[pwd.struct_passwd], None] | None,
) -> pwd.struct_passwd:
    """Refuse accounts no session runs as; make the home the user's own, 0700."""
    if account.pw_gecos.startswith(RETIRED_COMMENT):
        # A hub user named like a retired account ("retired1001") must not get its uid.
        raise AccountError(f"{account.pw_name} is a retired account; sessions never run as one")
    if account.pw_uid < FIRST_USER_UID:
        # With an empty user_prefix a hub user named "root" or "daemon" must not get that account.
        raise AccountError(
            f"{account.pw_name} is a system account (uid {account.pw_uid}); "
            "sessions never run as one"
        )
    os.makedirs(account.pw_dir, exist_ok=True)
    os.chown(account.pw_dir, account.pw_uid, account.pw_gid)
    os.chmod(account.pw_dir, 0o700)
    if created and on_create is not None:
        on_create(account)
    return account


def copy_into_home(
    files: Sequence[str | Path], home: str | Path, folder: str, uid: int = -1, gid: int = -1
) -> list[Path]:
    """Copy `files` into `home/folder` (made if missing), owned by uid:gid; return the
    copies. Used once per new home, for the site's tutorials ([tutorials])."""
    dest = Path(home, folder)
    # As root in a home that may be older than the account (a reused name): never follow
    # a link found there, or the copy and the chown would land wherever it points.
    inside = [p for p in (dest, *dest.parents) if p.is_relative_to(home)]
    if any(p.is_symlink() for p in inside):
        raise OSError(f"{dest} passes through a symbolic link; not copying into it")
    made = [p for p in inside if not p.exists()]
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for f in files:
        copy = dest / Path(f).name
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)  # whatever the umask
        with os.fdopen(fd, "wb") as out, open(f, "rb") as src:
            shutil.copyfileobj(src, out)
        copies.append(copy)
    for p in [*made, *copies]:
        os.lchown(p, uid, gid)
    return copies
