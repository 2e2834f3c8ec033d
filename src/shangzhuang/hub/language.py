"""The language switch (中文 | English) of every page, and where a user's choice is kept.

The choice is a cookie on the hub's host (read by the hub and by our services under
/services/, see shangzhuang.i18n.request_language) and, for a signed-in user, an entry in
the hub's state folder, so that their other browsers get it at their next login.
"""

from __future__ import annotations

from jupyterhub.handlers import BaseHandler
from tornado import web

from shangzhuang import i18n

ONE_YEAR = 365 * 24 * 3600


def set_language_cookie(handler, language: str) -> None:
    """The browser's choice, for every page on the hub's host (not users' hosts)."""
    secure = handler.request.protocol == "https" or handler.settings.get(
        "cookie_host_prefix_enabled", False
    )
    handler.set_cookie(
        i18n.COOKIE, language, path="/", max_age=ONE_YEAR, samesite="Lax", secure=secure,
        httponly=True,
    )  # fmt: skip


class LanguageHandler(BaseHandler):
    """POST /hub/language (language=zh_CN|en, with _xsrf): switch, then back to `next`."""

    def initialize(self, choices: i18n.LanguageChoices):
        self.choices = choices

    async def get(self):
        """The switch on a page of its own, for our services' pages (they can't hold the
        hub's XSRF token): GET /hub/language?next=/services/apps/."""
        html = await self.render_template(
            "sz-language.html", next_url=self.get_next_url(default=self.hub.base_url)
        )
        self.finish(html)

    async def post(self):
        language = self.get_body_argument("language", "")
        if language not in i18n.LANGUAGES:
            raise web.HTTPError(
                400, f"Unknown language {language!r}: choose one of {', '.join(i18n.LANGUAGES)}."
            )
        set_language_cookie(self, language)
        user = self.current_user
        if user is not None:
            self.choices.set(user.name, language)
        self.redirect(self.get_next_url(default=self.hub.base_url))


def keep_choice_at_login(choices: i18n.LanguageChoices):
    """Part of the post_auth_hook: the latest explicit choice wins. A choice made in this
    browser (on the login page, say) becomes the user's; else their stored one becomes this
    browser's."""

    def at_login(handler, name: str) -> None:
        cookie = handler.get_cookie(i18n.COOKIE)
        if cookie in i18n.LANGUAGES:
            choices.set(name, cookie)
        elif stored := choices.get(name):
            set_language_cookie(handler, stored)

    return at_login


def session_language(choices: i18n.LanguageChoices, site_default: str):
    """Spawner.environment's SHANGZHUANG_LANGUAGE: the user's choice, else what their
    browser asked for when they started it, else the site's language (English for "auto")."""

    def for_spawner(spawner) -> str:
        request = getattr(getattr(spawner, "handler", None), "request", None)
        accept = request.headers.get("Accept-Language") if request is not None else None
        return i18n.negotiate(accept, choices.get(spawner.user.name), site_default)

    return for_spawner


def choices(settings) -> i18n.LanguageChoices:
    """Where the hub keeps each user's chosen language: its state folder."""
    return i18n.LanguageChoices(settings.hub.state_dir / "languages.json")


def pages(settings) -> dict:
    """The hub's part of the config (shangzhuang.hub.config): its templates translated, and
    the switch's handler at /hub/language."""
    return {
        "JupyterHub": {
            "jinja_environment_options": {"extensions": [i18n.Translated]},
            "extra_handlers": [(r"/language", LanguageHandler, {"choices": choices(settings)})],
        }
    }
