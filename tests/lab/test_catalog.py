"""The Lab extension's zh_CN catalog (issue 14): JupyterLab's own string extraction
(jupyterlab-translate: gettext-extractor on the TypeScript, Babel on the Python and the
settings schema) finds no message the catalog lacks, and the JSON the wheel ships is the
catalog compiled. `make lab-catalog` updates both after a change of wording."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polib
from jupyterlab_translate.converters import convert_catalog_to_json

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "shangzhuang-lab"
MESSAGES = EXTENSION / "shangzhuang_lab" / "locale" / "zh_CN" / "LC_MESSAGES"
TRANSLATE = Path(sys.prefix, "bin", "jupyterlab-translate")


def keys(catalog: polib.POFile) -> set[tuple[str | None, str]]:
    return {(e.msgctxt, e.msgid) for e in catalog if not e.obsolete}


def test_every_message_of_the_extension_has_a_chinese_translation(tmp_path):
    # Extraction writes its template into the package: run it on a copy.
    copy = tmp_path / "shangzhuang-lab"
    built = shutil.ignore_patterns("labextension", "__pycache__")
    for name in ("src", "schema", "shangzhuang_lab"):
        shutil.copytree(EXTENSION / name, copy / name, ignore=built)
    for name in ("package.json", "pyproject.toml"):
        shutil.copy(EXTENSION / name, copy / name)
    subprocess.run(
        [TRANSLATE, "extract", str(copy), "shangzhuang_lab"], check=True, capture_output=True,
        env={"PATH": f"{TRANSLATE.parent}:/usr/local/bin:/usr/bin:/bin"}, timeout=300,
    )  # fmt: skip
    extracted = keys(polib.pofile(str(copy / "shangzhuang_lab" / "locale" / "shangzhuang_lab.pot")))
    catalog = polib.pofile(str(MESSAGES / "shangzhuang_lab.po"))
    translated = {(e.msgctxt, e.msgid) for e in catalog.translated_entries()}
    assert len(extracted) > 50  # the extraction did find our messages
    assert sorted(extracted - translated, key=str) == [], "run `make lab-catalog` and translate"
    assert sorted(keys(catalog) - extracted, key=str) == [], "messages no longer in the sources"


def test_the_shipped_json_is_the_catalog_compiled(tmp_path):
    shutil.copy(MESSAGES / "shangzhuang_lab.po", tmp_path)
    compiled = convert_catalog_to_json(tmp_path / "shangzhuang_lab.po", tmp_path, "shangzhuang_lab")
    shipped = json.loads((MESSAGES / "shangzhuang_lab.json").read_text())
    assert shipped == json.loads(compiled.read_text()), "run `make lab-catalog`"
    # What Lab's Gettext needs to pick it for zh_CN: the language as Lab names it.
    assert shipped[""]["language"] == "zh-CN" and shipped[""]["domain"] == "shangzhuang_lab"
