"""What every benchmark shares: the machine it ran on, and its own section of
docs/benchmarks.md (each script rewrites only the section under its heading)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
INTRO = (
    "# Benchmarks\n\n"
    "Measured numbers for the workbench against plain JupyterHub on the same machine.\n"
    "Each section names the script that produced it; rerun it to refresh the section.\n"
)


def machine(*versions: str) -> str:
    """'2 cores (nproc), 23.5 GiB RAM, Python 3.11.2, <versions...>, Linux 6.1'."""
    import psutil  # here, not at import: the GPU host records results without it

    ram = psutil.virtual_memory().total / 2**30
    parts = [
        f"{len(os.sched_getaffinity(0))} cores (nproc)",
        f"{ram:.1f} GiB RAM",
        f"Python {platform.python_version()}",
        *versions,
        f"{platform.system()} {platform.release()}",
    ]
    return ", ".join(parts)


def write_section(heading: str, section: str, doc: Path = DOC) -> None:
    """Put `section` (which starts with `heading`) in place of the old one, or at the end.

    The file is read right before writing: other sections belong to other scripts."""
    text = doc.read_text() if doc.exists() else INTRO
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        rest = "\n" + text[nxt + 1 :] if nxt >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + rest
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip("\n") + "\n")
