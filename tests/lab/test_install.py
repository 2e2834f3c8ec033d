"""The extension is installed and enabled in the environment the sessions run in (.venv):
both halves, as `jupyter labextension list` and `jupyter server extension list` report."""

import re
import subprocess
import sys
from pathlib import Path

JUPYTER = str(Path(sys.executable).parent / "jupyter")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def jupyter(*args: str) -> str:
    r = subprocess.run([JUPYTER, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return ANSI.sub("", r.stdout + r.stderr)


def test_labextension_is_enabled():
    out = jupyter("labextension", "list")
    assert re.search(
        r"shangzhuang-lab v\d+\.\d+\.\d+\S* enabled OK \(python, shangzhuang-lab\)", out
    ), out


def test_server_extension_is_enabled():
    out = jupyter("server", "extension", "list")
    assert re.search(r"shangzhuang_lab enabled", out), out
    assert re.search(r"shangzhuang_lab \d+\.\d+\.\d+\S* OK", out), out


def test_the_installed_bundle_is_the_built_one():
    """Installed as a wheel (shared-data), not a stale or editable copy."""
    import shangzhuang_lab

    share = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "shangzhuang-lab"
    assert (share / "package.json").exists()
    assert (share / "static" / "style.js").exists()
    assert (share / "schemas" / "shangzhuang-lab" / "plugin.json").exists()
    assert Path(shangzhuang_lab.__file__).parent.parent.name == "site-packages"
