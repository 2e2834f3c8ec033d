"""The frontend's unit tests (jest) run from pytest, so that `make test` runs them; and the
Python mirror of the status bar text that tests/e2e uses agrees with the TypeScript."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.quota_text import format_hours, status_text

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "shangzhuang-lab"
CASES = json.loads((EXTENSION / "src" / "__tests__" / "format-cases.json").read_text())


def jlpm() -> str:
    """JupyterLab's bundled yarn, from the environment running the tests."""
    path = Path(sys.executable).parent / "jlpm"
    return str(path) if path.exists() else (shutil.which("jlpm") or "jlpm")


def test_jest():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if not (EXTENSION / "node_modules" / ".bin" / "jest").exists():
        subprocess.run([jlpm(), "install", "--immutable"], cwd=EXTENSION, env=env, check=True)
    r = subprocess.run(
        [jlpm(), "test", "--ci", "--colors=false"], cwd=EXTENSION, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "failed" not in out.split("Tests:")[-1].split("\n")[0], out[-2000:]


@pytest.mark.parametrize("hours, text", CASES["formatHours"])
def test_python_mirror_formats_hours_like_the_frontend(hours, text):
    assert format_hours(hours) == text


@pytest.mark.parametrize("remaining, text", CASES["statusText"])
def test_python_mirror_writes_the_status_text_like_the_frontend(remaining, text):
    assert status_text(remaining) == text
