"""Papermill's way of passing parameters, without papermill: a cell of assignments
inserted right after the notebook's cell tagged `parameters` (nbformat only, so the GPU
machine and bench/gpu_train.py can use it too)."""

from __future__ import annotations

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def with_parameters(nb: nbformat.NotebookNode, **values) -> nbformat.NotebookNode:
    """A copy of `nb` with `values` assigned after its parameters cell."""
    nb = nbformat.from_dict(nb)
    where = next(
        (i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None
    )
    if where is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(where + 1, cell)
    return nb


def read(name: str, **values) -> nbformat.NotebookNode:
    """notebooks/NAME, with `values` injected (if any)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return with_parameters(nb, **values) if values else nb


def code_of(nb: nbformat.NotebookNode) -> str:
    """The notebook's code cells as one Python script (for running it outside a kernel)."""
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "code") + "\n"
