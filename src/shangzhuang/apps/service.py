"""The apps service: a JupyterHub-managed Tornado service at /services/apps/.

- `GET  /services/apps/`                      the apps page: apps I own, apps shared with me
- `GET  /services/apps/open/OWNER/NAME`       an app's link: checks who may view it, grants
  "anyone signed in" viewers their share, starts the app if it is stopped, then sends the
  browser to the app on its owner's origin, http://OWNER.<hub host>/user/OWNER/{prefix}NAME/
- `POST /services/apps/unpublish/OWNER/NAME`  the page's unpublish button
- `GET  /services/apps/api/apps`              the same lists as JSON
- `GET|PUT|PATCH|DELETE /services/apps/api/apps/OWNER/NAME`  one app; PUT publishes (the
  snapshot, who may view, profile), PATCH changes description, viewers or (admins only)
  always_on, DELETE unpublishes

Publishing and unpublishing need a token (or login) that may manage the owner's servers
(`servers!user=OWNER`): the owner's own token, their Lab session's, or an admin's. Sharing
happens only here, only for app servers: users are not given JupyterHub's `shares` scope,
which would let them share their Lab (files, terminals) by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import jinja2
from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web

from shangzhuang.apps.hub_api import HubAPI, HubError
from shangzhuang.apps.registry import App, AppError, Registry, Viewers, check_name
from shangzhuang.apps.snapshot import decode
from shangzhuang.i18n import Message, jinja_environment, request_language
from shangzhuang.services import APIHandler as JSONHandler
from shangzhuang.services import ServiceHandler, is_admin, run_service
from shangzhuang.settings import Settings, load_settings

log = logging.getLogger("shangzhuang.apps")
TEMPLATES = Path(__file__).parent / "templates" / "service"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Apps:
    """What the service does, apart from HTTP: publish, share, start, unpublish."""

    def __init__(self, settings: Settings, hub: HubAPI, prefix: str, hub_prefix: str = "/"):
        self.settings = settings
        self.hub = hub
        self.registry = Registry(settings.apps_folder)
        self.server_prefix = settings.apps.server_prefix
        self.prefix = prefix  # the service's URL prefix, /services/apps/
        self.hub_prefix = hub_prefix  # the site's base URL, /
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, owner: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((owner, name), asyncio.Lock())

    def server(self, app: App) -> str:
        return app.server_name(self.server_prefix)

    def open_url(self, app: App) -> str:
        return url_path_join(self.prefix, "open", quote(app.owner, safe=""), app.name)

    def server_url(self, app: App) -> str:
        """The app itself, on its owner's origin (never the hub's: its outputs are theirs)."""
        path = url_path_join(self.hub_prefix, "user", quote(app.owner, safe=""), self.server(app))
        return self.settings.hub.user_origin(app.owner) + path + "/"

    def public(self, app: App) -> bool:
        return app.viewers.public and self.settings.apps.public_links

    def model(self, app: App, server: dict | None, full: bool) -> dict:
        out = {
            "owner": app.owner, "name": app.name, "description": app.description,
            "url": self.open_url(app), "server_url": self.server_url(app),
            "full_url": self.settings.hub.url + self.open_url(app),
            "running": bool(server and server.get("ready")), "published": iso(app.published),
            "access": app.viewers.describe(), "always_on": app.always_on,
        }  # fmt: skip
        if full:
            out.update(
                notebook=app.notebook, profile=app.profile, files=app.files, size=app.size,
                viewers=vars(app.viewers),
            )  # fmt: skip
        return out

    # --- publishing ---------------------------------------------------------------------
    def profile_for(self, name: str | None) -> str:
        """The profile an app runs on: the one asked for, else the site's apps.profile."""
        try:
            return self.settings.profile(name or self.settings.apps.profile).name
        except KeyError as e:
            raise AppError(f"profile: {e.args[0]}") from None

    async def publish(self, owner: str, name: str, body: dict, admin: bool) -> tuple[App, str]:
        """Store the snapshot, start the app, share it; returns (app, a note on starting)."""
        unknown = set(body) - {"notebook", "files", "description", "viewers", "profile",
                               "always_on"}  # fmt: skip
        if unknown:
            raise AppError(f"unknown field(s): {', '.join(sorted(unknown))}")
        check_name(name)
        notebook = body.get("notebook")
        if not isinstance(notebook, str) or not notebook.endswith(".ipynb"):
            raise AppError("notebook: the name of the app's notebook (.ipynb) in files")
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > 2000:
            raise AppError("description: text of at most 2000 characters")
        viewers = Viewers.from_dict(body.get("viewers"))
        self.check_viewers(viewers)
        files = decode(body.get("files"))
        previous = self.registry.get(owner, name)
        always_on = body.get("always_on", previous.always_on if previous else False)
        self.check_always_on(always_on, previous, admin)
        most = self.settings.apps.max_apps_per_user
        if previous is None and len(self.registry.owned(owner)) >= most:
            raise AppError(
                f"{owner} has {most} apps, the most this site "
                "allows (apps.max_apps_per_user): unpublish one first"
            )
        if await self.hub.user(owner) is None:
            raise AppError(f"no hub user {owner!r}")
        app = App(
            owner=owner, name=name, notebook=notebook, description=description,
            profile=self.profile_for(body.get("profile")), viewers=viewers, always_on=always_on,
        )  # fmt: skip
        async with self.lock(owner, name):
            await self.hub.stop(owner, self.server(app))  # a new snapshot: a fresh server
            await self.hub.wait(owner, self.server(app), 60, ready=False)
            self.registry.publish(app, files, self.settings.apps.max_snapshot_bytes)
            note = await self.start(app)
            await self.sync_shares(app)
        log.info("%s published %s/%s (%s)", owner, owner, name, app.viewers.describe())
        return app, note

    def check_viewers(self, viewers: Viewers) -> None:
        if viewers.public and not self.settings.apps.public_links:
            raise AppError(
                "viewers.public: this site does not allow public links (apps.public_links); "
                "share with users, groups or anyone signed in"
            )

    @staticmethod
    def check_always_on(always_on: object, previous: App | None, admin: bool) -> None:
        if not isinstance(always_on, bool):
            raise AppError("always_on must be true or false")
        if always_on != (previous.always_on if previous else False) and not admin:
            raise web.HTTPError(403, "only an admin can keep an app always on")

    async def update(self, app: App, body: dict, admin: bool) -> App:
        unknown = set(body) - {"description", "viewers", "always_on"}
        if unknown:
            raise AppError(f"unknown field(s): {', '.join(sorted(unknown))}")
        async with self.lock(app.owner, app.name):
            was_public = self.public(app)
            if "description" in body:
                if not isinstance(body["description"], str):
                    raise AppError("description must be text")
                app.description = body["description"]
            if "viewers" in body:
                app.viewers = Viewers.from_dict(body["viewers"])
                self.check_viewers(app.viewers)
            if "always_on" in body:
                self.check_always_on(body["always_on"], app, admin)
                app.always_on = body["always_on"]
            self.registry.save(app)
            await self.sync_shares(app)
            if self.public(app) != was_public:  # served with or without sign-in: restart
                await self.hub.stop(app.owner, self.server(app))
                await self.hub.wait(app.owner, self.server(app), 60, ready=False)
                await self.start(app)
            elif app.always_on:
                await self.start(app)
        return app

    async def start(self, app: App) -> str:
        """Start the app's server unless it runs; '' or the reason it could not start. One
        that is being stopped (by the idle culler, maybe between our look and our start)
        is waited for and started again."""
        server = self.server(app)
        for _ in range(3):
            model = await self.hub.server(app.owner, server)
            if model and model.get("pending") == "stop":
                await self.hub.wait(app.owner, server, 60, ready=False)
                continue
            if model and (model.get("ready") or model.get("pending")):
                return ""
            try:
                await self.hub.start(app.owner, server, app.profile)
            except HubError as e:
                if e.status == 400 and "already" in e.message:  # another visit started it
                    return ""
                if e.status == 400 and "pending stop" in e.message:
                    await self.hub.wait(app.owner, server, 60, ready=False)
                    continue
                log.warning("could not start %s/%s: %s", app.owner, app.name, e.message)
                return e.message
            return ""
        return "The app was stopped each time it was started."

    async def sync_shares(self, app: App) -> None:
        """Make JupyterHub's shares of the app's server match who may view it. Users who
        came in through an "anyone signed in" link keep their share while it stays so."""
        server = self.server(app)
        if await self.hub.server(app.owner, server) is None:
            return  # no server yet (it could not be created): shared when it is
        want = {("user", u) for u in app.viewers.users} | {("group", g) for g in app.viewers.groups}
        have = set(await self.hub.shares(app.owner, server))
        for kind, name in sorted(want - have):
            try:
                await self.hub.grant(app.owner, server, kind, name)
            except HubError as e:
                raise AppError(f"can't share with {kind} {name!r}: {e.message}") from None
        for kind, name in sorted(have - want):
            if kind == "user" and app.viewers.signed_in:
                continue
            await self.hub.revoke(app.owner, server, kind, name)

    async def unpublish(self, app: App) -> None:
        async with self.lock(app.owner, app.name):
            await self.hub.remove(app.owner, self.server(app))
            await self.hub.wait(app.owner, self.server(app), 60, ready=False)
            self.registry.remove(app.owner, app.name)
        log.info("unpublished %s/%s", app.owner, app.name)

    # --- viewing ------------------------------------------------------------------------
    def visible_to(self, user: dict) -> tuple[list[App], list[App]]:
        """(apps the user owns, apps they may view: shared with them, open to every
        signed-in user, or every app for an admin)."""
        owned, shared = [], []
        for app in self.registry.all():
            if app.owner == user["name"]:
                owned.append(app)
            elif (
                user["name"] in app.viewers.users
                or set(user.get("groups") or ()) & set(app.viewers.groups)
                or app.viewers.signed_in
                or self.public(app)
                or is_admin(user)
            ):
                shared.append(app)
        return owned, shared

    async def servers_of(self, apps: list[App]) -> dict[tuple[str, str], dict]:
        out = {}
        for owner in sorted({a.owner for a in apps}):
            user = await self.hub.user(owner) or {}
            for name, model in (user.get("servers") or {}).items():
                out[(owner, name)] = model
        return out

    async def grant_visitor(self, app: App, user: dict) -> None:
        """An "anyone signed in" app opened by someone not named: JupyterHub needs a share."""
        named = user["name"] in app.viewers.users or set(user.get("groups") or ()) & set(
            app.viewers.groups
        )
        if user["name"] == app.owner or is_admin(user) or named:
            return
        await self.hub.grant(app.owner, self.server(app), "user", user["name"])


class BaseHandler(ServiceHandler):
    @property
    def apps(self) -> Apps:
        return self.settings["apps"]

    @staticmethod
    def is_admin(user: dict) -> bool:
        return is_admin(user)

    def may_manage(self, user: dict, owner: str) -> bool:
        """May this caller publish and unpublish OWNER's apps (manage their servers)?"""
        return bool(self.hub_auth.check_scopes({f"servers!user={owner}"}, user))

    def app_or_404(self, owner: str, name: str) -> App:
        try:
            app = self.apps.registry.get(owner, check_name(name))
        except AppError:
            app = None
        if app is None:
            raise web.HTTPError(404, f"no app {owner}/{name}")
        return app

    def render(self, name: str, status: int = 200, **ns) -> None:
        env: jinja2.Environment = self.settings["jinja"]
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            env.get_template(name).render(
                site=self.apps.settings.site.name, prefix=self.apps.prefix,
                hub=url_path_join(self.apps.hub_prefix, "hub/"),
                xsrf_form_html=self.xsrf_form_html, **ns,
            )
        )  # fmt: skip


class APIHandler(BaseHandler, JSONHandler):
    """JSON in, JSON out, errors as services.Error (the quota service's shape)."""


class AppsAPIHandler(APIHandler):
    async def get(self):
        me = self.caller()
        every = self.get_argument("all", "") in ("1", "true")
        if every and not self.is_admin(me):
            raise web.HTTPError(403, "only admins may list every app")
        owned, shared = (self.apps.registry.all(), []) if every else self.apps.visible_to(me)
        servers = await self.apps.servers_of(owned + shared)
        srv = self.apps.server

        def model(app, full):
            return self.apps.model(app, servers.get((app.owner, srv(app))), full)

        self.write_json(
            {
                "user": me["name"],
                "owned": [model(a, True) for a in owned],
                "shared": [model(a, False) for a in shared],
                "public_links": self.apps.settings.apps.public_links,
                "profiles": [p.name for p in self.apps.settings.profiles],
                "default_profile": self.apps.profile_for(None),
            }
        )


class AppAPIHandler(APIHandler):
    async def get(self, owner, name):
        me = self.caller()
        app = self.app_or_404(owner, name)
        if not app.may_view(me, self.apps.settings.apps.public_links):
            raise web.HTTPError(404, f"no app {owner}/{name}")
        server = await self.apps.hub.server(owner, self.apps.server(app))
        self.write_json(self.apps.model(app, server, full=self.may_manage(me, owner)))

    def manager(self, owner: str) -> dict:
        me = self.caller()
        if not self.may_manage(me, owner):
            raise web.HTTPError(
                403,
                f"publishing and unpublishing {owner}'s apps needs a token that may manage "
                f"{owner}'s servers (scope servers!user={owner})",
            )
        return me

    async def put(self, owner, name):
        me = self.manager(owner)
        existed = self.apps.registry.get(owner, name) is not None
        try:
            app, note = await self.apps.publish(owner, name, self.json_object(), self.is_admin(me))
        except AppError as e:
            raise web.HTTPError(400, str(e)) from None
        server = await self.apps.hub.server(owner, self.apps.server(app))
        model = self.apps.model(app, server, full=True)
        model["start_error"] = note
        self.write_json(model, status=200 if existed else 201)

    async def patch(self, owner, name):
        me = self.manager(owner)
        app = self.app_or_404(owner, name)
        try:
            app = await self.apps.update(app, self.json_object(), self.is_admin(me))
        except AppError as e:
            raise web.HTTPError(400, str(e)) from None
        server = await self.apps.hub.server(owner, self.apps.server(app))
        self.write_json(self.apps.model(app, server, full=True))

    async def delete(self, owner, name):
        self.manager(owner)
        await self.apps.unpublish(self.app_or_404(owner, name))
        self.set_status(204)
        self.finish()


class AppsPageHandler(BaseHandler):
    async def get(self):
        me = self.caller()
        owned, shared = self.apps.visible_to(me)
        servers = await self.apps.servers_of(owned + shared)

        def rows(apps, full):
            return [
                self.apps.model(a, servers.get((a.owner, self.apps.server(a))), full) for a in apps
            ]

        self.render(
            "apps.html", user=me, owned=rows(owned, True), shared=rows(shared, False),
            can_manage=self.may_manage(me, me["name"]),
        )  # fmt: skip


class UnpublishPageHandler(BaseHandler):
    async def post(self, owner, name):
        me = self.caller()
        if not self.may_manage(me, owner):
            raise web.HTTPError(403, f"only {owner} (or an admin) can unpublish this app")
        await self.apps.unpublish(self.app_or_404(owner, name))
        self.redirect(self.apps.prefix)


class OpenHandler(BaseHandler):
    """An app's link: may you view it? then start it if need be, and go there."""

    async def get(self, owner, name):
        try:
            app = self.app_or_404(owner, name)
        except web.HTTPError:
            self.render("message.html", 404, title=Message("No such app"),
                        message=Message("There is no app {owner}/{name} (any more).",
                                        owner=owner, name=name))  # fmt: skip
            return
        apps = self.apps
        if not apps.public(app):
            me = self.caller()
            if not app.may_view(me, self.apps.settings.apps.public_links):
                message = Message("{owner}'s app {name} is not shared with {viewer}.",
                                  owner=owner, name=name, viewer=me["name"])  # fmt: skip
                self.render("message.html", 403, title=Message("Not shared with you"),
                            message=message)  # fmt: skip
                return
            if app.viewers.signed_in:
                await apps.grant_visitor(app, me)
        # Twice: an app stopped (idle) just as it came up is started again, as a viewer
        # pressing reload would.
        for _ in range(2):
            server = await apps.hub.server(owner, apps.server(app))
            if server and server.get("ready"):
                self.redirect(apps.server_url(app))
                return
            problem = await apps.start(app)
            if problem:
                self.render("message.html", 503,
                            title=Message("{name} can't start now", name=app.name),
                            message=self.start_problem(app, problem))  # fmt: skip
                return
            if await apps.hub.wait(owner, apps.server(app), self.settings["open_wait"]):
                self.redirect(apps.server_url(app))
                return
            server = await apps.hub.server(owner, apps.server(app))
            if server and server.get("pending"):
                self.render("starting.html", 202, app=apps.model(app, server, False))
                return
        self.render("message.html", 503, title=Message("{name} can't start now", name=app.name),
                    message=Message("The app stopped while starting. Try again in a minute; "
                                    "if it keeps failing, tell its owner."))  # fmt: skip

    def start_problem(self, app: App, problem: str) -> str:
        me = self.current_user or {}
        if me.get("name") == app.owner or is_admin(me):
            return problem  # the owner sees the hub's full reason (quota, GPUs...)
        if "quota" in problem.lower():
            return Message(
                "{owner} has no compute quota left to run this app right now.", owner=app.owner
            )
        return Message(
            "The app could not start. Try again in a minute; if it keeps failing, tell its owner."
        )


def make_app(settings: Settings, hub: HubAPI, prefix: str, hub_prefix: str = "/"):
    apps = Apps(settings, hub, prefix, hub_prefix)
    env = jinja_environment(TEMPLATES)  # translated like the hub's (shangzhuang.i18n)
    app_path = r"([^/]+)/([a-z0-9][a-z0-9-]*)"
    return web.Application(
        [
            (prefix, AppsPageHandler),
            (url_path_join(prefix, f"open/{app_path}/?"), OpenHandler),
            (url_path_join(prefix, f"unpublish/{app_path}"), UnpublishPageHandler),
            (url_path_join(prefix, "api/apps"), AppsAPIHandler),
            (url_path_join(prefix, f"api/apps/{app_path}"), AppAPIHandler),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        apps=apps,
        jinja=env,
        open_wait=60,
        cookie_secret=os.urandom(32),
        xsrf_cookies=True,
        # Each request's language (cookie on the hub's host, Accept-Language): i18n.
        transforms=[request_language(settings.site.language, settings.site.timezone)],
        # A publish carries the snapshot (base64): room for apps.max_snapshot_bytes.
        max_body_size=int(settings.apps.max_snapshot_bytes * 1.4) + 1024**2,
    )


async def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s apps] %(message)s"
    )
    settings = load_settings()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/apps/")
    hub = HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/")
    app = make_app(settings, hub, prefix, hub_prefix)
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", f"http://127.0.0.1:{settings.apps.port}")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    app.listen(port, address="127.0.0.1", max_body_size=app.settings["max_body_size"])
    log.info("apps service on %s%s (apps in %s)", url, prefix, settings.apps_folder)
    await asyncio.Event().wait()


if __name__ == "__main__":
    run_service(main, "apps")
