"""The Chinese tutorials (notebooks/zh-CN/) are the English ones translated: the same cells,
the same code (only its strings and comments may differ: plot labels, notes), prose in
Chinese, no outputs; and a new home gets each tutorial in its user's language.

With the code proven equal here, tests/notebooks/test_tutorials.py runs the Chinese 02 and
03 at a smaller size than the English ones (what it checks there is what a Chinese reader
sees: printed lines, plot labels in CJK glyphs, the app), and test_session_language.py
draws Chinese plot labels with the sessions' matplotlib settings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from shangzhuang.hub.spawners import tutorials_in

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ENGLISH = sorted(NOTEBOOKS.glob("0*.ipynb"))
CJK = re.compile(r"[\u4e00-\u9fff]")


class _Strings(ast.NodeTransformer):
    """Every string literal (f-strings too) as one placeholder: what translation may change."""

    def visit_Constant(self, node):
        return ast.Constant("…") if isinstance(node.value, str) else node

    def visit_JoinedStr(self, node):
        return ast.Constant("…")


def code_shape(source: str) -> str:
    magic = ""
    if source.startswith("%%"):  # a cell magic (%%writefile NAME): kept as it is
        magic, _, source = source.partition("\n")
    return magic + ast.dump(_Strings().visit(ast.parse(source)))


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: p.name)
def test_the_chinese_tutorial_is_the_english_one_translated(english):
    en = nbformat.read(english, as_version=4)
    zh = nbformat.read(NOTEBOOKS / "zh-CN" / english.name, as_version=4)
    nbformat.validate(zh)
    assert zh.metadata.kernelspec == en.metadata.kernelspec
    assert [c.cell_type for c in zh.cells] == [c.cell_type for c in en.cells]
    for i, (a, b) in enumerate(zip(en.cells, zh.cells, strict=True)):
        assert b.metadata == a.metadata, i  # the `parameters` tag where papermill looks
        if a.cell_type == "code":
            assert code_shape(b.source) == code_shape(a.source), f"cell {i}: not the same code"
            assert b.outputs == [] and b.execution_count is None, f"cell {i} has outputs"
        else:
            assert CJK.search(b.source), f"cell {i} is not translated"


def test_the_chinese_plot_is_labelled_in_chinese():
    zh = nbformat.read(NOTEBOOKS / "zh-CN" / "02-train-on-a-gpu.ipynb", as_version=4)
    code = "\n".join(c.source for c in zh.cells if c.cell_type == "code")
    for label in ('label="训练"', 'label="验证"', 'set_xlabel("步数")', 'set_ylabel("损失")'):
        assert label in code


def test_a_new_home_gets_the_tutorials_in_its_users_language(tmp_path):
    (tmp_path / "zh-CN").mkdir()
    for name in ("01.ipynb", "shapes.py", "zh-CN/01.ipynb"):
        (tmp_path / name).write_text(name)
    files = [str(tmp_path / "01.ipynb"), str(tmp_path / "shapes.py")]
    assert tutorials_in(files, "zh_CN") == [str(tmp_path / "zh-CN" / "01.ipynb"), files[1]]
    assert tutorials_in(files, "en") == files
    # The workbench's own: every tutorial has its translation.
    own = [str(p) for p in ENGLISH]
    assert [Path(p).parent.name for p in tutorials_in(own, "zh_CN")] == ["zh-CN"] * len(own)
