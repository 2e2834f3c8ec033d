"""Publish as app: the Lab side of the workbench's Voila apps (shangzhuang.apps).

- GET  shangzhuang/apps          this user's apps and what the site allows (for the dialog)
- POST shangzhuang/apps/publish  {path, name, description, viewers, files, profile}: take the
  notebook (a path under this server's root) and the files it declares, and publish them
  through the apps service with this session's hub token ($JUPYTERHUB_API_TOKEN, whose
  scopes include servers!user and access to the apps service)

Both are @tornado.web.authenticated; tests/lab checks that they refuse anonymity.
"""

from __future__ import annotations

import json
from pathlib import Path

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from .i18n import trans


class AppsAPIHandler(APIHandler):
    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.write_json({"status": status, "message": message})

    def write_json(self, data) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    async def apps_call(self, fn):
        """Run a call of shangzhuang.apps' client off the event loop; errors as JSON."""
        try:
            from shangzhuang.apps.client import AppsAPIError, AppsClient
            from shangzhuang.apps.registry import AppError
        except ImportError:
            self.fail(501, "publishing apps needs the shangzhuang package in this environment")
            return None
        try:
            client = AppsClient()
            return await IOLoop.current().run_in_executor(None, fn, client)
        except AppError as e:
            self.fail(400, str(e))
        except AppsAPIError as e:
            self.fail(e.status if 400 <= e.status < 500 else 502, e.message)
        return None


class AppsHandler(AppsAPIHandler):
    @tornado.web.authenticated
    async def get(self):
        listing = await self.apps_call(lambda client: client.list())
        if listing is not None:
            self.write_json(listing)


class PublishHandler(AppsAPIHandler):
    @tornado.web.authenticated
    async def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            return self.fail(400, trans.gettext("the body must be JSON"))
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            message = trans.gettext("path: the notebook to publish, relative to the server's root")
            return self.fail(400, message)
        root = Path(self.contents_manager.root_dir).resolve()
        notebook = (root / body["path"].lstrip("/")).resolve()
        if not notebook.is_relative_to(root) or not notebook.is_file():
            message = trans.gettext("no notebook {path!r} here").format(path=body["path"])
            return self.fail(404, message)
        files = body.get("files") or []
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            message = trans.gettext("files: a list of paths or patterns beside the notebook")
            return self.fail(400, message)

        def publish(client):
            from shangzhuang.apps.snapshot import collect

            snapshot = collect(notebook, files)
            return client.publish(
                str(body.get("name") or ""), snapshot,
                description=str(body.get("description") or ""),
                viewers=body.get("viewers") or {}, profile=str(body.get("profile") or ""),
            )  # fmt: skip

        app = await self.apps_call(publish)
        if app is not None:
            self.log.info("shangzhuang_lab: published %s as app %s", body["path"], app["name"])
            self.write_json(app)


PUBLISH_HANDLERS = {"apps": AppsHandler, "apps/publish": PublishHandler}


def setup_publish_handlers(web_app) -> None:
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, "shangzhuang", path), handler)
            for path, handler in PUBLISH_HANDLERS.items()
        ],
    )
