"""The server extension's messages in the session's language ($SHANGZHUANG_LANGUAGE, which
the hub sets: zh_CN or en), from the frontend's catalog (locale/zh_CN/LC_MESSAGES/
shangzhuang_lab.po, compiled to .mo by `make lab-catalog`; one catalog for both halves).

Call sites write `trans.gettext("... {name} ...").format(name=...)`. Not `trans.__`, the
TypeScript form: jupyterlab-translate 1.3.7 asks Babel for the keyword "trans.__", which
Babel 2.19 never matches (it compares the last name only), while Babel's default keywords
(gettext, _ ...) are still on in its extraction, and catch `trans.gettext`.

Plain gettext, not jupyterlab_server's TranslationBundle: 2.28.1 reads .mo files only from
language packs, not from an extension's own locale folder (the TODO in
translation_utils.TranslationBundle.update_locale).
"""

from __future__ import annotations

import gettext
import os
from functools import cache
from pathlib import Path

DOMAIN = "shangzhuang_lab"
LOCALE = Path(__file__).with_name("locale")


@cache
def _catalog(language: str) -> gettext.NullTranslations:
    return gettext.translation(DOMAIN, LOCALE, languages=[language], fallback=True)


class _Translator:
    """`gettext(msgid)`: the message in the session's language, when the message is made."""

    def gettext(self, msgid: str) -> str:
        return _catalog(os.environ.get("SHANGZHUANG_LANGUAGE") or "en").gettext(msgid)


trans = _Translator()
