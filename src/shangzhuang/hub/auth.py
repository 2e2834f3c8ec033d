"""Sign-in for the embedded default: NativeAuthenticator, mended and hardened for strangers.

Upstream breakage worked around here (nativeauthenticator 1.3.0, jupyterhub 6.1.1):
its LoginHandler.post calls `self.statsd.timer(...)`, and JupyterHub 6 removed statsd,
so every POST /hub/login answered 500; its `_render` also lacks the `**kwargs` that
JupyterHub 6's LoginHandler.get passes, among them the `sync=True` with which JupyterHub's
write_error renders a refused login form as the login page (an expired `_xsrf` answered an
empty 403 and logged "Uncaught exception in write_error").

What upstream does that a public site can't have, and what replaces it here (audit of
its handlers, nativeauthenticator 1.3.0):
- GET /hub/authorize/NAME (approve or un-approve) and GET /hub/discard/NAME change state
  on a GET, so a link opened by a signed-in admin approves whoever sent it: here both are
  POST only (JupyterHub checks `_xsrf` on every POST), and the authorization page has
  POST forms; a GET answers 405 and changes nothing.
- GET /hub/confirm/SLUG (self-approval by e-mail) is not offered: the site never sends
  such mail.
- POST /hub/signup, /hub/login, /hub/change-password[/NAME] hash bcrypt on the event loop
  (~0.25 s of CPU each): here on a worker thread.
- Sign-up: any name, admins' included (an admin without a password yet got an approved
  admin account), and no limits: here admin and reserved names are refused, every admin
  has an account from the hub's start, sign-ups are limited per address and the waiting
  ones capped.
- Login: three failures lock the account for everyone (the admin too) and the replies
  tell existing names from unknown ones: here failures slow down the address they come
  from (backoff), failures on a name only delay further tries of that name, and unknown
  and wrong get the same message after the same bcrypt work.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import deque

import bcrypt
from jinja2 import ChoiceLoader, FileSystemLoader
from jupyterhub.handlers import BaseHandler
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import TEMPLATE_DIR as NATIVE_TEMPLATES
from nativeauthenticator.handlers import (
    ChangePasswordAdminHandler,
    ChangePasswordHandler,
    DiscardHandler,
    EmailAuthorizationHandler,
    SignUpHandler,
    ToggleAuthorizationHandler,
    admin_users_scope,
)
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from tornado import web
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Integer, List, Unicode

from shangzhuang.hub.accounts import UserAccounts  # a deleted user's account, home, quota
from shangzhuang.i18n import Message  # refusals in the reader's language where shown

WRONG = Message("Invalid username or password.")
EXPIRED = Message("This form has expired: please try again.")
# A failed try of a name waits at most this long before its password is checked: slowed,
# never locked out (the owner may be trying from another address).
NAME_DELAY_MAX = 3.0


def client_address(request) -> str:
    """The address a request came from: the last X-Forwarded-For entry, which our proxy
    (configurable-http-proxy) appends, not X-Real-Ip, which anyone can send (tornado's
    `remote_ip` with JupyterHub's xheaders=True trusts it)."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.rsplit(",", 1)[-1].strip() or request.remote_ip or "?"


class Backoff:
    """Failed tries per key (an address, a name): after `free` failures each further
    failure doubles the wait before the next try (1, 2, 4 ... s, at most `longest`)."""

    def __init__(self, free: int, longest: float, clock=time.monotonic):
        self.free, self.longest, self.clock = free, longest, clock
        self.failures: dict[str, tuple[int, float]] = {}

    def wait(self, key: str) -> float:
        """Seconds before `key` may try again (0: now)."""
        count, last = self.failures.get(key, (0, 0.0))
        if count < self.free:
            return 0.0
        return max(0.0, min(2.0 ** (count - self.free), self.longest) - (self.clock() - last))

    def failed(self, key: str) -> None:
        now = self.clock()
        count, last = self.failures.get(key, (0, now))
        if now - last > self.longest:
            count = 0  # quiet for the longest wait: start over
        self.failures[key] = (count + 1, now)
        if len(self.failures) > 100_000:  # forget quiet keys so a flood can't grow this
            self.failures = {k: v for k, v in self.failures.items() if now - v[1] <= self.longest}

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


class PerHour:
    """At most `limit` events per key in any hour."""

    def __init__(self, limit: int, clock=time.monotonic):
        self.limit, self.clock = limit, clock
        self.events: dict[str, deque[float]] = {}

    def wait(self, key: str) -> float:
        """Seconds before `key` may have another event (0: now)."""
        now = self.clock()
        events = self.events.get(key)
        while events and now - events[0] >= 3600:
            events.popleft()
        if not events:
            self.events.pop(key, None)
            return 0.0
        return 0.0 if len(events) < self.limit else 3600 - (now - events[0])

    def add(self, key: str) -> None:
        self.events.setdefault(key, deque()).append(self.clock())


def _minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


class Refusals:
    """What our pages refuse (a stale form, a GET that must be a POST, an unknown name) is
    routine: JupyterHub's error page says why, and the hub logs it at INFO, beside the
    request's own access line. (Tornado logs every HTTPError's message at WARNING, and
    JupyterHub 6.1.1's login page every stale form at ERROR, "XSRF error on login form".)"""

    def check_xsrf_cookie(self):
        try:
            return BaseHandler.check_xsrf_cookie(self)
        except web.HTTPError:
            raise web.HTTPError(403, EXPIRED) from None

    def log_exception(self, typ, value, tb):
        if isinstance(value, web.HTTPError):
            self.log.info("%d %s: %s", value.status_code, self._request_summary(), value)
            return
        super().log_exception(typ, value, tb)


class LoginHandler(Refusals, NativeLoginHandler):
    """The login page: backoff per address, one message for unknown name and wrong
    password, and NativeAuthenticator's page without statsd."""

    _sync_templates = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # nativeauthenticator 1.3.0 adds its templates to JupyterHub's async templates only;
        # write_error renders a refused login form with the sync ones (TemplateNotFound).
        if not LoginHandler._sync_templates:
            env = self.settings["jinja2_env_sync"]
            env.loader = ChoiceLoader([env.loader, FileSystemLoader([NATIVE_TEMPLATES])])
            LoginHandler._sync_templates = True

    def _render(self, login_error=None, username=None, sync=False, **ns):
        # NativeAuthenticator's login page with the site's name and logo above the form.
        # Rendered here rather than by its _render, which drops `sync` (see the top).
        auth = self.authenticator
        return self.render_template(
            "sz-native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=auth.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=auth.enable_signup,
            two_factor_auth=auth.allow_2fa,
            authenticator_login_url=url_concat(
                auth.login_url(self.hub.base_url), {"next": self.get_argument("next", "")}
            ),
        )

    async def refuse(self, status: int, message: str, username: str) -> None:
        self.set_status(status)
        self.finish(await self._render(login_error=message, username=username))

    async def post(self):
        auth: WorkbenchAuthenticator = self.authenticator
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.body_arguments}
        username = auth.normalize_username(data.get("username", ""))[:128]
        address = client_address(self.request)
        wait = auth.address_backoff.wait(address)
        if wait:
            seconds = math.ceil(wait)
            message = Message(
                "Too many failed logins from your address: try again in {seconds} seconds.",
                seconds=seconds,
            )
            await self.refuse(429, message, username)
            return
        delay = auth.name_backoff.wait(username)
        if delay:
            await asyncio.sleep(min(delay, NAME_DELAY_MAX))
        self._sz_not_approved = False
        user = await self.login_user(data)
        if user:
            auth.address_backoff.succeeded(address)
            auth.name_backoff.succeeded(username)
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        auth.address_backoff.failed(address)
        auth.name_backoff.failed(username)
        if self._sz_not_approved:  # only with the right password: tells nothing to others
            message = Message(
                "{name} has signed up but is not approved yet: an admin must approve you.",
                name=username,
            )
        else:
            message = WRONG
        await self.refuse(403, message, username)


class WorkbenchSignUpHandler(Refusals, SignUpHandler):
    """Sign-up: admin and reserved names refused, per-address limit, a cap on waiting
    sign-ups, bcrypt on a worker thread; never an approved admin."""

    async def answer(self, status: int, message: str, ok: bool = False) -> None:
        auth = self.authenticator
        self.set_status(status)
        html = await self.render_template(
            "signup.html",
            ask_email=False,
            result_message=message,
            alert="alert-success" if ok else "alert-danger",
            two_factor_auth=False,
            recaptcha_key=None,
            tos=auth.tos,
        )
        self.finish(html)

    async def post(self):
        auth: WorkbenchAuthenticator = self.authenticator
        if not auth.enable_signup:
            raise web.HTTPError(404)
        address = client_address(self.request)
        wait = auth.signup_limit.wait(address)
        if wait:
            await self.answer(
                429,
                Message(
                    "Too many sign-ups from your address: try again in {minutes} minutes.",
                    minutes=_minutes(wait),
                ),
            )
            return
        username = auth.normalize_username(self.get_body_argument("username", "", strip=False))
        password = self.get_body_argument("signup_password", "", strip=False)
        confirmation = self.get_body_argument("signup_password_confirmation", "", strip=False)
        problem = auth.signup_problem(username, password, confirmation)
        if problem:
            await self.answer(400, problem)
            return
        pending = self.db.query(UserInfo).filter(UserInfo.is_authorized.is_(False)).count()
        if not auth.open_signup and pending >= auth.max_pending_signups:
            await self.answer(
                503,
                Message(
                    "Sign-up is closed for now: {pending} sign-ups are waiting for an admin's "
                    "approval. Try again later.",
                    pending=pending,
                ),
            )
            return
        auth.signup_limit.add(address)
        hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt())
        if auth.user_exists(username):  # the same name signed up while this one hashed
            await self.answer(400, auth.taken(username))
            return
        self.db.add(UserInfo(username=username, password=hashed, is_authorized=auth.open_signup))
        self.db.commit()
        if auth.open_signup:
            await self.answer(200, Message("You have signed up: you can log in now."), ok=True)
        else:
            await self.answer(
                200,
                Message("You have signed up: you can log in once an admin approves you."),
                ok=True,
            )


class ApprovalHandler(Refusals, ToggleAuthorizationHandler):
    """POST /hub/authorize/NAME approves or un-approves NAME (GET: 405, nothing changes)."""

    async def get(self, name):
        raise web.HTTPError(405, "approving is a POST from the authorization page")

    @admin_users_scope
    async def post(self, name):
        if self.authenticator.get_user(name) is None:
            raise web.HTTPError(404, f"no sign-up named {name}")
        UserInfo.change_authorization(self.db, name)
        self.redirect(self.hub.base_url + "authorize#" + name)


class DiscardSignUpHandler(Refusals, DiscardHandler):
    """POST /hub/discard/NAME removes a sign-up that is not approved (GET: 405)."""

    async def get(self, name):
        raise web.HTTPError(405, "discarding is a POST from the authorization page")

    @admin_users_scope
    async def post(self, name):
        info = self.authenticator.get_user(name)
        if info is not None and not info.is_authorized:
            self.authenticator.delete_user(type("User", (), {"name": name}))
            if self.users.get(name) is not None:
                self.users.delete(name)
        self.redirect(self.hub.base_url + "authorize")


class OwnPasswordHandler(Refusals, ChangePasswordHandler):
    """/hub/change-password: the signed-in user's own password, bcrypt on a thread."""

    @web.authenticated
    async def post(self):
        user = await self.get_current_user()
        auth: WorkbenchAuthenticator = self.authenticator
        old = self.get_body_argument("old_password", strip=False)
        new = self.get_body_argument("new_password", strip=False)
        confirmation = self.get_body_argument("new_password_confirmation", strip=False)
        info = auth.get_user(user.name)
        if info is None or not await auth.password_matches(info, old):
            alert, message = "alert-danger", "Your current password is not right."
        elif new != confirmation:
            alert, message = "alert-danger", "The new password and its confirmation differ."
        elif not auth.is_password_strong(new):
            alert, message = "alert-danger", auth.weak_password_message()
        else:
            await auth.set_password(info, new)
            alert, message = "alert-success", "Your password has been changed."
        html = await self.render_template(
            "change-password.html", user_name=user.name, result_message=message, alert=alert
        )
        self.finish(html)


class AdminPasswordHandler(Refusals, ChangePasswordAdminHandler):
    """/hub/change-password/NAME: an admin sets NAME's password, bcrypt on a thread."""

    @admin_users_scope
    async def post(self, user_name):
        auth: WorkbenchAuthenticator = self.authenticator
        info = auth.get_user(user_name)
        if info is None:
            raise web.HTTPError(404, f"no account named {user_name}")
        new = self.get_body_argument("new_password", strip=False)
        confirmation = self.get_body_argument("new_password_confirmation", strip=False)
        if new != confirmation:
            alert, message = "alert-danger", "The new password and its confirmation differ."
        elif not auth.is_password_strong(new):
            alert, message = "alert-danger", auth.weak_password_message()
        else:
            await auth.set_password(info, new)
            alert, message = "alert-success", f"The password of {user_name} has been changed."
        html = await self.render_template(
            "change-password-admin.html", user_name=user_name, result_message=message, alert=alert
        )
        self.finish(html)


HANDLERS = {
    NativeLoginHandler: LoginHandler,
    SignUpHandler: WorkbenchSignUpHandler,
    ToggleAuthorizationHandler: ApprovalHandler,
    DiscardHandler: DiscardSignUpHandler,
    ChangePasswordHandler: OwnPasswordHandler,
    ChangePasswordAdminHandler: AdminPasswordHandler,
}


class WorkbenchAuthenticator(UserAccounts, NativeAuthenticator):
    """Sign-up with admin approval; every admin has an account from the hub's start."""

    bootstrap_admin_password = Unicode(
        "",
        help="""Password for the first admin (the first name in `admin_users`).

        When set, the admin's account is created (approved) at hub start if it does not
        exist yet. `shangzhuang up` fills this from $SHANGZHUANG_ADMIN_PASSWORD or from
        the generated password kept 0600 in the state folder. The other admins' accounts
        are created with a random password nobody knows: an admin sets theirs at
        /hub/change-password/NAME.
        """,
    ).tag(config=True)

    reset_admin_password = Unicode(
        "",
        help="""When set, the first admin's password is set to this at hub start
        (how $SHANGZHUANG_ADMIN_PASSWORD overrides an earlier password).""",
    ).tag(config=True)

    first_admin = Unicode(
        "", help="The admin the bootstrap password is for; empty: the first by name."
    ).tag(config=True)

    reserved_names = List(Unicode(), help="Names nobody may sign up as (besides the admins').").tag(
        config=True
    )

    failed_logins_before_backoff = Integer(
        3, help="Failed logins from one address before each further one makes it wait."
    ).tag(config=True)

    longest_backoff_seconds = Integer(
        600, help="The longest an address waits after failed logins."
    ).tag(config=True)

    signups_per_address_per_hour = Integer(5, help="Sign-ups one address may make per hour.").tag(
        config=True
    )

    max_pending_signups = Integer(
        100, help="Sign-ups waiting for approval beyond which sign-up is closed."
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.allowed_failed_logins = 0  # upstream's lock-out of the account: never
        self.address_backoff = Backoff(
            self.failed_logins_before_backoff, self.longest_backoff_seconds
        )
        # failures on a name delay its next tries a little, whoever makes them
        self.name_backoff = Backoff(self.failed_logins_before_backoff, NAME_DELAY_MAX)
        self.signup_limit = PerHour(self.signups_per_address_per_hour)
        # hashed once: an unknown name costs the same bcrypt work as a wrong password
        self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt())
        self._bootstrap_admins()

    def _bootstrap_admins(self) -> None:
        """Every admin name has an approved account, so no sign-up can take one."""
        if not self.admin_users:
            return
        first = self.first_admin or sorted(self.admin_users)[0]
        for name in sorted(self.admin_users):
            info = UserInfo.find(self.db, name)
            password = ""
            if name == first:
                password = self.reset_admin_password or self.bootstrap_admin_password
            if info is None:
                if not password:
                    password = secrets.token_urlsafe(32)  # nobody knows it until one is set
                    self.log.warning(
                        "Admin %s has no password yet: another admin sets it at "
                        "/hub/change-password/%s",
                        name, name,
                    )  # fmt: skip
                hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
                self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
            elif name == first and self.reset_admin_password:
                info.password = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
                info.is_authorized = True
        self.db.commit()

    def get_handlers(self, app):
        # upstream's pages with ours in their place; /confirm/ (self-approval mail) left out
        return [
            (path, HANDLERS.get(handler, handler))
            for path, handler in super().get_handlers(app)
            if handler is not EmailAuthorizationHandler
        ]

    async def authenticate(self, handler, data):
        """The password checked on a worker thread, also for an unknown name (against a
        dummy hash) so that the reply takes as long either way."""
        username = self.normalize_username(data.get("username", ""))
        info = self.get_user(username) if username else None
        hashed = info.password if info is not None else self._dummy_hash
        password = data.get("password", "")
        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if info is None or not ok:
            return None
        if info.has_2fa and not info.is_valid_token(data.get("2fa")):
            return None
        if not info.is_authorized:
            if handler is not None:
                handler._sz_not_approved = True
            return None
        return username

    @staticmethod
    async def password_matches(info: UserInfo, password: str) -> bool:
        return await asyncio.to_thread(bcrypt.checkpw, password.encode(), info.password)

    async def set_password(self, info: UserInfo, password: str) -> None:
        info.password = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt())
        self.db.commit()

    def weak_password_message(self) -> str:
        return Message(
            "Choose a password of at least {n} characters that is not a common one.",
            n=self.minimum_password_length,
        )

    def taken(self, username: str) -> str:
        return Message("The name {name} is taken: choose another one.", name=username)

    def signup_problem(self, username: str, password: str, confirmation: str) -> str:
        """Why this sign-up can't be, or "" when it can."""
        if username in self.admin_users or username in self.reserved_names:
            return Message(
                "The name {name} is reserved on this site: choose another one.", name=username
            )
        if not username or not self.validate_username(username):
            return Message(
                "A user name is 1-16 lower-case letters, digits, '-' and '_', starting with "
                "a letter."
            )
        if self.user_exists(username):
            return self.taken(username)
        if password != confirmation:
            return Message("The password and its confirmation differ.")
        if not self.is_password_strong(password):
            return self.weak_password_message()
        return ""

    def create_user(self, username, password, **kwargs):
        """Upstream's account creation, which its sign-up handler (replaced here) and its
        import from FirstUse call: never for an admin or reserved name."""
        name = self.normalize_username(username)
        if name in self.admin_users or name in self.reserved_names:
            return None
        return super().create_user(username, password, **kwargs)


def native_config(settings, host) -> dict:
    """Native sign-in: sign-up with admin approval, limits on strangers, every admin
    (host: hub.config.Host, which holds the first admin's password)."""
    native = settings.auth.native
    a = {
        "open_signup": native.open_signup,
        "minimum_password_length": native.minimum_password_length,
        "failed_logins_before_backoff": native.allowed_failed_logins,
        "longest_backoff_seconds": native.seconds_before_next_try,
        "signups_per_address_per_hour": native.signups_per_address_per_hour,
        "max_pending_signups": native.max_pending_signups,
        "reserved_names": list(native.reserved_names),
        "reset_admin_password": host.reset_admin_password,
    }
    if settings.hub.admins:
        a["first_admin"] = settings.hub.admins[0]
    if host.admin_password:
        a["bootstrap_admin_password"] = host.admin_password
    return {
        "JupyterHub": {"authenticator_class": WorkbenchAuthenticator},
        "Authenticator": {"allow_all": True},  # NativeAuthenticator's approval is the gate
        "WorkbenchAuthenticator": a,
    }
