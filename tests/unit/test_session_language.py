"""What session.py gives a Lab session for the user's language (issue 14): JupyterLab's
setting defaults, read back through jupyterlab_server itself, and a matplotlib that draws
Chinese labels with real glyphs (Debian's fonts-noto-cjk, which `make install` installs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shangzhuang import session

LOCALE = "@jupyterlab/translation-extension:plugin"
NOTIFICATION = "@jupyterlab/apputils-extension:notification"


@pytest.mark.parametrize("language", ["zh_CN", "en"])
def test_lab_opens_in_the_hubs_language_without_the_news_prompt(tmp_path, language):
    env = session.lab_settings(tmp_path / "config", {"SHANGZHUANG_LANGUAGE": language})
    # jupyterlab_server's own reading of the overrides, as the Lab server does at start.
    code = (
        "import json, jupyterlab_server.settings_utils as s;"
        "print(json.dumps(s._get_overrides(sys.argv[1])[0]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys;" + code, str(tmp_path / "no-app-settings")],
        env={"JUPYTER_CONFIG_PATH": env["JUPYTER_CONFIG_PATH"], "HOME": str(tmp_path)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    overrides = json.loads(out.stdout)
    assert overrides[LOCALE] == {"locale": language}
    assert overrides[NOTIFICATION] == {"fetchNews": "false", "checkForUpdates": False}


def test_no_language_from_the_hub_leaves_labs_own_choice():
    defaults = session.lab_defaults(None)
    assert LOCALE not in defaults and NOTIFICATION in defaults
    assert LOCALE not in session.lab_defaults("fr")  # not one the workbench offers


def test_the_sessions_config_path_keeps_what_was_there(tmp_path):
    env = session.lab_settings(tmp_path / "c", {"JUPYTER_CONFIG_PATH": "/site/etc"})
    assert env["JUPYTER_CONFIG_PATH"].split(":") == [str(tmp_path / "c"), "/site/etc"]


def test_a_users_own_matplotlibrc_is_left_alone(tmp_path):
    assert session.matplotlib_settings(tmp_path, {}) == {"MATPLOTLIBRC": str(session.MATPLOTLIBRC)}
    own = tmp_path / ".config" / "matplotlib" / "matplotlibrc"
    own.parent.mkdir(parents=True)
    own.write_text("font.size: 14\n")
    assert session.matplotlib_settings(tmp_path, {}) == {}
    assert session.matplotlib_settings(tmp_path / "x", {"MATPLOTLIBRC": "/mine"}) == {}


def test_the_sessions_matplotlib_draws_chinese_labels(tmp_path):
    """With the workbench's matplotlibrc, a Chinese title renders without a missing glyph
    (matplotlib warns 'Glyph ... missing from font(s)' and draws boxes otherwise)."""
    code = """
import matplotlib
matplotlib.use("agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.set_title("训练损失 (loss) 随步数变化")
ax.set_xlabel("步数")
fig.savefig(__import__("sys").argv[1])
"""
    # PATH as sessions have it: matplotlib finds Noto's .ttc collections through fc-list.
    env = {"HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path / "mpl"), "PATH": "/usr/bin:/bin"}
    env |= session.matplotlib_settings(tmp_path, env)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.png")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "missing from font" not in out.stderr, out.stderr[-2000:]
    assert (tmp_path / "t.png").stat().st_size > 0
