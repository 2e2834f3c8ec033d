"""The reader's language: Simplified Chinese (zh_CN) or English (en), with gettext catalogs.

One gettext domain, `shangzhuang`, in `shangzhuang/locale/` (English msgids; `make i18n`
extracts them with Babel and updates the catalog, `make i18n-check` fails on a missing or
stale entry). Each request's language lives in a context variable set where the request
begins (`request_language` for the hub and the services), so the one Jinja environment
JupyterHub shares between all requests translates for whoever is reading.

Messages raised in Python (refusals with figures and dates) are `Message`s: an id and
parameters, turned into words by `str()` where they are shown, in that reader's language,
never where they are raised (a spawn task or a thread that doesn't know the reader).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_skeleton
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations
from jinja2 import pass_context
from jinja2.ext import InternationalizationExtension

DOMAIN = "shangzhuang"
LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("zh_CN", "en")  # what a reader may choose; English is the msgids' language
NAMES = {"zh_CN": "中文", "en": "English"}  # each language in its own words, for the switch
COOKIE = "shangzhuang-language"
ENVIRONMENT = "SHANGZHUANG_LANGUAGE"  # a session's language (zh_CN or en), for its Lab

_language: ContextVar[str] = ContextVar("shangzhuang_language", default="en")
_timezone: ContextVar[str] = ContextVar("shangzhuang_timezone", default="UTC")


def negotiate(accept_language: str | None, choice: str | None, site_default: str) -> str:
    """The language to answer in: the reader's own choice, else the site's (site.language),
    else (site.language "auto") the browser's first language we have, else English.

    Any Chinese the browser asks for (zh, zh-CN, zh-TW, zh-Hans) gets Simplified Chinese.
    """
    if choice in LANGUAGES:
        return choice
    if site_default in LANGUAGES:
        return site_default
    for tag, _q in _ranked(accept_language or ""):
        primary = tag.split("-")[0]
        if primary == "zh":
            return "zh_CN"
        if primary == "en":
            return "en"
    return "en"


def _ranked(header: str) -> list[tuple[str, float]]:
    """Accept-Language's tags, most wanted first (q=0 means 'not this one')."""
    tags = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            tags.append((tag.strip().lower().replace("_", "-"), q, i))
    return [(t, q) for t, q, _i in sorted(tags, key=lambda x: (-x[1], x[2]))]


@cache
def translations(language: str) -> NullTranslations:
    """The compiled catalog of a language (English: the msgids themselves)."""
    if language == "en":
        return NullTranslations()
    return Translations.load(str(LOCALE_DIR), [language], DOMAIN)


def current() -> str:
    """The language of the request being answered (en outside any request)."""
    return _language.get()


def use(language: str, timezone: str | None = None) -> None:
    """Answer the rest of this request (this task) in `language`, dates in `timezone`."""
    _language.set(language if language in LANGUAGES else "en")
    if timezone:
        _timezone.set(timezone)


def _terminal_locale() -> str:
    """The terminal's locale for messages, as gettext reads it: the first of $LC_ALL,
    $LC_MESSAGES and $LANG that is set ('' when none is)."""
    return next((os.environ[v] for v in ("LC_ALL", "LC_MESSAGES", "LANG") if os.environ.get(v)),
                "")  # fmt: skip


def terminal_language() -> str:
    """The language of a command run in a terminal: a session's ($SHANGZHUANG_LANGUAGE, set
    by the hub), else the locale's ($LC_ALL, $LC_MESSAGES, $LANG: zh_CN.UTF-8 is 中文)."""
    tag = _terminal_locale().split(".")[0].replace("_", "-")  # zh_CN.UTF-8 -> zh-CN
    return negotiate(tag, os.environ.get(ENVIRONMENT), "auto")


def operator_language(site_language: str | None = None) -> str:
    """The language of the operator's commands (`shangzhuang up`, `check`, `quota` ...): the
    terminal's locale (zh_CN.UTF-8, zh_SG ... are 中文; C, POSIX, en_US and the rest English,
    as gettext, which has no catalog for them, would say), else, with no locale set at all (a
    service manager, cron), the site's `site.language` when it names one, else English."""
    if locale := _terminal_locale():
        return "zh_CN" if locale.lower().startswith("zh") else "en"
    return site_language if site_language in LANGUAGES else "en"


@contextmanager
def speaking(language: str):
    """Render Messages in `language` inside the block (a command's whole run); the language
    before it is back afterwards, so tests that run commands in-process don't leak it."""
    token = _language.set(language if language in LANGUAGES else "en")
    try:
        yield
    finally:
        _language.reset(token)


def gettext(message: str) -> str:
    return translations(current()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(current()).ngettext(singular, plural, n)


def _(message: str) -> str:
    """Translate now, for the reader of this request (pybabel's default keyword)."""
    return gettext(message)


class Message(str):
    """A message for a person, translated where it is shown: `Message("{n} GPUs free", n=2)`.

    It is a str whose value is the English text (so JSON replies, logs and tests that treat
    it as a str read English), while `str()`, f-strings and Jinja render it in the current
    request's language, with its numbers and dates formatted for it; `render(language)`
    gives a given one. Parameters that are Messages are rendered alike. pybabel extracts
    the first argument (`-k Message`).
    """

    def __new__(cls, msgid: str, **params):
        self = super().__new__(cls, cls._words(msgid, None, params, "en"))
        self.msgid, self.params, self.plural = msgid, params, None
        return self

    @staticmethod
    def _words(msgid: str, plural: str | None, params: dict, language: str) -> str:
        catalog = translations(language)
        if plural is None:
            words = catalog.gettext(msgid)
        else:  # gettext's plural rules want an integer
            words = catalog.ngettext(msgid, plural, 1 if params["n"] == 1 else 2)
        return words.format(**{k: _shown(v, language) for k, v in params.items()})

    def render(self, language: str | None = None) -> str:
        return self._words(self.msgid, self.plural, self.params, language or current())

    def __str__(self) -> str:
        return self.render()

    def __format__(self, spec: str) -> str:
        return format(self.render(), spec)

    def __html__(self) -> str:  # Jinja's autoescape
        from markupsafe import escape

        return str(escape(self.render()))

    def __repr__(self) -> str:
        return f"Message({self.msgid!r}, **{self.params!r})"

    def __reduce__(self):  # copies and pickles keep the id and the parameters
        return _rebuilt, (self.msgid, self.plural, self.params)


def _rebuilt(msgid: str, plural: str | None, params: dict) -> Message:
    if plural is None:
        return Message(msgid, **params)
    return Plural(msgid, plural, **params)


class Plural(Message):
    """A message with a count: `Plural("{n} GPU", "{n} GPUs", 2)` (pybabel: `-k Plural:1,2`)."""

    def __new__(cls, singular: str, plural: str, n: float, **params):
        params = {"n": n, **params}
        self = str.__new__(cls, cls._words(singular, plural, params, "en"))
        self.msgid, self.params, self.plural = singular, params, plural
        return self


def hours(resource: str, value: float) -> Message:
    """An amount of a quota resource in words: '2 CPU-hours' / '2 CPU 核时'."""
    if resource == "gpu_hours":
        return Plural("{n} GPU-hour", "{n} GPU-hours", value)
    if resource == "cpu_hours":
        return Plural("{n} CPU-hour", "{n} CPU-hours", value)
    return Message("{n} {resource}", n=value, resource=resource)


def resource_name(resource: str) -> Message:
    """A quota resource's name: 'GPU hours' / 'GPU 卡时'."""
    if resource == "gpu_hours":
        return Message("GPU hours")
    if resource == "cpu_hours":
        return Message("CPU hours")
    return Message("{resource}", resource=resource.replace("_", " "))


def sentences(messages: list[Message]) -> Message:
    """Sentences one after another: 'A. B.' / 'A。B。' (Chinese puts no space between)."""
    joined = messages[0]
    for then in messages[1:]:
        # TRANSLATORS: one sentence after another
        joined = Message("{first} {then}", first=joined, then=then)
    return joined


def _shown(value, language: str) -> str:
    if isinstance(value, Message):
        return value.render(language)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return when(value, language)
    if isinstance(value, float | int) and not isinstance(value, bool):
        return number(value, language)
    if isinstance(value, list | tuple):
        # TRANSLATORS: what separates the items of a list, e.g. "1 GPU-hour, 2 CPU-hours"
        return translations(language).gettext(", ").join(_shown(v, language) for v in value)
    return str(value)


def number(value: float, language: str | None = None, digits: int = 2) -> str:
    """1234.5 -> '1,234.5'; at most `digits` decimals, none shown when they are zero."""
    pattern = "#,##0." + "#" * digits if digits else "#,##0"
    return format_decimal(value, format=pattern, locale=_babel_locale(language or current()))


OWN_OFFSET = ""  # when(..., timezone=OWN_OFFSET): as the moment's own UTC offset says


def when(moment: datetime | str, language: str | None = None, timezone: str | None = None) -> str:
    """A moment in the site's time zone: '12月1日 00:00' / '1 Dec, 00:00'. One without a
    time zone is UTC (as JupyterHub's database keeps them)."""
    language = language or current()
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo("UTC"))
    if timezone != OWN_OFFSET:
        moment = moment.astimezone(ZoneInfo(timezone or _timezone.get()))
    locale = _babel_locale(language)
    date = format_skeleton("MMMd", moment, locale=locale)
    time = format_skeleton("Hm", moment, locale=locale)
    # TRANSLATORS: a date and a time of day, e.g. "1 Dec, 00:00"
    return translations(language).gettext("{date}, {time}").format(date=date, time=time)


def day(moment: datetime | str, language: str | None = None, timezone: str | None = None) -> str:
    """A day in the site's time zone: '12月1日' / '1 Dec'."""
    language = language or current()
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    moment = moment.astimezone(ZoneInfo(timezone or _timezone.get()))
    return format_skeleton("MMMd", moment, locale=_babel_locale(language))


def _babel_locale(language: str) -> str:
    # English dates as most of the world writes them ("1 Dec"), not the US "Dec 1".
    return "en_GB" if language == "en" else language


# --- Jinja: the hub's shared environment and the services' own -----------------------


@pass_context
def _jinja_gettext(context, message: str) -> str:
    return gettext(message)


@pass_context
def _jinja_ngettext(context, singular: str, plural: str, n: int) -> str:
    return ngettext(singular, plural, n)


class Translated(InternationalizationExtension):
    """jinja2.ext.i18n with gettext callables that read the current request's language,
    and the helpers templates need (`language()`, `when()`, `day()`, `number()`).

    JupyterHub builds its Environments from `JupyterHub.jinja_environment_options`, so
    naming this extension there is how its templates get translated.
    """

    def __init__(self, environment):
        super().__init__(environment)
        environment.install_gettext_callables(_jinja_gettext, _jinja_ngettext, newstyle=True)
        environment.globals.update(
            language=current, languages=NAMES, when=when, day=day, number=number,
            hours=hours, resource_name=resource_name,
        )  # fmt: skip


def jinja_environment(folder: Path):
    """A service's Jinja environment for its templates folder, translated like the hub's."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)), autoescape=True, extensions=[Translated]
    )


# --- the request's language, for tornado applications (the hub and our services) -----


@cache  # one class per site: two builds of the hub's config are equal
def request_language(site_default: str, timezone: str):
    """A tornado output transform whose creation, at the start of each request (before its
    handler's task), sets the request's language from its cookie and Accept-Language.

    Tornado makes the transforms of a request before it starts the handler's task, which
    copies the context: the language then holds for everything the handler renders.
    """
    from tornado.web import OutputTransform

    class RequestLanguage(OutputTransform):
        def __init__(self, request):
            super().__init__(request)
            cookie = request.cookies.get(COOKIE)
            use(
                negotiate(
                    request.headers.get("Accept-Language"),
                    cookie.value if cookie else None,
                    site_default,
                ),
                timezone,
            )

    return RequestLanguage


@dataclass(frozen=True)
class LanguageChoices:
    """Each user's chosen language, kept by the hub in its state folder (one small JSON
    file, written by the hub only), so another browser of theirs gets it at login."""

    path: Path

    def all(self) -> dict[str, str]:
        try:
            data = json.loads(Path(self.path).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {k: v for k, v in data.items() if v in LANGUAGES}

    def get(self, user: str) -> str | None:
        return self.all().get(user)

    def set(self, user: str, language: str) -> None:
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r} (one of {', '.join(LANGUAGES)})")
        data = {**self.all(), user: language}
        fd, tmp = tempfile.mkstemp(dir=Path(self.path).parent, prefix=".languages")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, ensure_ascii=False, sort_keys=True)
        os.replace(tmp, self.path)
