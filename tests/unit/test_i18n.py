"""中文 and English (shangzhuang.i18n, issue 14): the catalog is complete and fresh, the
language is negotiated as documented, messages and pages come out in the reader's language.

Also `make i18n-check`. When a test here fails for a new string: `make i18n`, translate the
new entries of src/shangzhuang/locale/zh_CN/LC_MESSAGES/shangzhuang.po, `make i18n` again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import jinja2
import jupyterhub
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from jupyterhub.scopes import describe_raw_scopes

from shangzhuang import i18n
from shangzhuang.hub import form
from shangzhuang.hub.gpus import GpusBusy
from shangzhuang.settings import Profile

ROOT = Path(__file__).resolve().parents[2]
PO = i18n.LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "shangzhuang.po"
MO = PO.with_suffix(".mo")
HUB_TEMPLATES = ROOT / "src" / "shangzhuang" / "hub" / "templates"
UPSTREAM_TEMPLATES = Path(jupyterhub.__file__).parents[4] / "share" / "jupyterhub" / "templates"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "Message": None, "Plural": (1, 2),
            "N_": None}  # fmt: skip
PLACEHOLDER = re.compile(r"\{\w+\}|%\(\w+\)s")


def extracted() -> set:
    """Every msgid in the code and templates, as `make i18n` (babel.cfg) extracts them."""
    method_map = [("shangzhuang/**.py", "python"), ("shangzhuang/**/templates/**.html", "jinja2")]
    options = {"shangzhuang/**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    found = set()
    for _file, _line, msg, _comments, _ctx in extract_from_dir(
        str(ROOT / "src"), method_map, options, keywords=KEYWORDS
    ):
        found.add(msg if isinstance(msg, str) else tuple(m for m in msg if m))
    return found


def catalog():
    with PO.open("rb") as f:
        return read_po(f, locale="zh_CN")


def test_every_msgid_has_a_chinese_translation_and_the_catalog_is_not_stale():
    cat = catalog()
    in_po = {m.id if isinstance(m.id, str) else tuple(m.id) for m in cat if m.id}
    code = extracted()
    assert not sorted(map(str, code - in_po)), "not in the catalog: run `make i18n`"
    assert not sorted(map(str, in_po - code)), "no longer in the code: run `make i18n`"
    untranslated = [m.id for m in cat if m.id and (m.fuzzy or not "".join(m.string).strip())]
    assert not untranslated, "translate these in shangzhuang.po"


def test_translations_keep_every_placeholder():
    for m in catalog():
        if not m.id:
            continue
        ids = [m.id] if isinstance(m.id, str) else list(m.id)
        strings = [m.string] if isinstance(m.string, str) else list(m.string)
        wanted = set(PLACEHOLDER.findall(ids[-1]))
        for s in strings:
            assert set(PLACEHOLDER.findall(s)) == wanted, (m.id, s)


def entries(messages) -> dict:
    def key(x):
        return x if isinstance(x, str) else tuple(x)

    return {key(m.id): key(m.string) for m in messages if m.id}


def test_the_compiled_catalog_is_the_po():
    with MO.open("rb") as f:
        mo = read_mo(f)
    assert entries(mo) == entries(catalog()), "shangzhuang.mo is older: run `make i18n`"


@pytest.mark.parametrize(
    ("accept", "choice", "site", "expected"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", None, "auto", "zh_CN"),
        ("en-US,en;q=0.9", None, "auto", "en"),
        ("zh-TW", None, "auto", "zh_CN"),  # any Chinese: Simplified is what we have
        ("fr-FR,en;q=0.5,zh;q=0.8", None, "auto", "zh_CN"),  # by q, not by order
        ("zh;q=0, en", None, "auto", "en"),  # q=0: not this one
        ("fr", None, "auto", "en"),  # nothing of ours: English
        (None, None, "auto", "en"),
        ("en-US", None, "zh_CN", "zh_CN"),  # a site's language is every newcomer's
        ("zh-CN", "en", "zh_CN", "en"),  # the reader's own choice wins
        ("zh-CN", "de", "auto", "zh_CN"),  # a choice we don't have is no choice
    ],
)
def test_negotiate(accept, choice, site, expected):
    assert i18n.negotiate(accept, choice, site) == expected


def test_a_message_is_english_as_a_str_and_chinese_where_a_chinese_reader_sees_it():
    busy = GpusBusy(wanted=2, total=4, free=1).message
    english = "The profile asks for 2 GPUs but only 1 of this node's 4 GPUs is free."
    assert busy == english and json.dumps(busy) == json.dumps(english)  # API replies, logs
    assert busy.render("zh_CN") == "该配置需要 2 块 GPU，但本节点的 4 块 GPU 中只有 1 块空闲。"
    i18n.use("zh_CN")
    try:
        assert str(busy) == f"{busy}" == busy.render("zh_CN")
        assert jinja2.Environment(autoescape=True).from_string("{{ m }}").render(m=busy) == (
            busy.render("zh_CN")
        )
    finally:
        i18n.use("en")
    assert str(busy) == english


def test_the_spawn_forms_figures_are_words_in_both_languages():
    gpu = Profile(name="gpu", display_name="1 GPU", cores=8, memory=64 * 1024**3, gpus=1)
    cpu = Profile(name="cpu", display_name="CPU", cores=2, memory=4 * 1024**3, gpus=0)
    assert form.cost(cpu).render("en") == "2 CPU-hours per hour"
    assert form.cost(cpu).render("zh_CN") == "每小时 2 CPU 核时"
    assert form.cost(gpu).render("en") == "1 GPU-hour + 8 CPU-hours per hour"
    assert form.cost(gpu).render("zh_CN") == "每小时 1 GPU 卡时 + 8 CPU 核时"
    assert form.resources(gpu).render("zh_CN") == "8 核 · 64 GB · 1 块 GPU"
    assert form.resources(cpu).render("en") == "2 cores · 4 GB · no GPU"


def test_dates_and_numbers_in_the_readers_locale_and_the_sites_time_zone():
    reset = "2026-11-30T16:00:00+00:00"  # midnight of 1 December in Beijing
    assert i18n.when(reset, "zh_CN", "Asia/Shanghai") == "12月1日 00:00"
    assert i18n.when(reset, "en", "Asia/Shanghai") == "1 Dec, 00:00"
    assert i18n.day(reset, "zh_CN", "Asia/Shanghai") == "12月1日"
    assert i18n.number(1234.5, "en") == "1,234.5" and i18n.number(12.4, "zh_CN") == "12.4"
    assert i18n.hours("gpu_hours", 12.4).render("zh_CN") == "12.4 GPU 卡时"


def test_a_users_choice_is_kept_and_only_a_known_language(tmp_path):
    choices = i18n.LanguageChoices(tmp_path / "languages.json")
    assert choices.get("alice") is None
    choices.set("alice", "zh_CN")
    choices.set("bob", "en")
    assert i18n.LanguageChoices(tmp_path / "languages.json").get("alice") == "zh_CN"
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        choices.set("alice", "fr")


# --- our pages, rendered as JupyterHub renders them, in Chinese --------------------------

# Words allowed in a Chinese page: names and units.
NAMES = {"Shangzhuang", "Workbench", "GPU", "GPUs", "CPU", "GB", "MB", "JupyterHub", "JavaScript"}
NAMES |= {"alice", "English"}  # a user's name; the switch's way back to English
ENGLISH_WORDS = re.compile(r"[A-Za-z][A-Za-z'’-]+")


def hub_environment() -> jinja2.Environment:
    """JupyterHub 6.1.1's own loader layout (app.py init_tornado_settings) with our
    templates first and its i18n options (JupyterHub.jinja_environment_options)."""
    loader = jinja2.ChoiceLoader(
        [
            jinja2.PrefixLoader(
                {"templates": jinja2.FileSystemLoader([str(UPSTREAM_TEMPLATES)])}, "/"
            ),
            jinja2.FileSystemLoader([str(HUB_TEMPLATES), str(UPSTREAM_TEMPLATES)]),
        ]
    )
    return jinja2.Environment(loader=loader, autoescape=True, extensions=[i18n.Translated])


def namespace(**more) -> dict:
    user = SimpleNamespace(name="alice", admin=False, active=False, spawner=None)
    return {
        "base_url": "/hub/", "prefix": "/", "user": user, "login_url": "/hub/login",
        "logout_url": "/hub/logout", "static_url": lambda path, **kw: "/hub/static/" + path,
        "version_hash": "", "services": [SimpleNamespace(name="quota", href="/services/quota/"),
                                         SimpleNamespace(name="apps", href="/services/apps/")],
        "parsed_scopes": {"admin-ui"}, "xsrf": "x", "xsrf_token": "x",
        "site_name": "Shangzhuang Workbench", "site_logo": False, **more,
    }  # fmt: skip


class Balance(dict):
    """The home page's quota: a dict, or (the hub asking the quota service) a function
    giving one; this is both, so the test reads the page as either hub gives it."""

    def __call__(self):
        return self


QUOTA = Balance({
    "state": "low", "account": "pku-physics",
    "period": {"resets_at": "2026-11-30T16:00:00+00:00"},
    "resources": {
        "gpu_hours": {"remaining": 12.4, "account": {"used": 87.6, "allocated": 100.0,
                      "granted": 0.0}, "personal": None},
        "cpu_hours": {"remaining": None, "account": None, "personal": None},
    },
})  # fmt: skip


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def between(html: str, start: str, end: str) -> str:
    return html[html.index(start) : html.index(end, html.index(start))]


def english_left(text: str) -> list[str]:
    return [w for w in ENGLISH_WORDS.findall(text) if w not in NAMES]


def render(name: str, language: str, **ns) -> str:
    i18n.use(language, "Asia/Shanghai")
    try:
        return hub_environment().get_template(name).render(**namespace(**ns))
    finally:
        i18n.use("en", "UTC")


def test_the_home_pages_quota_in_chinese_with_its_figures_and_reset_date():
    html = render("home.html", "zh_CN", quota=QUOTA, quota_warn=0.2, default_server=None,
                  named_servers=[], named_server_limit_per_user=0, allow_named_servers=False,
                  url="/user/alice/", spawner_options_form="")  # fmt: skip
    quota = visible_text(between(html, '<div class="container sz-quota"', "</table>"))
    assert "剩余 12.4 GPU 卡时" in quota and "12月1日 重置" in quota
    assert "12月1日 00:00 重置" in quota and "你的配额已不足 20%" in quota
    assert english_left(quota) == ["pku-physics"]  # the account's name, nothing else
    nav = visible_text(html.split('id="thenavbar"')[1].split("</nav>")[0])
    assert {"主页", "用量", "应用", "令牌", "管理", "退出"} <= set(nav.split())
    assert not english_left(nav)
    assert '<html lang="zh-CN">' in html


def test_the_same_page_in_english():
    html = render("home.html", "en", quota=QUOTA, quota_warn=0.2, default_server=None,
                  named_servers=[], named_server_limit_per_user=0, allow_named_servers=False,
                  url="/user/alice/", spawner_options_form="")  # fmt: skip
    quota = visible_text(between(html, '<div class="container sz-quota"', "</table>"))
    assert "12.4 GPU-hours left" in quota and "resets on 1 Dec" in quota
    assert "Resets at 1 Dec, 00:00." in quota


def test_the_sign_up_approval_page_in_chinese():
    user = SimpleNamespace(username="bob", is_authorized=False)
    html = render("authorization-area.html", "zh_CN", users=[user])
    main = visible_text(html)
    assert "注册申请" in main and "批准" in main
    assert not english_left(main.replace("bob", "")), "the whole page, nav and dialogs too"


# --- the services' pages (their own Jinja environments, translated the same way) -------

APPS_TEMPLATES = ROOT / "src" / "shangzhuang" / "apps" / "templates" / "service"
QUOTA_TEMPLATES = ROOT / "src" / "shangzhuang" / "quota" / "templates"


def render_service(folder: Path, name: str, language: str, **ns) -> str:
    i18n.use(language, "Asia/Shanghai")
    try:
        return i18n.jinja_environment(folder).get_template(name).render(**ns)
    finally:
        i18n.use("en", "UTC")


def test_the_apps_page_in_chinese():
    from shangzhuang.apps.registry import Viewers

    app = {"owner": "alice", "name": "demo", "url": "/services/apps/open/alice/demo",
           "description": "", "running": False, "always_on": True,
           "access": Viewers(signed_in=True).describe()}  # fmt: skip
    html = render_service(APPS_TEMPLATES, "apps.html", "zh_CN", site="Shangzhuang Workbench",
                          prefix="/services/apps/", hub="/hub/", owned=[app], shared=[],
                          can_manage=True, xsrf_form_html=lambda: "")  # fmt: skip
    text = visible_text(html)
    assert "我发布的应用" in text and "所有已登录用户" in text and "常驻" in text
    # Voila, JupyterLab and the command are names; 'demo' and 'alice' the app's
    names = {"Voila", "JupyterLab", "shangzhuang", "apps", "publish", "demo"}
    assert not [w for w in english_left(text) if w not in names]
    # the unpublish confirmation, in the page's script (JSON: non-ASCII as \u escapes)
    assert json.dumps("确定下线 demo？")[1:-1] in html


def test_the_usage_page_in_chinese():
    from shangzhuang.quota.pages import RESOURCE_NAMES, SOURCE_NAMES
    from shangzhuang.quota.refusals import REASONS

    i18n.use("zh_CN")
    words = {"source_names": {k: str(v) for k, v in SOURCE_NAMES.items()},
             "resource_names": {k: str(v) for k, v in RESOURCE_NAMES.items()},
             "reason_names": {k: str(v) for k, v in REASONS.items()}}  # fmt: skip
    i18n.use("en")
    html = render_service(
        QUOTA_TEMPLATES, "usage.html", "zh_CN", prefix="/services/quota/", static="/s/",
        me="alice", account="default", site="Shangzhuang Workbench", apps=True, xsrf="x",
        remaining=[{"resource": "gpu_hours", "hours": 12.4}, {"resource": "cpu_hours",
                                                               "hours": None}],
        resets=__import__("datetime").datetime.fromisoformat("2026-11-30T16:00:00+00:00"),
        managed=["physics"], admin=True, **words,
    )  # fmt: skip
    text = visible_text(html)
    assert "GPU 卡时：剩余 12.4 小时。" in text and "你的配额将于 12月1日 00:00 重置。" in text
    assert not [w for w in english_left(text) if w not in {"default", "physics", "CSV", "Dask",
                                                              "Lab", "Slurm"}]  # fmt: skip
    assert json.dumps("按当前用量")[1:-1] in html  # the words the page's script shows
    assert json.dumps("GPU 已全部占用")[1:-1] in html and "被拒绝的启动" in text  # the estate's


SIGNED_OUT = {"user": None, "services": [], "parsed_scopes": set()}
PAGES = {
    # page: what it is given besides the namespace every page gets
    "sz-native-login.html": {**SIGNED_OUT, "login_error": i18n.Message(
        "Invalid username or password."), "enable_signup": True, "next": ""},
    "signup.html": {**SIGNED_OUT, "alert": "alert-success", "result_message": i18n.Message(
        "You have signed up: you can log in once an admin approves you.")},
    "spawn.html": {"url": "/hub/spawn", "spawner_options_form": "",
                   "error_message": GpusBusy(wanted=1, total=2, free=0).message},
    "spawn_pending.html": {"progress_url": "/hub/api/users/alice/server/progress"},
    "error.html": {"status_code": 403, "status_message": "Forbidden",
                   "message": i18n.Message("This form has expired: please try again.")},
    "404.html": {"status_code": 404, "status_message": "Not Found"},
    "sz-language.html": {"next_url": "/services/apps/"},
    "not_running.html": {"server_name": "", "spawn_url": "/hub/spawn/alice", "failed": True,
                         "failed_message": GpusBusy(wanted=1, total=2, free=0).message},
    "stop_pending.html": {},
    "token.html": {"api_tokens": [], "oauth_clients": [], "token_expires_in_max_seconds": 0},
    "token.html#max": {"token_expires_in_max_seconds": 2 * 86400},
    "login.html": {**SIGNED_OUT, "login_service": "北大统一认证", "authenticator_login_url": "/x",
                   "login_error": i18n.Message("Invalid username or password.")},
    "login.html#ldap": {**SIGNED_OUT, "login_service": None, "login_term_url": "/terms",
                        "authenticator": SimpleNamespace(request_otp=False)},
    "logout.html": {**SIGNED_OUT},
    # an admin opening bob's session: JupyterHub asks only to identify her
    "oauth.html": {"oauth_client": SimpleNamespace(description="Server at /user/bob/",
                   redirect_uri="http://bob.hub.example/user/bob/oauth_callback"),
                   "allowed_scopes": [], "scope_descriptions": [{"scope": None, "filter": "",
                   "description": "Identify the owner of the requesting entity."}]},
    "oauth.html#scopes": {"oauth_client": SimpleNamespace(
        description="JupyterHub service dashboards", redirect_uri="/services/dashboards/"),
        "allowed_scopes": [], "scope_descriptions": describe_raw_scopes(
            ["access:servers!server=bob/", "read:users:name!user", "read:groups:name"],
            username="alice")},
    "accept-share.html": {"owner": SimpleNamespace(name="bob"), "code": "c",
                          "spawner": SimpleNamespace(name="app-demo"), "spawner_ready": False,
                          "spawner_url": "/user/bob/app-demo/", "next_url": "/user/bob/app-demo/",
                          "scope_descriptions": describe_raw_scopes(
                              ["access:servers!server=bob/app-demo"], username="alice")},
}  # fmt: skip


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_hub_page_in_chinese_has_no_english_sentence(page):
    html = render(page.split("#")[0], "zh_CN", **PAGES[page])  # "#...": another case
    # HTTP(S): names; "Language": the switch page says it in both, for one who reads neither
    allowed = {"HTTP", "HTTPS", "Language"}
    allowed |= {"bob", "app-demo", "dashboards", "API", "Hub"}  # another user, his app, a service
    text = re.sub(r"\S*/\S*", " ", visible_text(html))  # addresses (/user/bob/) are names
    english = [w for w in english_left(text) if w not in allowed]
    assert not english, f"{page}: {english}"
    assert '<html lang="zh-CN">' in html


def test_the_notebook_helpers_report_in_the_sessions_language(monkeypatch):
    from shangzhuang.quota.client import QuotaReport

    report = QuotaReport({
        "user": "lin", "account": "pku", "state": "low",
        "period": {"start": "2026-11-01T00:00:00+08:00", "resets_at": "2026-12-01T00:00:00+08:00"},
        "resources": {"gpu_hours": {"remaining": 12.4, "personal": None, "account": {
            "used": 87.6, "allocated": 100, "granted": 0}}, "cpu_hours": {"remaining": None}},
    })  # fmt: skip
    monkeypatch.setenv("SHANGZHUANG_LANGUAGE", "zh_CN")  # what the hub gives the session
    assert repr(report).splitlines() == [
        "lin 的配额（计费账户 pku）：即将用完",
        "  本周期自 11月1日 00:00 起，12月1日 00:00 重置",
        "  GPU 卡时：剩余 12.4 · 账户已用 87.6 / 共 100",
        "  CPU 核时：不限",
    ]
    monkeypatch.setenv("SHANGZHUANG_LANGUAGE", "en")
    assert "  GPU hours: 12.4 left · account 87.6 used of 100" in repr(report).splitlines()


def test_a_spawn_refused_for_quota_says_what_is_left_and_when_it_resets():
    cpu = Profile(name="cpu", cores=2, memory=4 * 1024**3)
    reply = {"account": "pku-physics", "min_minutes": 3, "resets_at": "2026-11-30T16:00:00+00:00",
             "profiles": {"cpu": {"affordable": False, "short": {"cpu_hours": 0.004}}}}  # fmt: skip
    i18n.use("en", "Asia/Shanghai")  # the hub's request: the site's time zone
    try:
        refusal = form.quota_refusal(cpu, reply)
    finally:
        i18n.use("en", "UTC")
    assert refusal == (
        "Not enough quota to start cpu: 0 CPU-hours left in account pku-physics. cpu costs "
        "2 CPU-hours per hour and needs at least 3 minutes. Your quota resets on 1 Dec, 00:00. "
        "You can ask for more on the usage page, under “Ask for more”."
    )
    i18n.use("zh_CN", "Asia/Shanghai")
    try:
        assert str(refusal) == (
            "配额不足，无法启动 cpu：计费账户 pku-physics 剩余 0 CPU 核时。cpu 的用量为每小时 "
            "2 CPU 核时，至少需要够用 3 分钟。你的配额将于 12月1日 00:00 重置。"
            "你可以在用量页面的“申请追加配额”中申请更多配额。"
        )
    finally:
        i18n.use("en", "UTC")
    # It names the usage page's request form by its heading, and the spawn page, where the
    # refusal shows, links to that form, in either language.
    asks = {"en": "You can ask for more on the usage page, under “Ask for more”.",
            "zh_CN": "你可以在用量页面的“申请追加配额”中申请更多配额。"}  # fmt: skip
    for language, ask in asks.items():
        assert f"“{i18n.Message('Ask for more').render(language)}”" in ask  # the form's heading
        html = render("spawn.html", language, url="/hub/spawn", spawner_options_form="",
                      error_message=refusal, quota=QUOTA)  # fmt: skip
        shown = visible_text(between(html, 'class="spawn-error-msg', "</p>"))
        assert "cpu" in shown and shown.endswith(ask)
        link = between(html, 'class="sz-ask-more', "</p>")
        assert 'href="/services/quota/#request"' in link


def test_slurm_queue_reasons_in_the_readers_language():
    from shangzhuang.hub.spawners import REASONS

    waiting = i18n.Message("Waiting in the Slurm queue: {why}, {n} job(s) ahead of it.",
                           why=REASONS["Resources"], n=3)  # fmt: skip
    assert waiting.startswith("Waiting in the Slurm queue: the nodes are busy")
    assert waiting.render("zh_CN") == (
        "正在 Slurm 队列中等待：节点繁忙（正在等待 CPU 核、内存或 GPU 空出），前面还有 3 个作业。"
    )


def test_the_hubs_own_warnings_in_the_readers_language(tmp_path):
    """What a hub not run as root (or without cgroups, iptables) tells everyone on its home
    page: Messages from the config, in each reader's language, one sentence after another."""
    from shangzhuang import hub as hub_module

    said = i18n.sentences([i18n.Message(hub_module.NOT_CONTAINED),
                           i18n.Message(hub_module.DASHBOARDS_OPEN)])  # fmt: skip
    assert said == f"{hub_module.NOT_CONTAINED} {hub_module.DASHBOARDS_OPEN}"  # English
    chinese = said.render("zh_CN")
    assert chinese.startswith("本 Hub 上的会话没有隔离") and "。本 Hub 上的 Dask 仪表盘" in chinese
    page = render("home.html", "zh_CN", announcement_home=i18n.Message(hub_module.NOT_ISOLATED),
                  default_server=None, allow_named_servers=False, url="/user/alice/")  # fmt: skip
    assert "本 Hub 没有以 root 运行" in page


def test_the_words_jupyterhubs_page_scripts_write_come_from_our_templates():
    """home.js and the progress stream write JupyterHub's English after the page loads
    (tests/e2e/test_language.py watches home.js's in Chromium); our templates hand the
    pages' scripts the reader's words for them, and dates the script would say in English
    ('3 hours ago') are written in the page instead."""
    last = __import__("datetime").datetime(2026, 11, 30, 8, 0)  # the hub's naive UTC
    spawner = SimpleNamespace(name="big", display_name="", last_activity=last, ready=False,
                              active=False, pending=None)  # fmt: skip
    user = SimpleNamespace(name="alice", admin=False, active=False, spawner=None,
                           all_spawners=lambda include_default: [spawner],
                           server_url=lambda name: f"/user/alice/{name}/")  # fmt: skip
    named = {"named_servers": [], "named_server_limit_per_user": 0, "allow_named_servers": True}
    home = render("home.html", "zh_CN", user=user, default_server=None, url="/", **named)
    words = {"Start My Server": "启动我的会话", "Start your default server": "启动你的默认会话",
             "Your server is stopping": "你的会话正在停止"}  # fmt: skip
    for upstream, ours in words.items():
        assert f"{json.dumps(upstream)}: {json.dumps(ours)}" in home
    assert json.dumps("删除你的会话 {name}？") in home
    assert 'class="time-col"' not in home and "11月30日 16:00" in home  # Beijing time
    token = SimpleNamespace(api_id="a1", note="n", scopes=[], last_activity=last,
                            created=last, expires_at=None)  # fmt: skip
    tokens = render("token.html", "zh_CN", api_tokens=[token], oauth_clients=[],
                    token_expires_in_max_seconds=0)  # fmt: skip
    assert "time-col" not in tokens and tokens.count("11月30日 16:00") == 2
    # token.js's note for a token asked for without one, in her words (e2e test_language).
    assert json.dumps("在令牌页面创建") in tokens
    pending = render("spawn_pending.html", "zh_CN", progress_url="/p")
    for upstream, ours in {"Server requested": "已请求启动会话",
                           "Spawn failed": "会话未能启动。"}.items():  # fmt: skip
        assert f"{json.dumps(upstream)}: {json.dumps(ours)}" in pending
    assert json.dumps("你的会话已就绪：{url}") in pending


def test_shangzhuang_apps_speaks_the_sessions_language(monkeypatch, capsys):
    """`shangzhuang apps` is run by users in their session's terminal: its lines are in the
    session's language, else the locale's. The apps service is stood in for by its listing
    (tests/integration/test_apps.py runs the real one, in English)."""
    from shangzhuang import cli

    app = {"owner": "alice", "name": "demo", "running": True, "access": "vic",
           "full_url": "http://alice.hub/user/alice/app-demo/"}  # fmt: skip
    client = SimpleNamespace(list=lambda every: {"owned": [app], "shared": []})
    monkeypatch.setattr(cli, "_apps_client", lambda args: client)
    args = SimpleNamespace(all=False, json=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.delenv(i18n.ENVIRONMENT, raising=False)
    cli.cmd_apps_list(args)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "我的应用：" and "运行中" in lines[1]
    assert lines[2:] == ["与你共享的应用：", "  （无）"]
    monkeypatch.setenv(i18n.ENVIRONMENT, "en")  # her session's choice wins over the locale
    cli.cmd_apps_list(args)
    assert capsys.readouterr().out.splitlines()[0] == "Your apps:"
