"""[tutorials]: which files a new home gets, checked when the config is read, and the copy
itself (owned by the new account, once: an existing account's home is left alone)."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import uuid

import pytest

from shangzhuang.hub.unix import copy_into_home, ensure_account
from shangzhuang.settings import TUTORIALS, SettingsError, parse_settings

PROFILE = {"profiles": [{"name": "cpu", "cores": 1, "memory": "1G"}]}


def settings_with(tutorials: dict, source="<config>"):
    return parse_settings({**PROFILE, "tutorials": tutorials}, source)


def test_default_copies_nothing_from_the_workbench_notebooks():
    t = settings_with({}).tutorials
    assert t.copy_to_new_homes == [] and t.files == [] and t.folder == "tutorials"
    assert (TUTORIALS / "01-welcome.ipynb").is_file()


def test_listed_tutorials_resolve_in_the_workbench_notebooks():
    t = settings_with({"copy_to_new_homes": ["01-welcome.ipynb", "shapes.py"]}).tutorials
    assert t.files == [TUTORIALS / "01-welcome.ipynb", TUTORIALS / "shapes.py"]


def test_a_site_folder_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "course").mkdir()
    (tmp_path / "course" / "lab1.ipynb").write_text("{}")
    cfg = tmp_path / "site.toml"
    t = settings_with({"source": "course", "copy_to_new_homes": ["lab1.ipynb"]}, cfg).tutorials
    assert t.files == [tmp_path / "course" / "lab1.ipynb"]


@pytest.mark.parametrize(
    "tutorials, message",
    [
        ({"copy_to_new_homes": ["nope.ipynb"]},
         "tutorials.copy_to_new_homes[0]: no file 'nope.ipynb' in"),
        ({"copy_to_new_homes": ["../etc/passwd"]},
         "tutorials.copy_to_new_homes: '../etc/passwd' is not a file name"),
        ({"folder": "/etc"}, "tutorials.folder: '/etc' must be a folder inside the home"),
        ({"folder": "a/../.."}, "must be a folder inside the home"),
        ({"copy_to_new_homes": "01-welcome.ipynb"}, "tutorials.copy_to_new_homes"),
    ],
)  # fmt: skip
def test_wrong_tutorials_are_named(tutorials, message):
    with pytest.raises(SettingsError) as e:
        settings_with(tutorials)
    assert message in str(e.value), str(e.value)


def test_copy_into_home_makes_the_folder_and_copies(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    src = tmp_path / "a.ipynb"
    src.write_text("{}")
    copies = copy_into_home([src], home, "tutorials/week1")
    assert copies == [home / "tutorials" / "week1" / "a.ipynb"]
    assert copies[0].read_text() == "{}" and copies[0].stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="creating Unix accounts needs root")
def test_a_new_account_gets_them_once_and_owns_them(tmp_path):
    name = f"szt{uuid.uuid4().hex[:8]}"
    home = tmp_path / name
    calls = []

    def fill(account):
        calls.append(account.pw_name)
        copy_into_home([TUTORIALS / "01-welcome.ipynb"], account.pw_dir, "tutorials",
                       account.pw_uid, account.pw_gid)  # fmt: skip

    try:
        account = asyncio.run(ensure_account(name, str(home), "t", on_create=fill))
        copy = home / "tutorials" / "01-welcome.ipynb"
        assert calls == [name] and copy.is_file()
        for p in (copy, copy.parent):
            assert (p.stat().st_uid, p.stat().st_gid) == (account.pw_uid, account.pw_gid)
        copy.unlink()  # the user deletes it: a later start does not bring it back
        asyncio.run(ensure_account(name, str(home), "t", on_create=fill))
        assert calls == [name] and not copy.exists()
    finally:
        if name in {p.pw_name for p in pwd.getpwall()}:
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
