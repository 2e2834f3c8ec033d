"""The site config: `hub_config/shangzhuang.toml` parsed into typed, validated settings.

Every other module reads these objects, never the raw TOML. `load_settings` raises
`SettingsError`, whose lines name each wrong key (``profiles[1].gpus``) and why.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "hub_config" / "shangzhuang.toml"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(value: object) -> int:
    """'4G', '512M', '1.5GiB' or a plain integer of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as '4G' or a number of bytes")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    raise ValueError("must be a size such as '4G' or '512M' or a number of bytes")


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]
# TOML has no path type: a path is a string.
PathStr = Annotated[Path, Strict(False)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, types are strict."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Site(Section):
    name: str = "Shangzhuang Workbench"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Asia" is a folder
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name such as 'Asia/Shanghai')"
            ) from None
        return v


class Hub(Section):
    ip: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_port: int = Field(8081, ge=1, le=65535)  # the hub's internal API, on 127.0.0.1
    proxy_api_port: int = Field(8001, ge=1, le=65535)  # the proxy's REST API, on 127.0.0.1
    # Relative paths are resolved against the folder of the config file.
    state_dir: PathStr = Path("../state")
    database_url: str = ""  # empty: SQLite in state_dir
    admins: list[str] = ["admin"]
    idle_timeout_seconds: int = Field(3600, ge=0)  # 0 turns the idle culler off
    keep_sessions_on_restart: bool = True

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'jupyterhub.sqlite'}"


class NativeAuth(Section):
    open_signup: bool = False  # False: an admin approves every sign-up
    minimum_password_length: int = Field(8, ge=1)
    allowed_failed_logins: int = Field(3, ge=0)  # 0: never lock out
    seconds_before_next_try: int = Field(600, ge=0)


class Auth(Section):
    kind: Literal["native"] = "native"
    native: NativeAuth = NativeAuth()


class Gpu(Section):
    """A GPU of the node, listed by hand (or faked in tests) instead of found with NVML."""

    index: int = Field(ge=0)
    uuid: str = ""
    device: PathStr | None = None  # /dev/nvidiaN; None: no device file to guard


class LocalBackend(Section):
    user_prefix: str = Field("sz-", pattern=r"^[a-z_][a-z0-9_-]{0,15}$")
    home_root: PathStr = Path("/home")
    # Empty: detect with NVML. Non-empty: exactly these GPUs (how tests fake them).
    gpus: list[Gpu] = []

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, gpus: list[Gpu]) -> list[Gpu]:
        seen = [g.index for g in gpus]
        if len(seen) != len(set(seen)):
            raise ValueError("two GPUs share an index")
        return gpus


class Backend(Section):
    kind: Literal["local"] = "local"
    local: LocalBackend = LocalBackend()


class Profile(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    display_name: str = ""
    cores: float = Field(gt=0)
    memory: Bytes
    gpus: int = Field(0, ge=0)
    description: str = ""

    @property
    def title(self) -> str:
        return self.display_name or self.name


RESOURCES = ("gpu_hours", "cpu_hours")


class Amounts(Section):
    """An allocation per period; a resource left out is not limited."""

    gpu_hours: float | None = Field(None, ge=0)
    cpu_hours: float | None = Field(None, ge=0)

    def limits(self) -> dict[str, float]:
        return {r: getattr(self, r) for r in RESOURCES if getattr(self, r) is not None}


class QuotaAccount(Amounts):
    """An institution or project: a pool shared by its members."""

    description: str = ""


class QuotaUser(Amounts):
    """A user's account, if not the default, and optional personal caps."""

    account: str | None = None


class Quota(Section):
    enabled: bool = True
    period: Literal["monthly", "weekly", "none"] = "monthly"
    database_url: str = ""  # empty: SQLite quota.sqlite in hub.state_dir
    port: int = Field(8082, ge=1, le=65535)  # the quota service, on 127.0.0.1
    sample_seconds: float = Field(15, gt=0)
    min_minutes_to_spawn: float = Field(10, ge=0)
    warn_fraction: float = Field(0.10, ge=0, le=1)
    grace_seconds: float = Field(300, ge=0)
    default_account: str = "default"
    accounts: dict[str, QuotaAccount] = {"default": QuotaAccount()}
    users: dict[str, QuotaUser] = {}

    @model_validator(mode="after")
    def _accounts_exist(self) -> Quota:
        if self.default_account not in self.accounts:
            raise ValueError(
                f"quota.default_account: {self.default_account!r} is not in quota.accounts"
            )
        for name, user in self.users.items():
            if user.account is not None and user.account not in self.accounts:
                raise ValueError(
                    f"quota.users.{name}.account: {user.account!r} is not in quota.accounts"
                )
        return self


class Settings(Section):
    site: Site = Site()
    hub: Hub = Hub()
    auth: Auth = Auth()
    backend: Backend = Backend()
    quota: Quota = Quota()
    profiles: list[Profile] = Field(min_length=1)

    # Filled in by load_settings, not by the file.
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [p.name for p in self.profiles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"profiles: duplicate profile name {dupes[0]!r}")
        return self

    def profile(self, name: str) -> Profile:
        for p in self.profiles:
            if p.name == name:
                return p
        raise KeyError(name)


class SettingsError(Exception):
    """A site config that can't be used; `problems` holds one 'key: reason' line each."""

    def __init__(self, source: Path | str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"{self.source} is not a valid Shangzhuang config:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _key(loc: tuple, last_is_user_key: bool = False) -> str:
    out = ""
    for n, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) and not (last_is_user_key and n == len(loc) - 1):
            continue  # a step of pydantic's own (a validator, a union member), not a file key
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _reason(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{err['msg'].lower()}, got {err['input']!r}"
    # pydantic names its own classes here ("instance of Site", "<class 'pathlib.Path'>").
    if kind == "model_type":
        return "Input should be a table"
    if kind == "path_type":
        return "Input should be a path (a string)"
    if kind == "too_short":
        return err["msg"].replace(" after validation", "")
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def parse_settings(data: dict, source: Path | str = "<config>") -> Settings:
    """Validate a parsed TOML document; relative paths resolve against `source`'s folder."""
    # `source` is filled in by load_settings: in the file it is a key like any unknown one.
    problems = ["source: unknown key"] if "source" in data else []
    try:
        settings = Settings.model_validate({k: v for k, v in data.items() if k != "source"})
    except ValidationError as e:
        for err in e.errors():
            key = _key(err["loc"], last_is_user_key=err["type"] == "extra_forbidden")
            reason = _reason(err)
            # Model-level checks name their own key ("quota.default_account: ...").
            named, _, rest = reason.partition(": ")
            if rest and " " not in named and named.startswith(key.split("[")[0].split(".")[0]):
                key, reason = named, rest
            elif rest and key == "(top level)":
                key, reason = named, rest
            problems.append(f"{key}: {reason}")
        raise SettingsError(source, problems) from None
    problems += _node_problems(settings)
    if problems:
        raise SettingsError(source, problems)
    base = Path(source).resolve().parent if source != "<config>" else Path.cwd()
    hub = settings.hub.model_copy(update={"state_dir": (base / settings.hub.state_dir).resolve()})
    return settings.model_copy(update={"hub": hub, "source": Path(source)})


def node_gpus(settings: Settings) -> list:
    """The GPUs this node offers: those listed in the config, else those NVML finds."""
    from shangzhuang.hub.gpus import Gpu, detect_gpus

    listed = settings.backend.local.gpus
    if listed:
        return [Gpu(index=g.index, uuid=g.uuid, device=g.device) for g in listed]
    return detect_gpus()


def _node_problems(settings: Settings) -> list[str]:
    """Checks against this node's GPUs when the config lists them. GPUs found by NVML
    instead vary from node to node: profiles that ask for more are offered as unavailable,
    so one config serves CPU nodes, one-GPU nodes and big ones."""
    listed = settings.backend.local.gpus
    problems = [
        f"profiles[{i}].gpus: asks for {p.gpus} GPUs but this node has {len(listed)} "
        "(listed in backend.local.gpus)"
        for i, p in enumerate(settings.profiles)
        if listed and p.gpus > len(listed)
    ]
    hub, ports = settings.hub, {}
    named = [
        ("hub.port", hub.port), ("hub.api_port", hub.api_port),
        ("hub.proxy_api_port", hub.proxy_api_port), ("quota.port", settings.quota.port),
    ]  # fmt: skip
    for key, port in named:
        if port in ports:
            problems.append(f"{key}: port {port} is already used by {ports[port]}")
        ports.setdefault(port, key)
    return problems


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the site config: `path`, else $SHANGZHUANG_CONFIG, else the embedded default."""
    path = Path(path or os.environ.get("SHANGZHUANG_CONFIG") or DEFAULT_CONFIG)
    try:
        text = path.read_text(encoding="utf-8")  # TOML is UTF-8 whatever the locale
    except OSError as e:
        raise SettingsError(path, [f"cannot read the file: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise SettingsError(path, [f"not valid TOML: not UTF-8 text (byte {e.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(path, [f"not valid TOML: {e}"]) from None
    return parse_settings(data, path)
