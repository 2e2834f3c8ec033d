"""What deleting a hub user (admin page or API) does to the person's traces, so that someone
who later signs up under the same name starts with nothing of theirs.

- Their Unix account (`{user_prefix}NAME`, when the hub runs as root) is locked and renamed
  `{user_prefix}retiredUID` (so its uid is never reused), their
  leftover processes killed, and their home archived or removed (`backend.accounts.on_delete`:
  "archive" moves it into `archive/` beside the hub state, root-only; "remove" deletes it;
  "keep" leaves account and home as they are, for central accounts a directory owns). Their
  top-level files in /tmp, /var/tmp and /dev/shm go too. Not as root, the per-user folder
  under ~/shangzhuang-homes is archived or removed the same way.
- Their published apps (snapshots in the apps folder) are archived or removed with the
  home: the one write to the apps folder not made by the apps service, for an owner who
  no longer exists.
- Their quota record is set apart under a tombstone name (`Ledger.set_apart`): usage,
  grants and account stay in the ledger for reports, but not under NAME.

JupyterHub calls `Authenticator.delete_user(user)`; our authenticators have
`UserAccounts` among their bases.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import time
from pathlib import Path
from urllib.parse import quote

from jupyterhub.auth import Authenticator
from jupyterhub.utils import maybe_future
from tornado import web
from traitlets import Enum, Unicode

from shangzhuang.hub.unix import FIRST_USER_UID, RETIRED, RETIRED_COMMENT
from shangzhuang.quota.api_client import QuotaAPI, QuotaRefused, QuotaUnavailable, hub_quota

TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")


class UserAccounts(Authenticator):
    """Our authenticators' common base for what happens to a deleted user's traces."""

    on_delete = Enum(
        ["archive", "remove", "keep"],
        "archive",
        help="""What deleting a hub user does to their Unix account and home: "archive"
        (the home goes to a root-only archive folder, the account is locked and renamed,
        keeping its uid from reuse), "remove" (the home deleted, the account locked and
        renamed) or "keep" (both left as they are).""",
    ).tag(config=True)
    user_prefix = Unicode("sz-", help="Prefix of the Unix accounts the workbench made.").tag(
        config=True
    )
    home_root = Unicode("/home", help="Folder that holds the users' homes.").tag(config=True)
    archive_dir = Unicode("", help="Where archived homes go (root-only).").tag(config=True)
    apps_dir = Unicode("", help="The apps folder (apps.folder): owners' published apps.").tag(
        config=True
    )
    quota_url = Unicode(
        "", help="The quota service's URL; when set, it is told of logins and deletions."
    ).tag(config=True)
    quota_token = Unicode(
        "", help="The hub's token for the quota service (api_client.HUB_CLIENT's)."
    ).tag(config=True)

    @property
    def quota(self) -> QuotaAPI | None:
        return hub_quota(self.quota_url, self.quota_token) if self.quota_url else None

    async def delete_user(self, user) -> None:
        # JupyterHub 6.1.1 stops only the default server before calling this, and fails
        # on an active named server (an app, say) after it: refuse first, changing nothing.
        running = [name for name, spawner in user.spawners.items() if name and spawner.active]
        if running:
            raise web.HTTPError(
                400,
                f"{user.name} still has running servers ({', '.join(sorted(running))}): "
                "stop them before deleting the user",
            )
        # The quota record first: a name signed up again must not inherit it, so without
        # the quota service nothing is deleted (api_client's rule).
        if self.quota is not None:
            try:
                tomb = await self.quota.set_apart(user.name)
            except (QuotaUnavailable, QuotaRefused) as e:
                raise web.HTTPError(
                    503, f"{user.name} is not deleted: the quota service, which keeps their "
                    f"usage apart, is not answering ({e}); try again in a minute",
                ) from None  # fmt: skip
            self.log.info("quota record of deleted user %s kept as %s", user.name, tomb)
        await maybe_future(super().delete_user(user))
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        if self.on_delete != "keep":
            await asyncio.to_thread(self.retire_home, user.name, stamp)
            if self.apps_dir:
                apps = Path(self.apps_dir, quote(user.name, safe=""))  # the registry's layout
                await asyncio.to_thread(self._retire_folder, apps, f"apps/{user.name}-{stamp}")

    def retire_home(self, name: str, stamp: str) -> None:
        """Archive or remove the user's home, and delete their Unix account (as root)."""
        if os.geteuid() != 0:
            home = Path.home() / "shangzhuang-homes" / name  # spawners.py's home when not root
            self._retire_folder(home, f"{name}-{stamp}")
            return
        if not self.user_prefix:  # central accounts: not ours to delete
            self.log.warning("user_prefix is empty: %s's Unix account is left as it is", name)
            return
        unix_name = self.user_prefix + name
        try:
            account = pwd.getpwnam(unix_name)
        except KeyError:
            return
        if account.pw_uid < FIRST_USER_UID:
            return
        run(["pkill", "-KILL", "-u", unix_name])
        self._retire_folder(Path(account.pw_dir), f"{unix_name}-{stamp}")
        remove_temp_files(account.pw_uid)
        # Not deleted but locked and renamed: the account keeps holding its uid and gid, so
        # useradd never hands them to someone later (whatever files of theirs survive on
        # other disks, /scratch or Slurm nodes stay theirs), across hub restarts too, with
        # no list of our own to keep in step with /etc/passwd.
        retired = f"{self.user_prefix}{RETIRED}{account.pw_uid}"
        out = run(
            ["usermod", "--login", retired, "--lock", "--expiredate", "1",
             "--shell", "/usr/sbin/nologin", "--home", "/nonexistent",
             "--comment", f"{RETIRED_COMMENT} {name}", unix_name]
        )  # fmt: skip
        if out.returncode != 0:
            self.log.error("retiring %s failed: %s", unix_name, out.stdout.strip())
        elif run(["groupmod", "--new-name", retired, unix_name]).returncode != 0:
            self.log.error("renaming group %s to %s failed", unix_name, retired)
        self.log.info("Unix account %s of deleted user %s: %s", unix_name, name, self.on_delete)

    def _retire_folder(self, home: Path, archived_name: str) -> None:
        if not home.is_dir() or home.is_symlink():
            return
        if self.on_delete == "remove":
            shutil.rmtree(home, ignore_errors=True)
            return
        archive = Path(self.archive_dir)
        archive.mkdir(mode=0o700, parents=True, exist_ok=True)
        archive.chmod(0o700)
        (archive / archived_name).parent.mkdir(mode=0o700, exist_ok=True)
        shutil.move(str(home), str(archive / archived_name))


def remove_temp_files(uid: int) -> None:
    """The top-level files and folders a uid left in the shared temp folders."""
    for folder in TEMP_FOLDERS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def run(cmd: list[str]):
    import subprocess

    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
