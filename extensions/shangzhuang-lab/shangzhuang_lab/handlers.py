"""The server extension's endpoints, under the server's base_url:

- GET shangzhuang/quota      GET me of the quota service, plus this session's part
- GET shangzhuang/usage      the newest charges (JSON)
- GET shangzhuang/usage.csv  the user's full usage as CSV (a download)
- GET shangzhuang/gpus       utilisation and memory of this session's GPUs (NVML)

Every method is @tornado.web.authenticated; tests/lab checks that each refuses anonymity.
"""

from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from .config import ShangzhuangLab
from .gpus import read_gpus
from .i18n import trans
from .quota import QuotaService, QuotaUnavailable


class QuotaAPIHandler(APIHandler):
    """JSON errors as {"status", "message"}, the way the quota service writes them."""

    @property
    def quota(self) -> QuotaService:
        return self.settings["shangzhuang_quota"]

    def unavailable(self, e: QuotaUnavailable) -> None:
        self.log.warning("shangzhuang_lab: %s", e.message)
        self.set_status(e.status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        message = trans.gettext("quota unavailable: {reason}").format(reason=e.message)
        self.finish(json.dumps({"status": e.status, "message": message}))

    def write_json(self, data) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))


class QuotaHandler(QuotaAPIHandler):
    @tornado.web.authenticated
    async def get(self):
        try:
            self.write_json(await self.quota.me())
        except QuotaUnavailable as e:
            self.unavailable(e)


class UsageHandler(QuotaAPIHandler):
    @tornado.web.authenticated
    async def get(self):
        try:
            self.write_json({"records": await self.quota.newest_charges()})
        except QuotaUnavailable as e:
            self.unavailable(e)


class UsageCSVHandler(QuotaAPIHandler):
    @tornado.web.authenticated
    async def get(self):
        user = self.quota.config.user or "me"
        started = False

        def start() -> None:
            nonlocal started
            started = True
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", f'attachment; filename="usage-{user}.csv"')
            self.set_header("Cache-Control", "no-store")

        def chunk(data: bytes) -> None:
            self.write(data)
            self.flush()

        try:
            await self.quota.stream_csv(start, chunk)
        except QuotaUnavailable as e:
            if started:  # the CSV had begun: all we can do is cut it short
                self.log.warning("shangzhuang_lab: usage CSV cut short: %s", e.message)
                return
            self.clear_header("Content-Disposition")
            self.unavailable(e)
            return
        self.finish()


class GpusHandler(QuotaAPIHandler):
    @tornado.web.authenticated
    async def get(self):
        self.write_json(await IOLoop.current().run_in_executor(None, read_gpus))


HANDLERS = {
    "quota": QuotaHandler,
    "usage": UsageHandler,
    "usage.csv": UsageCSVHandler,
    "gpus": GpusHandler,
}


def setup_handlers(web_app, config: ShangzhuangLab) -> None:
    base_url = web_app.settings["base_url"]
    web_app.settings["shangzhuang_quota"] = QuotaService(config)
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, "shangzhuang", path.replace(".", r"\.")), handler)
            for path, handler in HANDLERS.items()
        ],
    )
