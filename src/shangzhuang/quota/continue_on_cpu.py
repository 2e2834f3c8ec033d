"""Continue on CPU: a user stops her GPU session and starts it again on the site's CPU
profile (`quota.reclaim.cpu_profile`), same server name, so the same home and the same
address; what idle GPU reclaim (quota/reclaim.py) offers with its warning.

- GET  /services/quota/continue-on-cpu?server=NAME: a page that says what happens, with the
  button (the home page and the Lab's warning link here);
- POST the same (the page's form, with its `_xsrf`): done, then on to the hub's page that
  shows the new start;
- POST api/v1/users/NAME/continue-on-cpu {"server": ""} with a token: the same, as JSON.
Only for one's own session: the caller must be NAME. The quota service does it with its
own hub token (the quota-service role's `servers` scope).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import quote

from jupyterhub.utils import url_path_join
from pydantic import Field
from tornado import web

from shangzhuang.apps.hub_api import HubAPI, HubError
from shangzhuang.i18n import Message, jinja_environment
from shangzhuang.quota.consumers import Consumer
from shangzhuang.quota.ledger import rates_of
from shangzhuang.quota.openapi import operation
from shangzhuang.quota.pages import HERE
from shangzhuang.quota.service import APIHandler
from shangzhuang.quota.sources import session_consumer
from shangzhuang.services import Input
from shangzhuang.settings import Settings

log = logging.getLogger(__name__)
_jinja = jinja_environment(HERE / "templates")
STOP_SECONDS = 120  # a session that has not stopped by then is not started again


class NotPossible(Exception):
    """Why a session can't continue on CPU now (a Message the user reads); `status`."""

    def __init__(self, message: Message, status: int = 409):
        super().__init__(message)
        self.message = message
        self.status = status


class ContinueRequest(Input):
    server: str = Field("", max_length=255, description='the session\'s server name ("": default)')


def pending_url(user: str, server: str) -> str:
    """The hub's page that shows a start under way (and opens the session once it runs)."""
    return (
        "/hub/spawn-pending/"
        + quote(user, safe="")
        + ("/" + quote(server, safe="") if server else "")
    )


async def continue_on_cpu(hub: HubAPI, site: Settings, ledger, user: str, server: str) -> str:
    """Stop USER's running GPU session SERVER and start it on the CPU profile; returns the
    profile's name. NotPossible says why not (nothing is stopped then)."""
    cpu = site.reclaim_cpu_profile
    if cpu is None:
        raise NotPossible(Message("This site has no profile without GPUs to continue on."))
    model = await hub.server(user, server)
    if not model or not model.get("ready"):
        raise NotPossible(Message("This session is not running."), 404)
    try:
        profile = site.profile((model.get("user_options") or {}).get("profile"))
    except KeyError:
        profile = None
    if profile is not None and profile.gpus == 0:
        raise NotPossible(Message("This session already runs without GPUs."))
    minutes = ledger.policy.min_minutes_to_spawn
    if ledger.balance(user).can_afford(rates_of(cpu), minutes / 60):
        raise NotPossible(Message(
            "Your quota can't pay for {profile} for {minutes} minutes: the session keeps "
            "running as it is.", profile=cpu.title, minutes=minutes))  # fmt: skip
    await hub.stop(user, server)
    if not await hub.wait(user, server, STOP_SECONDS, ready=False):
        raise NotPossible(Message("The session did not stop in time; try again."), 503)
    await hub.start(user, server, cpu.name)
    log.info("%s's session %r continues on %s (was %s)", user, server, cpu.name,
             profile.name if profile else "?")  # fmt: skip
    return cpu.name


def in_force(warning, model: dict | None) -> bool:
    """Is this idle warning (reclaim.IdleWarning) about the run the hub's server `model`
    shows running now? Not once that run was stopped (reclaim keeps a stopped one's for
    the home page) or has ended, nor for a later run of the same server."""
    if warning.stopped_at is not None or not model or not model.get("ready"):
        return False
    consumer = Consumer.parse(warning.consumer)
    if consumer.source == "job":  # a Lab session on Slurm: the job its spawner started
        return str((model.get("state") or {}).get("job_id") or "") == consumer.job_id
    running = session_consumer(consumer.source, consumer.user, consumer.server, model)
    return running == warning.consumer


class ContinueAccess(APIHandler):
    @property
    def hub(self) -> HubAPI:
        return self.settings["hub_api"]

    async def continued(self, user: str, server: str) -> str:
        try:
            return await continue_on_cpu(self.hub, self.site, self.ledger, user, server)
        except HubError as e:
            log.error("continue on CPU for %s %r: the hub answered %s", user, server, e)
            raise web.HTTPError(502, f"the hub refused: {e.message}") from None


class ContinueApiHandler(ContinueAccess):
    @operation("Stop your running GPU session and start it again on the site's CPU profile "
               "(self only)", body=ContinueRequest, status=202)  # fmt: skip
    async def post(self, name, body: ContinueRequest):
        me = self.caller()
        if me.get("name") != name or me.get("kind") == "service":
            raise web.HTTPError(403, f"only {name} may move {name}'s sessions")
        try:
            profile = await self.continued(name, body.server)
        except NotPossible as e:
            raise web.HTTPError(e.status, str.__str__(e.message)) from None
        self.write_json(
            {"user": name, "server": body.server, "profile": profile,
             "progress_url": pending_url(name, body.server)}, status=202,
        )  # fmt: skip


class ContinuePage(ContinueAccess):
    """The page and its form: always the signed-in user's own session."""

    async def get(self):
        me = self.caller()
        await self.page(me["name"], self.get_argument("server", ""))

    async def post(self):
        me = self.caller()
        server = self.get_argument("server", "")
        try:
            await self.continued(me["name"], server)
        except NotPossible as e:
            self.set_status(e.status)
            return await self.page(me["name"], server, problem=e.message)
        self.redirect(pending_url(me["name"], server), status=303)

    async def page(self, user: str, server: str, problem: Message | None = None) -> None:
        from shangzhuang.quota.reclaim import Reclaim

        reclaim: Reclaim = self.settings["reclaim"]
        try:  # the warning is said only while the run it is about is running
            model = await self.hub.server(user, server)
        except HubError as e:
            log.warning("continue on CPU page for %s %r: the hub answered %s", user, server, e)
            model = None
        warning = next((w for w in reclaim.warnings(user).values()
                        if w.server == server and in_force(w, model)), None)  # fmt: skip
        prefix = self.settings["prefix"]
        cpu = self.site.reclaim_cpu_profile
        html = _jinja.get_template("continue.html").render(
            prefix=prefix, site=self.site.site.name, me=user, server=server, problem=problem,
            warning=warning and {"idle_since": _moment(warning.idle_since),
                                 "stops_at": _moment(warning.stops_at)},
            threshold=self.site.quota.reclaim.idle_threshold_percent,
            cpu=cpu.title if cpu else None, apps=self.site.apps.enabled,
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes)
            else self.xsrf_token,
        )  # fmt: skip
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


def _moment(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


API = [("/users/{name}/continue-on-cpu", ContinueApiHandler)]


def handlers(prefix: str) -> list:
    return [(url_path_join(prefix, "continue-on-cpu"), ContinuePage)]
