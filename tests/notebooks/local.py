"""Run a tutorial here, without a hub: in a fresh kernel (nbclient + ipykernel, as a
workbench session's kernel runs it) or as a bare Python script made of its code cells.
Both work in a folder of their own with `shapes.py` beside the notebook. For the GPU test
and bench/gpu_train.py, on machines with only torch, nbclient and ipykernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from .parameters import NOTEBOOKS, code_of, read


def prepare(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOKS / "shapes.py", folder / "shapes.py")
    return folder


def in_kernel(name: str, folder: Path, timeout: float = 900, **parameters):
    """Execute notebooks/NAME in a new kernel whose working folder is `folder`; return the
    executed notebook (also saved there, outputs and all)."""
    from nbclient import NotebookClient

    nb = read(name, **parameters)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    nbformat.write(nb, str(folder / name))
    return nb


def as_script(name: str, folder: Path, timeout: float = 900, **parameters) -> str:
    """Run notebooks/NAME's code cells as one plain Python script in `folder`; return its
    output. Raises RuntimeError with the output's end if it fails."""
    script = folder / (Path(name).stem + ".py")
    script.write_text(code_of(read(name, **parameters)))
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, script.name], cwd=folder, env=env, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{script.name} exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done.stdout


def outputs_text(nb) -> str:
    """The executed notebook's streams and text/plain outputs."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)
