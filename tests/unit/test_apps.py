"""Voila apps without services: snapshots, the registry, who may view, the culler's arbiter,
the no-confirm list, the CLI's --share, the [apps] settings."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from shangzhuang.apps import is_app_server
from shangzhuang.apps.client import parse_share
from shangzhuang.apps.culling import culler_timeout, make_arbiter
from shangzhuang.apps.registry import App, AppError, Registry, Viewers, check_path
from shangzhuang.apps.snapshot import collect, decode
from shangzhuang.apps.spawn import NoConfirmClients
from shangzhuang.quota.consumers import Consumer
from shangzhuang.settings import SettingsError, parse_settings

PROFILES = [{"name": "cpu", "cores": 2, "memory": "4G"}, {"name": "gpu", "cores": 1,
            "memory": "2G", "gpus": 0}]  # fmt: skip


def notebook(folder: Path, files=None, name="app.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"shangzhuang": {"files": files}} if files is not None else {}
    path = folder / name
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4,
                                "nbformat_minor": 5}))  # fmt: skip
    return path


def test_snapshot_takes_the_notebook_and_what_it_declares(tmp_path):
    nb = notebook(tmp_path / "w", ["model.json", "data/*.csv", "assets"])
    (tmp_path / "w" / "model.json").write_text("{}")
    (tmp_path / "w" / "data").mkdir()
    (tmp_path / "w" / "data" / "a.csv").write_text("1")
    (tmp_path / "w" / "data" / "b.txt").write_text("not this")
    (tmp_path / "w" / "assets" / "img").mkdir(parents=True)
    (tmp_path / "w" / "assets" / "img" / "x.png").write_bytes(b"\x89PNG")
    (tmp_path / "w" / "secret.txt").write_text("never")
    snap = collect(nb)
    assert sorted(snap.files) == ["app.ipynb", "assets/img/x.png", "data/a.csv", "model.json"]
    assert sorted(decode(snap.encoded())) == sorted(snap.files)
    assert "extra.txt" not in collect(nb).files
    (tmp_path / "w" / "extra.txt").write_text("x")
    assert "extra.txt" in collect(nb, ["extra.txt"]).files


@pytest.mark.parametrize("pattern", ["../outside.txt", "/etc/passwd", "a/../../x"])
def test_snapshot_refuses_paths_outside_the_folder(tmp_path, pattern):
    nb = notebook(tmp_path / "w", [pattern])
    (tmp_path / "outside.txt").write_text("x")
    with pytest.raises(AppError):
        collect(nb)


def test_snapshot_refuses_links_out_and_missing_files(tmp_path):
    (tmp_path / "outside.txt").write_text("x")
    nb = notebook(tmp_path / "w", ["link.txt"])
    os.symlink(tmp_path / "outside.txt", tmp_path / "w" / "link.txt")
    with pytest.raises(AppError, match="leads outside"):
        collect(nb)
    with pytest.raises(AppError, match="matches no file"):
        collect(notebook(tmp_path / "v", ["nothing.bin"]))
    with pytest.raises(AppError, match="notebook"):
        collect(tmp_path / "outside.txt")


@pytest.mark.parametrize("bad", ["", "../x", "/x", "a//b", "a/./b", "a\\b"])
def test_registry_paths(bad):
    with pytest.raises(AppError):
        check_path(bad)


def test_registry_publishes_replaces_and_removes(tmp_path):
    reg = Registry(tmp_path / "apps")
    app = App(owner="olga@example.org", name="demo", notebook="app.ipynb")
    reg.publish(app, {"app.ipynb": b"{}", "data/x.csv": b"1"}, max_bytes=100)
    files = reg.files_dir("olga@example.org", "demo")
    assert (files / "data" / "x.csv").read_bytes() == b"1"
    assert oct((tmp_path / "apps").stat().st_mode & 0o777) == "0o711"
    reg.publish(app, {"app.ipynb": b"{2}"}, max_bytes=100)  # replaced whole
    assert not (files / "data").exists() and (files / "app.ipynb").read_bytes() == b"{2}"
    assert [a.name for a in reg.owned("olga@example.org")] == ["demo"]
    assert reg.get("olga@example.org", "demo").files == ["app.ipynb"]
    with pytest.raises(AppError, match="max_snapshot_bytes"):
        reg.publish(app, {"app.ipynb": b"x" * 101}, max_bytes=100)
    with pytest.raises(AppError, match="app name"):
        reg.app_dir("olga", "Bad Name")
    assert reg.get("olga", "../../etc") is None
    reg.remove("olga@example.org", "demo")
    assert reg.all() == []


def test_who_may_view():
    app = App(owner="olga", name="a", notebook="a.ipynb",
              viewers=Viewers(users=["vic"], groups=["physics"]))  # fmt: skip
    assert app.may_view({"name": "olga"}) and app.may_view({"name": "vic"})
    assert app.may_view({"name": "pat", "groups": ["physics"]})
    # An admin is one whose request holds admin:users; the flag alone (a narrow token's
    # owner) is not enough.
    assert app.may_view({"name": "root", "scopes": ["admin:users", "read:users"]})
    assert not app.may_view({"name": "root", "admin": True, "scopes": ["read:metrics"]})
    assert not app.may_view({"name": "sam", "groups": ["chemistry"]})
    assert not app.may_view(None)
    app.viewers = Viewers(signed_in=True)
    assert app.may_view({"name": "sam"}) and not app.may_view(None)
    app.viewers = Viewers(public=True)
    assert app.may_view(None)
    with pytest.raises(AppError):
        Viewers.from_dict({"users": "vic"})
    with pytest.raises(AppError):
        Viewers.from_dict({"everyone": True})


def test_share_specs():
    assert parse_share(["vic,user:ann", "group:physics", "signed-in"]) == {
        "users": ["vic", "ann"], "groups": ["physics"], "signed_in": True, "public": False,
    }  # fmt: skip
    assert parse_share(["public"])["public"] is True


def settings(tmp_path, apps: dict | None = None, hub: dict | None = None):
    data = {"profiles": PROFILES, "hub": {"state_dir": str(tmp_path / "state"), **(hub or {})}}
    if apps is not None:
        data["apps"] = apps
    return parse_settings(data, tmp_path / "site.toml")


def test_apps_settings(tmp_path):
    s = settings(tmp_path)
    assert s.apps.public_links is False and s.apps_folder == tmp_path / "apps"
    assert settings(tmp_path, {"folder": "srv/apps"}).apps_folder == tmp_path / "srv" / "apps"
    with pytest.raises(SettingsError, match="apps.profile"):
        settings(tmp_path, {"profile": "huge"})
    with pytest.raises(SettingsError, match="apps.port: port 8082"):
        settings(tmp_path, {"port": 8082})
    with pytest.raises(SettingsError, match="apps.server_prefix"):
        settings(tmp_path, {"server_prefix": "App/"})


def test_culler_arbiter(tmp_path):
    s = settings(tmp_path, {"idle_stop_seconds": 60}, {"idle_timeout_seconds": 3600})
    assert culler_timeout(s) == 60
    reg = Registry(s.apps_folder)
    reg.save(App(owner="olga", name="busy", notebook="a.ipynb", always_on=True))
    reg.save(App(owner="olga", name="idle", notebook="a.ipynb"))
    arbiter = make_arbiter(s)

    def cull(name, seconds):
        server = {"name": name, "full_name": f"olga/{name}"}
        return arbiter(inactive=timedelta(seconds=seconds), inactive_limit=60, server=server)

    assert cull("app-idle", 61) and not cull("app-idle", 59)
    assert not cull("app-busy", 10**6)  # always on
    assert not cull("", 61) and cull("", 3601)  # a Lab session keeps its own limit
    s = settings(tmp_path, {"idle_stop_seconds": 0}, {"idle_timeout_seconds": 0})
    assert culler_timeout(s) == 0


def test_no_confirm_clients_are_services_and_published_apps(tmp_path):
    reg = Registry(tmp_path)
    reg.save(App(owner="a-app-b", name="x", notebook="n.ipynb"))
    reg.save(App(owner="olga@example.org", name="demo", notebook="n.ipynb"))
    clients = NoConfirmClients({"service-quota"}, reg, "app-")
    assert "service-quota" in clients
    assert "jupyterhub-user-olga%40example.org-app-demo" in clients
    assert "jupyterhub-user-a-app-b-app-x" in clients  # the owner's name holds the marker
    assert "jupyterhub-user-olga%40example.org-app-other" not in clients  # not published
    assert "jupyterhub-user-olga%40example.org" not in clients  # her Lab
    assert "jupyterhub-user-olga%40example.org-lab2" not in clients


def test_app_ids():
    assert str(Consumer.session("app", "olga", "app-demo", 1.5)) == "app:olga/app-demo@1500"
    assert is_app_server("app-demo", "app-") and not is_app_server("app-", "app-")
    assert not is_app_server("lab", "app-")


class CullingHub:
    """A stand-in for HubAPI (the calls Apps.start makes) whose app server the idle culler
    is stopping: the first start is refused with JupyterHub's "pending stop" (the culler's
    DELETE came between our look and our POST), as a busy machine made happen in
    test_apps_idle."""

    def __init__(self):
        self.starts = 0

    async def server(self, owner, server):
        return {"ready": False, "pending": None, "stopped": True}

    async def start(self, owner, server, profile):
        from shangzhuang.apps.hub_api import HubError

        self.starts += 1
        if self.starts == 1:
            raise HubError(400, f"{owner}/{server} is pending stop")

    async def wait(self, owner, server, timeout, ready=True):
        return True


def test_an_app_stopping_as_a_viewer_comes_is_started_again(tmp_path):
    import asyncio

    from shangzhuang.apps.service import Apps

    hub = CullingHub()
    apps = Apps(settings(tmp_path), hub, "/services/apps/")
    app = App(owner="olga", name="demo", notebook="app.ipynb")
    assert asyncio.run(apps.start(app)) == ""
    assert hub.starts == 2


@pytest.mark.parametrize(
    "accept, cookie, lang",
    [("zh-CN,zh;q=0.9,en;q=0.8", None, "zh"), ("en-US,en;q=0.9", None, "en"), (None, None, "en"),
     ("en-US", "zh_CN", "zh"), ("zh-TW", "en", "en")],
)  # fmt: skip
def test_an_app_page_declares_its_viewers_language(accept, cookie, lang):
    """nbconvert writes `<html lang="{{ resources.language_code }}">`, "en" unless told; the
    app server tells the page's exporter the viewer's language (tests/integration/test_apps.py
    reads it on a real app page)."""
    from tornado.httputil import HTTPHeaders, HTTPServerRequest
    from traitlets.config import Config
    from voila.exporter import VoilaExporter

    from shangzhuang.apps.server import page_language

    headers = HTTPHeaders()
    if accept:
        headers["Accept-Language"] = accept
    if cookie:
        headers["Cookie"] = f"shangzhuang-language={cookie}"
    assert page_language(HTTPServerRequest(uri="/", headers=headers)) == lang
    config = Config()
    config.HTMLExporter.language_code = lang  # as AppPageHandler.get sets it
    assert VoilaExporter(config=config).language_code == lang
