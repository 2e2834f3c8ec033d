"""The tutorials as committed: valid notebooks without outputs (what nbgitpuller hands out
and [tutorials] copies), each with one `parameters` cell whose names the notebook uses,
and the helper module beside the notebooks that import it."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("0*.ipynb"))


def test_the_four_tutorials_are_there():
    assert [p.name for p in TUTORIALS] == [
        "01-welcome.ipynb",
        "02-train-on-a-gpu.ipynb",
        "03-scale-out-with-dask.ipynb",
        "04-share-a-voila-app.ipynb",
    ]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"{path.name}: has outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: one cell tagged parameters"
    names = {t.id for n in ast.parse(tagged[0].source).body if isinstance(n, ast.Assign)
             for t in n.targets}  # fmt: skip
    rest = "\n".join(c.source for c in code if c is not tagged[0])
    unused = [n for n in names if n not in rest]
    assert not unused, f"{path.name}: parameters never used: {unused}"
    if "from shapes import" in rest:
        assert (NOTEBOOKS / "shapes.py").is_file()
