"""`shangzhuang check FILE`: a broken site config is refused, each problem on one line
naming the key at fault and why, and `shangzhuang up` refuses it the same way.

Each broken file is the shipped `hub_config/shangzhuang.toml` with one thing changed.
Most cases call `load_settings` directly; a few run the real CLI as a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shangzhuang.settings import DEFAULT_CONFIG, SettingsError, load_settings, parse_settings

SHIPPED = DEFAULT_CONFIG.read_text(encoding="utf-8")
TWO_GPUS = 'gpus = [{index = 0, uuid = "GPU-a"}, {index = 1, uuid = "GPU-b"}]'
HEADER = "is not a valid Shangzhuang config:"


def edit(old: str, new: str, text: str = SHIPPED) -> str:
    """`text` with `old`, which must occur exactly once, replaced by `new`."""
    assert text.count(old) == 1, f"{old!r} does not occur exactly once"
    return text.replace(old, new)


def with_two_gpus(text: str = SHIPPED) -> str:
    """The GPUs listed by hand, so the result does not depend on this node's NVML."""
    return edit("gpus = []", TWO_GPUS, text)


def line_of(prefix: str, text: str = SHIPPED) -> int:
    """1-based number of the first line of `text` starting with `prefix`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(prefix))


WITHOUT_PROFILES = SHIPPED.split("[[profiles]]")[0]
PORT_LINE = line_of("port = ")

# (id, file content: text, bytes, or None for no file at all, the problems reported)
BROKEN: list[tuple[str, str | bytes | None, list[str]]] = [
    ("unknown-top-level-key", 'colour = "blue"\n' + SHIPPED, ["colour: unknown key"]),
    ("unknown-nested-key", edit("port = 8000", "prot = 8000"), ["hub.prot: unknown key"]),
    (
        "unknown-key-in-a-gpu",
        edit("gpus = []", 'gpus = [{index = 0}, {index = 1, vendor = "nvidia"}]'),
        ["backend.local.gpus[1].vendor: unknown key"],
    ),
    # A key that looks like pydantic's own steps ("union[...]") is still the user's key.
    ("unknown-key-with-brackets", '"gpu[0]" = 1\n' + SHIPPED, ["gpu[0]: unknown key"]),
    # `source` is an attribute load_settings fills in, not a key of the file.
    ("source-is-not-a-key", 'source = "/etc/x.toml"\n' + SHIPPED, ["source: unknown key"]),
    (
        "port-as-string",
        edit("port = 8000", 'port = "8000"'),
        ["hub.port: Input should be a valid integer"],
    ),
    (
        "port-out-of-range",
        edit("port = 8000", "port = 70000"),
        ["hub.port: Input should be less than or equal to 65535"],
    ),
    (
        "admins-not-a-list",
        edit('admins = ["admin"]', 'admins = "admin"'),
        ["hub.admins: Input should be a valid list"],
    ),
    (
        "state-dir-not-a-path",
        edit('state_dir = "../state"', "state_dir = 5"),
        ["hub.state_dir: Input should be a path (a string)"],
    ),
    (
        "site-not-a-table",
        edit('[site]\nname = "Shangzhuang Workbench"\n', 'site = "Shangzhuang"\n[x]\n'),
        ["site: Input should be a table", "x: unknown key"],
    ),
    (
        "negative-cores",
        edit("cores = 2\n", "cores = -1\n"),
        ["profiles[0].cores: Input should be greater than 0"],
    ),
    (
        "negative-memory-size",
        edit('memory = "4G"', 'memory = "-4G"'),
        ["profiles[0].memory: must be a size such as '4G' or '512M' or a number of bytes"],
    ),
    (
        "bad-memory-size",
        edit('memory = "64G"', 'memory = "64 gigs"'),
        ["profiles[1].memory: must be a size such as '4G' or '512M' or a number of bytes"],
    ),
    (
        "negative-memory-bytes",
        edit('memory = "4G"', "memory = -5"),
        ["profiles[0].memory: Input should be greater than or equal to 0"],
    ),
    (
        "negative-gpus",
        edit("gpus = 0\n", "gpus = -1\n"),
        ["profiles[0].gpus: Input should be greater than or equal to 0"],
    ),
    (
        "missing-cores",
        edit("cores = 2\n", ""),
        ["profiles[0].cores: required key is missing"],
    ),
    (
        "negative-idle-timeout",
        edit("idle_timeout_seconds = 3600", "idle_timeout_seconds = -5"),
        ["hub.idle_timeout_seconds: Input should be greater than or equal to 0"],
    ),
    (
        "more-gpus-than-the-node-has",
        with_two_gpus(edit("gpus = 2\n", "gpus = 3\n")),
        ["profiles[2].gpus: asks for 3 GPUs but this node has 2 (listed in backend.local.gpus)"],
    ),
    (
        "unknown-auth-kind",
        edit('kind = "native"', 'kind = "kerberos"'),
        ["auth.kind: input should be 'native', 'ldap' or 'oidc', got 'kerberos'"],
    ),
    (
        "unknown-backend-kind",
        edit('kind = "local"', 'kind = "kubernetes"'),
        ["backend.kind: input should be 'local' or 'slurm', got 'kubernetes'"],
    ),
    (
        "unknown-time-zone",
        edit('"Asia/Shanghai"', '"Mars/Olympus"'),
        [
            "site.timezone: unknown time zone 'Mars/Olympus' "
            "(use an IANA name such as 'Asia/Shanghai')"
        ],
    ),
    (
        # A folder of the zone database: ZoneInfo raises IsADirectoryError, not ValueError.
        "time-zone-is-a-region",
        edit('"Asia/Shanghai"', '"Asia"'),
        ["site.timezone: unknown time zone 'Asia' (use an IANA name such as 'Asia/Shanghai')"],
    ),
    (
        "duplicate-profile-names",
        edit('name = "gpu-2"', 'name = "gpu-1"'),
        ["profiles: duplicate profile name 'gpu-1'"],
    ),
    (
        "bad-profile-name",
        edit('name = "cpu"', 'name = "Big CPU"'),
        ["profiles[0].name: String should match pattern '^[a-z0-9][a-z0-9_-]*$'"],
    ),
    ("no-profiles", WITHOUT_PROFILES, ["profiles: required key is missing"]),
    (
        "empty-profiles",
        "profiles = []\n" + WITHOUT_PROFILES,
        ["profiles: List should have at least 1 item, not 0"],
    ),
    (
        "invalid-toml",
        edit("port = 8000", "port = "),
        [f"not valid TOML: Invalid value (at line {PORT_LINE}, column 8)"],
    ),
    (
        "not-utf-8",
        b"# \xff\n" + SHIPPED.encode(),
        ["not valid TOML: not UTF-8 text (byte 2)"],
    ),
    ("file-missing", None, ["cannot read the file: No such file or directory"]),
    (
        "bad-user-prefix",
        edit('user_prefix = "sz-"', 'user_prefix = "SZ!"'),
        [
            "backend.local.user_prefix: must be empty, or a lowercase letter or _ followed by"
            " up to 15 of a-z 0-9 _ -"
        ],
    ),
    (
        "two-gpus-same-index",
        edit("gpus = []", "gpus = [{index = 0}, {index = 0}]"),
        ["backend.local.gpus: two GPUs share an index"],
    ),
    (
        "negative-gpu-index",
        edit("gpus = []", "gpus = [{index = -1}]"),
        ["backend.local.gpus[0].index: Input should be greater than or equal to 0"],
    ),
]
CASES = {case_id: (content, problems) for case_id, content, problems in BROKEN}
# The ones also run through the real CLI.
CLI_CASES = ["unknown-nested-key", "more-gpus-than-the-node-has", "invalid-toml", "file-missing"]

# Several problems in one file: every one is reported, one line each.
SEVERAL = edit(
    'user_prefix = "sz-"',
    'user_prefix = "SZ"',
    edit(
        "cores = 2\n",
        "cores = -1\n",
        edit('"Asia/Shanghai"', '"Mars/Olympus"', edit("port = 8000", 'port = "8000"')),
    ),
)
SEVERAL = 'colour = "blue"\n' + SEVERAL
SEVERAL_PROBLEMS = {
    "colour: unknown key",
    "site.timezone: unknown time zone 'Mars/Olympus' (use an IANA name such as 'Asia/Shanghai')",
    "hub.port: Input should be a valid integer",
    "backend.local.user_prefix: must be empty, or a lowercase letter or _ followed by up to 15"
    " of a-z 0-9 _ -",
    "profiles[0].cores: Input should be greater than 0",
}


def write(folder: Path, content: str | bytes | None, name: str = "shangzhuang.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    return path


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command line, as `shangzhuang ...` runs it."""
    base = {k: v for k, v in os.environ.items() if k != "SHANGZHUANG_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "shangzhuang.cli", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refusal(path: Path, problems: list[str] | set[str]) -> str:
    """What the CLI prints on stderr for a refused config (in the order given)."""
    return "\n".join([f"{path} {HEADER}", *(f"  {p}" for p in problems)]) + "\n"


# --- each broken file, through load_settings ------------------------------------------


@pytest.mark.parametrize("case_id", list(CASES))
def test_broken_config_names_key_and_reason(tmp_path, case_id):
    content, problems = CASES[case_id]
    path = write(tmp_path, content)
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    assert refused.value.problems == problems
    assert str(refused.value) == refusal(path, problems).rstrip("\n")


def test_every_case_breaks_something_different():
    assert len(BROKEN) == len(CASES)  # no id used twice
    assert len({c for _, c, _ in BROKEN if c is not None}) == len(BROKEN) - 1


# --- any change to the shipped config: a clean refusal or a pass, never a traceback ---------

KEY = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.sampled_from(["Asia", "America", "UTC", "4G", "-4G", "1.5GiB", "native", "local", "sz-"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY, inner, max_size=3),
    max_leaves=6,
)
LEAKS = ("function-", "instance of", "<class", "after validation", "Value error", "is-instance")
TOKEN = re.compile(r"([a-z_]+)|\[(\d+)\]")


def paths(node, prefix=()):
    """Every path into a parsed TOML document: keys and list indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, dict | list) and v:
            yield from paths(v, (*prefix, k))


def parent_exists(data, key: str) -> bool:
    """Whether everything but the last step of a problem's key path is in `data`."""
    steps = [int(i) if i else k for k, i in TOKEN.findall(key)]
    assert "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".") == key
    node = data
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_change_is_refused_cleanly_or_passes(data):
    doc = tomllib.loads(with_two_gpus())
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        path = data.draw(st.sampled_from(list(paths(doc))), label="path")
        *parents, last = path
        node = doc
        for step in parents:
            node = node[step]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            node[last] = data.draw(VALUES, label="value")
        elif action == "delete":
            del node[last]
        elif isinstance(node, dict):
            node[data.draw(KEY, label="new key")] = data.draw(VALUES, label="value")
    try:
        parse_settings(doc, "test.toml")
    except SettingsError as refused:
        assert refused.problems
        for line in refused.problems:
            key, sep, reason = line.partition(": ")
            assert sep and reason, line
            assert not any(leak in line for leak in LEAKS), line
            assert parent_exists(doc, key), line


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(SettingsError) as refused:
        load_settings(tmp_path)
    assert refused.value.problems == ["cannot read the file: Is a directory"]


def test_several_problems_are_all_reported(tmp_path):
    path = write(tmp_path, SEVERAL)
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    assert len(refused.value.problems) == len(SEVERAL_PROBLEMS)
    assert set(refused.value.problems) == SEVERAL_PROBLEMS


def test_gpu_profiles_within_the_listed_gpus_pass(tmp_path):
    path = write(tmp_path, with_two_gpus())
    settings = load_settings(path)
    assert [p.gpus for p in settings.profiles] == [0, 1, 2]
    assert [g.index for g in settings.backend.local.gpus] == [0, 1]
    assert settings.hub.state_dir == (tmp_path.parent / "state").resolve()


# --- the real CLI ---------------------------------------------------------------------


def test_cli_shipped_config_passes(tmp_path):
    done = cli("check", str(DEFAULT_CONFIG), cwd=tmp_path)
    # Whatever NVML finds here (none, one GPU, eight), the shipped config is valid: GPU
    # profiles a node can't hold are offered as unavailable, not refused.
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ok: {DEFAULT_CONFIG}\n"
    assert done.stderr == ""


def test_cli_passes_a_valid_config_with_listed_gpus(tmp_path):
    path = write(tmp_path / "conf", with_two_gpus())
    done = cli("check", str(path), cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ok: {path}\n", "")


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_cli_refuses_broken_config(tmp_path, case_id):
    content, problems = CASES[case_id]
    path = write(tmp_path / "conf", content)
    done = cli("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == refusal(path, problems)


def test_cli_reports_several_problems_one_line_each(tmp_path):
    path = write(tmp_path / "conf", SEVERAL)
    done = cli("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    header, *lines = done.stderr.splitlines()
    assert header == f"{path} {HEADER}"
    assert all(line.startswith("  ") for line in lines)
    assert {line.strip() for line in lines} == SEVERAL_PROBLEMS
    assert len(lines) == len(SEVERAL_PROBLEMS)


def test_cli_check_without_a_path_reads_shangzhuang_config(tmp_path):
    content, problems = CASES["unknown-auth-kind"]
    path = write(tmp_path / "conf", content)
    done = cli("check", cwd=tmp_path, env={"SHANGZHUANG_CONFIG": str(path)})
    assert (done.returncode, done.stderr) == (2, refusal(path, problems))


def test_cli_reads_utf8_whatever_the_locale(tmp_path):
    # A Chinese site name, checked under a plain C locale with Python's UTF-8 mode off.
    text = with_two_gpus(edit('name = "Shangzhuang Workbench"', 'name = "上庄工作台"'))
    path = write(tmp_path / "conf", text)
    done = cli("check", str(path), cwd=tmp_path, env={"LC_ALL": "C", "PYTHONUTF8": "0"})
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ok: {path}\n", "")


def test_cli_up_refuses_broken_config_before_starting_anything(tmp_path):
    content, problems = CASES["more-gpus-than-the-node-has"]
    path = write(tmp_path / "conf", content)
    state = tmp_path / "state"  # where state_dir = "../state" points
    checked = cli("check", str(path), cwd=tmp_path)
    done = cli("up", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == checked.stderr == refusal(path, problems)
    assert done.stdout == ""
    assert not state.exists()  # no state folder, no admin password, no hub
