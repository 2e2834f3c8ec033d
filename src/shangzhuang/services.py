"""What the workbench's hub-managed services (quota, apps) share: who is calling, and
what they may do.

Callers come with a JupyterHub token or the hub's OAuth cookie; nobody gets in without.
One rule for both services:
- admin is a scope of the request (`admin:users`, which JupyterHub's admin role holds),
  never the owner's admin flag: an admin's token made for metrics only is not an admin;
- the XSRF check is skipped only when a token actually authenticated the request; a
  cookie-authenticated request that changes state needs `_xsrf` (or X-XSRFToken), whatever
  other headers it carries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from pydantic import BaseModel, ConfigDict, ValidationError
from tornado import web
from tornado.httputil import url_concat

Model = TypeVar("Model", bound=BaseModel)

# Admin in our services = the request holds `admin:users`. API tokens carry it when made
# with the admin's full rights; browsers through the services' OAuth tokens, since both
# services list it in their oauth_client_allowed_scopes (hub/__init__.py): JupyterHub 6.1.1
# grants a client's scope only to a user who holds it (the admin role does), so a
# non-admin's cookie token simply lacks it. Not a custom scope: JupyterHub won't add
# scopes to its admin role ("Cannot override admin role"), and a role of our own would not
# follow admins made or unmade on the admin page.
ADMIN_SCOPE = "admin:users"


class AdminScopeWithheld(logging.Filter):
    """For the hub's log: JupyterHub 6.1.1 warns whenever it issues a service's OAuth token
    without a scope the service asks for ("Service ... requested scopes A,B for user U,
    granting only ..."). Our services ask for ADMIN_SCOPE, so every non-admin opening the
    quota or apps page got that warning: when ADMIN_SCOPE is all that was withheld, it is
    logged at INFO instead."""

    NOTICE = re.compile(r"requested scopes (\S+) for user \S+, granting only (\S*)\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            m = self.NOTICE.search(record.getMessage())
            if m and set(m[1].split(",")) - set(m[2].split(",")) == {ADMIN_SCOPE}:
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


ADMIN_SCOPE_WITHHELD = AdminScopeWithheld()  # one instance: adding it twice adds it once


def is_admin(caller: dict) -> bool:
    """Does this request (its token, or the OAuth token behind its cookie) act as an admin?"""
    return ADMIN_SCOPE in (caller.get("scopes") or ())


class ServiceHandler(HubOAuthenticated, web.RequestHandler):
    """Base of every handler of our services."""

    _asked_hub = False

    async def prepare(self):
        # Who is calling, asked of the hub without blocking the event loop (HubAuth's own
        # get_current_user waits on a thread); cached by HubAuth like its sync path. A
        # cookie on an unsafe method counts only with a valid XSRF token (HubOAuth checks
        # it through check_xsrf_cookie below, now that it knows how the caller came).
        self._asked_hub = True
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None

    def check_xsrf_cookie(self):
        # Tornado (xsrf_cookies=True) calls this before prepare(), when nobody knows yet
        # whether a token authenticates the request: the check is made in prepare() instead.
        # Then HubOAuth's own rule: skipped only for a request a token authenticated.
        if not self._asked_hub:
            return None
        return super().check_xsrf_cookie()

    def caller(self) -> dict:
        """The authenticated caller's hub model; 401 (or the login page for a browser)."""
        user = self.current_user
        if user:
            return user
        if self.request.method == "GET" and "text/html" in self.request.headers.get("Accept", ""):
            self.redirect(url_concat(self.get_login_url(), {"next": self.request.uri}))
            raise web.Finish()
        self.set_header("WWW-Authenticate", "token")
        raise web.HTTPError(401, "a JupyterHub token or login is required")


class Error(BaseModel):
    """Every error either service's API answers (the OpenAPI documents' Error schema)."""

    status: int
    message: str


class Input(BaseModel):
    """A request's query or JSON body, as an API operation declares it: unknown fields are
    refused, and nothing is coerced but the query's strings to numbers."""

    model_config = ConfigDict(extra="forbid")


class APIHandler(ServiceHandler):
    """JSON in, JSON out; errors as `Error`."""

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(Error(status=status_code, message=message).model_dump_json())

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def json_object(self) -> dict:
        """The request's JSON body, which must be an object; else 400."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return body

    def json_body(self, model: type[Model]) -> Model:
        """The request's JSON body as MODEL; 400 naming the field at fault."""
        return _validated(model, self.json_object(), strict=True)

    def query(self, model: type[Model]) -> Model:
        """The query's arguments as MODEL (each given once); 400 naming the one at fault."""
        args = {k: self.get_argument(k) for k in self.request.query_arguments}
        return _validated(model, args, strict=False)


def _validated(model: type[Model], data: dict, strict: bool) -> Model:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        problems = [
            f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()
        ]
        raise web.HTTPError(400, "; ".join(problems)) from None


def run_service(main: Callable[[], Awaitable[None]], name: str) -> None:
    """Run a service's `main()` until SIGINT or SIGTERM, then stop at once, saying so.

    The hub stops its services with SIGINT, then SIGTERM; either ends the service within
    a second, whatever signal state it inherited, with one log line instead of a traceback.
    """

    async def until_stopped() -> None:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop, task, name, sig)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(until_stopped())


def _stop(task: asyncio.Future, name: str, sig: signal.Signals) -> None:
    logging.getLogger(name).info("%s service stopping (%s)", name, signal.Signals(sig).name)
    task.cancel()
