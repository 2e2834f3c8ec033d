"""The apps a site has: one folder per app, written only by the apps service.

    {folder}/                      0711, the hub's account
      {owner}/                     0750, group: the owner's Unix account (so the app can read)
        {name}/app.json            the app's record (description, viewers, profile, ...)
        {name}/files/              the snapshot: the notebook and the files it declares

The app server (the owner's Unix account) reads its snapshot and can't change it: what
viewers see is exactly what was published, until it is published again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from shangzhuang.services import is_admin
from shangzhuang.settings import APP_NAME

MAX_FILES = 2000


class AppError(ValueError):
    """A publish request that can't be taken: the message names the field and the fix."""


@dataclass
class Viewers:
    """Who may open an app besides its owner (and admins)."""

    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    signed_in: bool = False  # anyone with a hub account
    public: bool = False  # anyone who can reach the site, no account needed

    @classmethod
    def from_dict(cls, data: object) -> Viewers:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise AppError("viewers must be an object with users, groups, signed_in, public")
        unknown = set(data) - {"users", "groups", "signed_in", "public"}
        if unknown:
            raise AppError(f"viewers: unknown field(s) {', '.join(sorted(unknown))}")
        out = cls()
        for key in ("users", "groups"):
            names = data.get(key, [])
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise AppError(f"viewers.{key} must be a list of names")
            setattr(out, key, sorted(set(names)))
        for key in ("signed_in", "public"):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise AppError(f"viewers.{key} must be true or false")
            setattr(out, key, value)
        return out

    def describe(self) -> str:
        """Who may view, in words (a shangzhuang.i18n.Message: the reader's language)."""
        from shangzhuang.i18n import Message

        if self.public:
            return Message("anyone with the link (no account needed)")
        if self.signed_in:
            return Message("anyone signed in")
        named = [*self.users, *(Message("group {group}", group=g) for g in self.groups)]
        return Message("{names}", names=named) if named else Message("only you")


@dataclass
class App:
    owner: str
    name: str
    notebook: str
    description: str = ""
    profile: str = ""
    viewers: Viewers = field(default_factory=Viewers)
    always_on: bool = False  # only an admin sets it: the idle culler leaves it running
    published: float = 0.0
    files: list[str] = field(default_factory=list)
    size: int = 0

    def server_name(self, prefix: str) -> str:
        return f"{prefix}{self.name}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> App:
        data = dict(data)
        data["viewers"] = Viewers.from_dict(data.get("viewers"))
        return cls(**data)

    def may_view(self, user: dict | None, public_links: bool = True) -> bool:
        """May this hub user model (None: no account) open the app? A public app is public
        only while the site allows public links."""
        if self.viewers.public and public_links:
            return True
        if user is None:
            return False
        if user.get("name") == self.owner or is_admin(user):  # the request's scope, not the flag
            return True
        if self.viewers.signed_in or user.get("name") in self.viewers.users:
            return True
        return bool(set(user.get("groups") or ()) & set(self.viewers.groups))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not re.match(APP_NAME, name):
        raise AppError(
            f"app name {name!r}: use 1 to 40 lower-case letters, digits and dashes, "
            "starting with a letter or digit (it becomes part of the app's address)"
        )
    return name


def check_path(rel: str) -> str:
    """A snapshot path: relative, inside the app's folder, no '..'."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise AppError(f"file {rel!r}: not a relative path")
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")):
        raise AppError(f"file {rel!r}: must be a path inside the notebook's folder, without '..'")
    return str(p)


def _owner_dir_name(owner: str) -> str:
    name = quote(owner, safe="")
    if name in (".", "..") or not name:
        raise AppError(f"owner {owner!r} can't own apps")
    return name


class Registry:
    """The apps of a site, on disk. Only the apps service writes; the hub and culler read."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def app_dir(self, owner: str, name: str) -> Path:
        return self.folder / _owner_dir_name(owner) / check_name(name)

    def files_dir(self, owner: str, name: str) -> Path:
        return self.app_dir(owner, name) / "files"

    def get(self, owner: str, name: str) -> App | None:
        try:
            path = self.app_dir(owner, name) / "app.json"
        except AppError:
            return None
        try:
            return App.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def owned(self, owner: str) -> list[App]:
        try:
            base = self.folder / _owner_dir_name(owner)
        except AppError:
            return []
        return self._load(base.glob("*/app.json"))

    def all(self) -> list[App]:
        return self._load(self.folder.glob("*/*/app.json"))

    def _load(self, paths) -> list[App]:
        apps = []
        for path in sorted(paths):
            try:
                apps.append(App.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # half-written or foreign: not an app
        return sorted(apps, key=lambda a: (a.owner, a.name))

    # --- writing (the apps service) ---------------------------------------------------
    def _mkdirs(self, owner: str, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o711)
        owner_dir = self.folder / _owner_dir_name(owner)
        owner_dir.mkdir(mode=0o750, exist_ok=True)
        app_dir = owner_dir / check_name(name)
        app_dir.mkdir(mode=0o750, exist_ok=True)
        return app_dir

    def save(self, app: App) -> None:
        """Write the app's record (atomically: readers see the old or the new one)."""
        app_dir = self._mkdirs(app.owner, app.name)
        tmp = app_dir / f".app.json.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(app.to_dict(), indent=1))
        os.chmod(tmp, 0o640)
        os.replace(tmp, app_dir / "app.json")

    def publish(self, app: App, files: dict[str, bytes], max_bytes: int) -> App:
        """Store the snapshot (replacing an earlier one whole) and the record."""
        if app.notebook not in files:
            raise AppError(f"the snapshot lacks its notebook {app.notebook!r}")
        if len(files) > MAX_FILES:
            raise AppError(f"{len(files)} files: an app may have at most {MAX_FILES}")
        size = sum(len(b) for b in files.values())
        if size > max_bytes:
            raise AppError(
                f"the snapshot is {size / 1024**2:.1f} MiB; this site allows "
                f"{max_bytes / 1024**2:.1f} MiB (apps.max_snapshot_bytes)"
            )
        names = {check_path(rel): data for rel, data in files.items()}
        app_dir = self._mkdirs(app.owner, app.name)
        new = app_dir / f".files.{secrets.token_hex(4)}"
        new.mkdir(mode=0o750)
        try:
            for rel, data in names.items():
                target = new / rel
                target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                target.write_bytes(data)
                os.chmod(target, 0o640)
            old = app_dir / "files"
            retired = app_dir / f".old.{secrets.token_hex(4)}"
            if old.exists():
                os.replace(old, retired)
            os.replace(new, old)
        finally:
            shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        app.files = sorted(names)
        app.size = size
        app.published = time.time()
        self.save(app)
        return app

    def remove(self, owner: str, name: str) -> None:
        shutil.rmtree(self.app_dir(owner, name), ignore_errors=True)

    def let_read(self, owner: str, name: str, gid: int) -> None:
        """Let the owner's Unix group read the app's folder (called as root at each start)."""
        owner_dir = self.folder / _owner_dir_name(owner)
        app_dir = self.app_dir(owner, name)
        # The owner (-1: kept) is whoever writes the registry: the apps service's account.
        # Never through a link: as root, a link to /etc/shadow would hand its group out.
        for path in (owner_dir, app_dir):
            os.chown(path, -1, gid, follow_symlinks=False)
        for root, dirs, names in os.walk(app_dir):
            for n in (*dirs, *names):
                os.chown(os.path.join(root, n), -1, gid, follow_symlinks=False)
