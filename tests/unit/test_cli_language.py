"""The operator's commands speak the operator's language (issue 14): `shangzhuang check`,
`up`, `quota`, `backup`, `restore`, `upgrade-db` and `install` print their lines in Chinese
in a zh_CN terminal, in English with LANG=C, and in site.language when no locale is set.

The commands run in this process (cli.main, as the `shangzhuang` script runs it) on real
configs, a real ledger and real state folders; only `up`'s exec of JupyterHub is stopped
short. tests/unit/test_check.py, test_cli_quota.py, test_operate.py and test_install.py run
the same commands in English.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import pytest

from shangzhuang import cli, i18n
from tests.unit.test_i18n import english_left

LOCALE = ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE", i18n.ENVIRONMENT)

CONFIG = """
[site]
timezone = "Asia/Shanghai"
{site}
[hub]
state_dir = "state"
[quota.accounts.default]
gpu_hours = 10
[quota.accounts.physics]
gpu_hours = 50
[quota.users.ann]
gpu_hours = 2
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
"""

WRONG = """
[site]
timezone = "Mars/Olympus"
[auth]
kind = "kerberos"
[hub]
port = "eight"
public_url = "http://hub.localhost/lab"
[[profiles]]
name = "Big GPU"
cores = 0
memory = "lots"
"""

# What stays as it is inside a Chinese sentence: names, units, commands and their options.
KEPT = {"Shangzhuang", "Workbench", "Hub", "SQLite", "TOML", "UTF", "ISO", "IANA", "Ctrl", "pid",
        "admin", "ann", "physics", "default", "course", "project"}  # fmt: skip


def english_sentences(text: str) -> list[str]:
    """English words left in `text`, once paths, keys (hub.port), options (--since),
    commands in backquotes, settings (key = value), quoted names, $VARIABLES and the
    command that speaks ('shangzhuang quota grant: ...') are taken out."""
    text = re.sub(r"^shangzhuang [a-z -]+:", " ", text, flags=re.M)
    text = re.sub(r"`[^`]*`|'[^']*'|\$\w+|[\w.]+ = \w+|\S*[/._=$-]\S*", " ", text)
    return [w for w in english_left(text) if w not in KEPT]


@pytest.fixture
def terminal(monkeypatch, tmp_path):
    """Run `shangzhuang ...` with a given locale; returns (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)  # `up` changes into the state folder; put back after
    monkeypatch.setattr(cli.os, "execve", lambda *a: (_ for _ in ()).throw(Exec()))
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
    monkeypatch.delenv("SHANGZHUANG_ADMIN_PASSWORD", raising=False)

    def run(*argv, locale: str | None = "zh_CN.UTF-8", session: str | None = None):
        for name in LOCALE:
            monkeypatch.delenv(name, raising=False)
        if locale is not None:
            monkeypatch.setenv("LANG", locale)
        if session is not None:  # a Lab session's language, set by the hub
            monkeypatch.setenv(i18n.ENVIRONMENT, session)
        out, err = [], []
        monkeypatch.setattr(sys, "stdout", _Lines(out))
        monkeypatch.setattr(sys, "stderr", _Lines(err))
        try:
            status = cli.main([str(a) for a in argv])
        except (SystemExit, Exec) as e:
            status = e.code if isinstance(e, SystemExit) else "exec"
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        assert i18n.current() == "en", "the command's language must not outlive it"
        run.said += out + err
        return status, "".join(out), "".join(err)

    run.said = []  # everything the commands printed
    return run


class Exec(Exception):
    """Raised instead of exec'ing JupyterHub."""


class _Lines:
    def __init__(self, into: list):
        self.into = into

    def write(self, text: str) -> int:
        self.into.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def site(folder: Path, site: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.toml"
    path.write_text(CONFIG.format(site=site))
    return path


@pytest.mark.parametrize(
    "env, site_language, expected",
    [
        ({"LANG": "zh_CN.UTF-8"}, "auto", "zh_CN"),
        ({"LANG": "zh_CN.UTF-8", "LC_ALL": "C"}, "auto", "en"),  # LC_ALL wins, as in gettext
        ({"LANG": "C", "LC_MESSAGES": "zh_CN.UTF-8"}, "auto", "zh_CN"),
        ({"LANG": "C.UTF-8"}, "zh_CN", "en"),  # a locale is set: the site's doesn't override it
        ({"LANG": "en_US.UTF-8"}, "zh_CN", "en"),
        ({}, "zh_CN", "zh_CN"),  # a service manager's bare environment: the site's language
        ({}, "auto", "en"),
        ({"LANG": ""}, "en", "en"),
    ],
)
def test_the_operators_language(monkeypatch, env, site_language, expected):
    for name in LOCALE:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert i18n.operator_language(site_language) == expected


def test_the_operators_commands_in_a_chinese_terminal(terminal, tmp_path):
    config = site(tmp_path / "etc")

    status, out, err = terminal("check", config)
    assert (status, out, err) == (0, f"配置文件有效：{config}\n", "")

    broken = tmp_path / "broken.toml"
    broken.write_text(config.read_text() + "[apps]\nport = 8000\ncolour = 'red'\n")
    status, out, err = terminal("check", broken)
    assert status == 2 and out == ""
    assert err.splitlines() == [f"{broken} 不是有效的 Shangzhuang 配置文件：",
                                "  apps.colour: 未知的配置项"]  # fmt: skip
    broken.write_text(config.read_text() + "[apps]\nport = 8000\n")
    status, out, err = terminal("check", broken)
    assert err.splitlines()[1] == "  apps.port: 端口 8000 已被 hub.port 占用"
    # pydantic's own reasons and our validators' in Chinese; keys and values as written.
    broken.write_text(WRONG)
    status, out, err = terminal("check", broken)
    assert err.splitlines()[1:] == [
        "  site.timezone: 未知的时区 'Mars/Olympus'（请使用 'Asia/Shanghai' 这样的 IANA 名称）",
        "  hub.port: 应为整数",
        "  hub.public_url: 'http://hub.localhost/lab'：Hub 须位于主机的根路径（不能带路径）",
        "  auth.kind: 应为 'native'、'ldap' 或 'oidc'，而不是 'kerberos'",
        "  profiles[0].name: 应符合模式 '^[a-z0-9][a-z0-9_-]*$'",
        "  profiles[0].cores: 应大于 0",
        "  profiles[0].memory: 应为 '4G'、'512M' 这样的大小，或字节数",
    ]
    broken.write_text(config.read_text().replace("[hub]", "[apps]\nprofile = 'big'\n[hub]"))
    assert terminal("check", broken)[2].splitlines()[1:] == [
        "  apps.profile: 'big' 不是已有的配置"]  # a check across sections names its key too

    unset = site(tmp_path / "unset", site="[quota]\ndatabase_url_env = 'SZ_NOT_SET'")
    status, out, err = terminal("up", "--config", unset)
    assert (status, err) == (2, f"{unset}: quota.database_url_env：环境变量 SZ_NOT_SET 未设置\n")
    status, out, err = terminal("up", "--config", config)
    assert status == "exec"  # JupyterHub's exec, stopped short, after the first-run lines
    kept = tmp_path / "etc" / "state" / "admin-password"
    password = kept.read_text().strip()
    assert out.splitlines()[:2] == [f"首次启动：管理员 'admin'，密码 {password}",
                                    f"（保存在 {kept}，权限 0600）"]  # fmt: skip
    started = "Shangzhuang Workbench 正在 http://hub.localhost:8000 上启动（按 Ctrl-C 停止）"
    assert out.splitlines()[2] == started
    assert not english_sentences(out.replace(password, "")), out

    grant = ("quota", "grant", "--resource", "gpu_hours", "--amount", "1.5", "--reason",
             "course project", "--by", "ops", "--config", config)  # fmt: skip
    status, out, err = terminal(*grant, "--user", "ann")
    assert (status, err) == (0, "") and out.startswith("已为用户 ann 追加 1.5 gpu_hours（追加记录 ")
    status, out, err = terminal(*grant, "--account", "chemistry")
    assert (status, err) == (2, "shangzhuang quota grant: 没有计费账户 'chemistry'\n")
    status, out, err = terminal("quota", "show", "--config", config)
    head, columns, *rows = out.splitlines()
    assert head.startswith("本周期自 ") and head.endswith(" 重置")
    assert columns.split() == ["计费账户", "资源", "已用", "总量", "剩余"]
    assert "default              gpu_hours          0.00        10.00        10.00" in rows
    # The columns line up in a terminal: a Chinese character takes two columns.
    assert width(columns[: columns.index("资源")]) == rows[0].index("gpu_hours") == 21
    status, out, err = terminal("quota", "show", "ann", "--config", config)
    assert out.splitlines()[0] == "ann 的配额（计费账户 default）：充足"
    status, out, err = terminal("quota", "report", "--since", "last week", "--config", config)
    assert status == 2 and err == "--since 须为 ISO 8601 格式的日期或时间，而不是 'last week'\n"
    status, out, err = terminal("quota", "report", "--config", config)
    assert out.split() == ["用户", "计费账户", "资源", "已用"]

    status, out, err = terminal("upgrade-db", "--config", config)
    assert (status, out) == (0, "数据库结构已是当前版本：无需升级\n")
    status, out, err = terminal("backup", tmp_path / "backup", "--config", config)
    backup = tmp_path / "backup"
    assert (status, out) == (0, f"已将 quota.sqlite、admin-password 备份到 {backup}\n")
    status, out, err = terminal("backup", backup, "--config", config)
    assert (status, err) == (2, f"shangzhuang backup: {backup} 不是空目录：请备份到一个新目录\n")
    status, out, err = terminal("restore", tmp_path / "backup", "--config", config)
    assert status == 2 and "已存在：请恢复到全新的状态目录（先把 " in err

    status, out, err = terminal("install", "--config", config, "--root", tmp_path / "root")
    assert (status, err) == (2, f"shangzhuang install: {config}：请设置 hub.separate_proxy = "
                                "true（代理单独作为一个服务运行，重启 Hub 时连接不会中断）\n")

    said = "".join(terminal.said).replace(password, "")
    assert not english_sentences(said), said


def test_the_same_commands_in_english_with_lang_c(terminal, tmp_path):
    config = site(tmp_path / "etc", site='language = "zh_CN"')  # the terminal's C wins
    broken = tmp_path / "broken.toml"
    broken.write_text(config.read_text() + "[apps]\ncolour = 'red'\n")
    status, out, err = terminal("check", broken, locale="C")
    assert err.splitlines() == [f"{broken} is not a valid Shangzhuang config:",
                                "  apps.colour: unknown key"]  # fmt: skip
    status, out, err = terminal("quota", "grant", "--resource", "gpu_hours", "--amount", "2",
                                "--reason", "r", "--by", "ops", "--account", "physics",
                                "--config", config, locale="C")  # fmt: skip
    assert (status, err) == (0, "") and out.startswith("granted 2 gpu_hours to account physics")
    status, out, err = terminal("upgrade-db", "--config", config, locale="C")
    assert out == "the databases are at this version's schema: nothing to upgrade\n"


def test_without_a_locale_the_sites_language(terminal, tmp_path):
    """A service manager or cron runs the commands with no locale at all."""
    config = site(tmp_path / "etc", site='language = "zh_CN"')
    status, out, err = terminal("upgrade-db", "--config", config, locale=None)
    assert out == "数据库结构已是当前版本：无需升级\n"
    status, out, err = terminal("check", config, locale=None)
    assert out == f"配置文件有效：{config}\n"


def test_shangzhuang_apps_keeps_the_sessions_language(terminal, tmp_path):
    """`apps` is run by users in their sessions: their session's language wins over the
    locale, for its refusals too (test_i18n runs `apps list` in both)."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[apps]\ncolour = 'red'\n")
    status, out, err = terminal("apps", "list", "--config", broken, session="en")
    assert (status, err.splitlines()[0]) == (2, f"{broken} is not a valid Shangzhuang config:")
    status, out, err = terminal("apps", "list", "--config", broken, locale="C", session="zh_CN")
    assert err.splitlines()[0] == f"{broken} 不是有效的 Shangzhuang 配置文件："
