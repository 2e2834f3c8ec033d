"""What a publisher sends: the notebook and the files it declares, read from disk.

A notebook declares the files its app needs in its metadata, as paths or glob patterns
relative to the notebook's folder (a folder means everything under it):

    "metadata": {"shangzhuang": {"files": ["model.json", "data/*.csv"]}}

Publishing may name more (`--file`, the Lab dialog). Nothing outside the notebook's folder
is ever taken, symbolic links included.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from shangzhuang.apps.registry import AppError, check_path


@dataclass
class Snapshot:
    notebook: str  # its name, at the top of the snapshot
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())

    def encoded(self) -> dict[str, str]:
        return {rel: base64.b64encode(data).decode("ascii") for rel, data in self.files.items()}


def declared_files(notebook: dict) -> list[str]:
    """The patterns a notebook's metadata declares (metadata.shangzhuang.files)."""
    meta = (notebook.get("metadata") or {}).get("shangzhuang") or {}
    files = meta.get("files") or []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise AppError("metadata.shangzhuang.files must be a list of paths or patterns")
    return files


def collect(notebook: Path | str, extra: list[str] = (), max_bytes: int | None = None) -> Snapshot:
    """Read the notebook and its declared (and `extra`) files into a Snapshot."""
    path = Path(notebook)
    if path.suffix != ".ipynb":
        raise AppError(f"{path}: an app is published from a notebook (.ipynb)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AppError(f"{path}: {e.strerror}") from None
    try:
        nb = json.loads(raw)
    except ValueError:
        raise AppError(f"{path}: not a notebook (not JSON)") from None
    base = path.resolve().parent
    snap = Snapshot(notebook=path.name, files={path.name: raw})
    for pattern in [*declared_files(nb), *extra]:
        pattern = pattern.strip().removeprefix("./")
        if not pattern:
            continue
        check_path(pattern.replace("*", "x").replace("?", "x").replace("[", "x"))
        matches = sorted(base.glob(pattern))
        if not matches:
            raise AppError(f"{pattern!r} matches no file beside {path.name}")
        for match in matches:
            for file in sorted(match.rglob("*")) if match.is_dir() else [match]:
                if file.is_dir():
                    continue
                real = file.resolve()
                if not real.is_relative_to(base):
                    raise AppError(f"{file.relative_to(base)} leads outside the notebook's folder")
                rel = check_path(file.relative_to(base).as_posix())
                snap.files[rel] = real.read_bytes()
                if max_bytes is not None and snap.size > max_bytes:
                    raise AppError(
                        f"the files come to more than {max_bytes / 1024**2:.1f} MiB, "
                        "the most this site takes"
                    )
    return snap


def decode(files: object) -> dict[str, bytes]:
    """A publish request's files (path -> base64) as bytes; AppError names a bad one."""
    if not isinstance(files, dict) or not files:
        raise AppError("files must be an object of path -> base64 content")
    out = {}
    for rel, data in files.items():
        check_path(rel)
        if not isinstance(data, str):
            raise AppError(f"files[{rel!r}] must be base64 text")
        try:
            out[rel] = base64.b64decode(data, validate=True)
        except ValueError:
            raise AppError(f"files[{rel!r}] is not valid base64") from None
    return out
