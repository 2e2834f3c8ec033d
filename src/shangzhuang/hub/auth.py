"""Sign-in for the embedded default: NativeAuthenticator, mended for JupyterHub 6.

Upstream breakage worked around here (nativeauthenticator 1.3.0, jupyterhub 6.1.1):
its LoginHandler.post calls `self.statsd.timer(...)`, and JupyterHub 6 removed statsd,
so every POST /hub/login answered 500; its `_render` also lacks the `**kwargs` that
JupyterHub 6's LoginHandler.get passes. `LoginHandler` below replaces both methods
and nothing else.
"""

from __future__ import annotations

import asyncio
import os

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from traitlets import Unicode


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login page without statsd, saying why a login failed."""

    def _render(self, login_error=None, username=None, **kwargs):
        return super()._render(login_error=login_error, username=username)

    def render_template(self, name, **ns):
        # the same page with the site's name and logo above the form
        if name == "native-login.html":
            name = "sz-native-login.html"
        return super().render_template(name, **ns)

    async def post(self):
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        username = self.authenticator.normalize_username(data.get("username", ""))
        self.set_status(403)
        html = await self._render(
            login_error=await self.authenticator.why_refused(username, data.get("password", "")),
            username=username,
        )
        self.finish(html)


class WorkbenchAuthenticator(NativeAuthenticator):
    """Sign-up with admin approval and lock-out; the first admin is created at start."""

    bootstrap_admin_password = Unicode(
        "",
        help="""Password for the first admin (the first name in `admin_users`).

        When set, the admin's account is created (approved) at hub start if it does not
        exist yet. `shangzhuang up` fills this from $SHANGZHUANG_ADMIN_PASSWORD or from
        the generated password kept 0600 in the state folder.
        """,
    ).tag(config=True)

    reset_admin_password = Unicode(
        "",
        help="""When set, the first admin's password is set to this at hub start
        (how $SHANGZHUANG_ADMIN_PASSWORD overrides an earlier password).""",
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bootstrap_admin()

    def _bootstrap_admin(self) -> None:
        if not self.admin_users:
            return
        name = sorted(self.admin_users)[0]
        info = UserInfo.find(self.db, name)
        password = self.reset_admin_password or self.bootstrap_admin_password
        if not password:
            return
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        if info is None:
            self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
        elif self.reset_admin_password:
            info.password = hashed
            info.is_authorized = True
        self.db.commit()

    async def authenticate(self, handler, data):
        """NativeAuthenticator's check, with bcrypt off the event loop: each check takes
        ~0.25 s of CPU, and done inline ten logins at once stall the whole hub."""
        username = self.normalize_username(data["username"])
        info = self.get_user(username)
        if info is None:
            return None
        if self.allowed_failed_logins and self.is_blocked(username):
            return None
        ok = await self.password_matches(info, data["password"])
        if info.has_2fa:
            ok = ok and info.is_valid_token(data.get("2fa"))
        if ok and info.is_authorized:
            self.successful_login(username)
            return username
        self.add_login_attempt(username)
        return None

    @staticmethod
    async def password_matches(info: UserInfo, password: str) -> bool:
        return await asyncio.to_thread(bcrypt.checkpw, password.encode(), info.password)

    async def why_refused(self, username: str, password: str) -> str:
        """The message a refused login sees: wrong password, not yet approved, or locked out."""
        if self.allowed_failed_logins and self.is_blocked(username):
            return (
                f"Too many failed logins for {username}: try again in "
                f"{self.seconds_before_next_try // 60 or 1} minutes."
            )
        info = self.get_user(username)
        if (
            info is not None
            and not info.is_authorized
            and await self.password_matches(info, password)
        ):
            return f"{username} has signed up but is not approved yet: an admin must approve you."
        return "Invalid username or password."

    def get_handlers(self, app):
        return [
            (path, LoginHandler if handler is NativeLoginHandler else handler)
            for path, handler in super().get_handlers(app)
        ]


def configure_native(c, settings) -> None:
    """Native sign-in: sign-up with admin approval, lock-out, the first admin."""
    from shangzhuang.hub import ADMIN_PASSWORD_FILE

    native = settings.auth.native
    c.JupyterHub.authenticator_class = WorkbenchAuthenticator
    c.Authenticator.allow_all = True  # NativeAuthenticator's approval is the gate
    c.WorkbenchAuthenticator.open_signup = native.open_signup
    c.WorkbenchAuthenticator.minimum_password_length = native.minimum_password_length
    c.WorkbenchAuthenticator.allowed_failed_logins = native.allowed_failed_logins
    c.WorkbenchAuthenticator.seconds_before_next_try = native.seconds_before_next_try
    password_file = settings.hub.state_dir / ADMIN_PASSWORD_FILE
    if password_file.exists():
        c.WorkbenchAuthenticator.bootstrap_admin_password = password_file.read_text().strip()
    c.WorkbenchAuthenticator.reset_admin_password = os.environ.get("SHANGZHUANG_ADMIN_PASSWORD", "")
