"""The site config: `hub_config/shangzhuang.toml` parsed into typed, validated settings.

Every other module reads these objects, never the raw TOML. `load_settings` raises
`SettingsError`, whose lines name each wrong key (``profiles[1].gpus``) and why.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse
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

from shangzhuang.i18n import Message, Plural

# The embedded default config and the workbench's own tutorials: in the checkout, or in the
# installed wheel, which carries them as package data (pyproject.toml's force-include).
_CHECKOUT = Path(__file__).resolve().parents[2]
_PACKAGED = Path(__file__).resolve().parent / "site"
_FROM_WHEEL = (_PACKAGED / "shangzhuang.toml").is_file()
DEFAULT_CONFIG = (_PACKAGED if _FROM_WHEEL else _CHECKOUT / "hub_config") / "shangzhuang.toml"
TUTORIALS = (_PACKAGED if _FROM_WHEEL else _CHECKOUT) / "notebooks"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(value: object) -> int:
    """'4G', '512M', '1.5GiB' or a plain integer of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError(Message("must be a size such as '4G' or a number of bytes"))
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    raise ValueError(Message("must be a size such as '4G' or '512M' or a number of bytes"))


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]
# TOML has no path type: a path is a string.
PathStr = Annotated[Path, Strict(False)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, types are strict."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Site(Section):
    name: str = "Shangzhuang Workbench"
    timezone: str = "UTC"
    # The pages' language for a reader who hasn't chosen one (the switch on every page):
    # "auto" follows the browser's Accept-Language (English when it asks for neither).
    language: Literal["auto", "zh_CN", "en"] = "auto"
    # An image shown on every hub page and large on the login page (served at /hub/logo).
    # Relative paths are resolved against the folder of the config file.
    logo: PathStr | None = None
    # The platform's unprivileged system account (`shangzhuang install` makes it): the proxy
    # runs as it, and so do the apps service and the idle culler when the hub is root and
    # the account exists (docs/operating.md, "What runs where").
    service_account: str = "shangzhuang"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Asia" is a folder
            raise ValueError(Message(
                "unknown time zone {zone} (use an IANA name such as 'Asia/Shanghai')",
                zone=repr(v))) from None  # fmt: skip
        return v


class Hub(Section):
    ip: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_port: int = Field(8081, ge=1, le=65535)  # the hub's internal API, on 127.0.0.1
    proxy_api_port: int = Field(8001, ge=1, le=65535)  # the proxy's REST API, on 127.0.0.1
    # Relative paths are resolved against the folder of the config file.
    state_dir: PathStr = Path("../state")
    database_url: str = ""  # empty: SQLite in state_dir; with a password: _file or _env
    database_url_file: PathStr | None = None  # the URL kept in a file only the hub reads
    database_url_env: str | None = None  # ... or in this environment variable
    admins: list[str] | None = None  # None: ["admin"] with native sign-in, else nobody
    idle_timeout_seconds: int = Field(3600, ge=0)  # 0 turns the idle culler off
    keep_sessions_on_restart: bool = True
    # Users' own Jupyter config files (~/.jupyter) can't change how their server runs.
    disable_user_config: bool = True
    # Lab named servers a user may have (apps don't count: apps.max_apps_per_user); 0 = no limit.
    named_server_limit_per_user: int = Field(3, ge=0)
    # Servers running on the whole site, apps included; a spawn past it waits. 0 = no limit.
    active_server_limit: int = Field(0, ge=0)
    # The proxy runs as its own service (shangzhuang install's shangzhuang-proxy.service), so
    # a hub restart or upgrade drops no connection; the hub reads their shared token from
    # $CONFIGPROXY_AUTH_TOKEN. False: the hub starts the proxy as its child (`make up`).
    separate_proxy: bool = False
    # How long the proxy keeps a client's idle keep-alive connection open. Longer than a
    # browser keeps one (Chromium: 300 s) and than a Lab's 30 s polls, so the client closes
    # first and never sends on a connection the proxy is closing (with Node's default, 5 s,
    # such requests got no answer under load: docs/benchmarks.md, the proxy's keep-alive).
    proxy_keep_alive_seconds: int = Field(330, ge=1, le=3600)

    # The address people open. User servers and apps get an origin of their own below it,
    # http://NAME.hub.localhost:8000 (JupyterHub's subdomain_host): a site needs wildcard DNS
    # and, with https, a wildcard certificate. "" = http://hub.localhost:{port} (browsers
    # resolve every *.localhost name to this machine).
    public_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _origin_with_subdomains(cls, v: str) -> str:
        if not v:
            return v
        u = urlparse(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(Message("{url} is not a URL such as 'https://hub.example.org'",
                                     url=repr(v)))  # fmt: skip
        if u.path not in ("", "/") or u.query or u.fragment:
            raise ValueError(Message("{url}: the hub is served at the root of its host (no "
                                     "path)", url=repr(v)))  # fmt: skip
        try:
            ipaddress.ip_address(u.hostname)
        except ValueError:
            return v.rstrip("/")
        raise ValueError(Message(
            "{url}: a host name is needed, not an address, since user servers and apps are "
            "served on NAME.<host> (e.g. 'http://hub.localhost:8000' on one machine)",
            url=repr(v)))  # fmt: skip

    @property
    def url(self) -> str:
        """The hub's own origin, as people open it."""
        return self.public_url or f"http://hub.localhost:{self.port}"

    @property
    def bind_url(self) -> str:
        """Where the proxy listens."""
        return f"http://{self.ip}:{self.port}"

    def user_origin(self, name: str) -> str:
        """Where NAME's servers and apps are served (JupyterHub's own subdomain rule)."""
        from jupyterhub.utils import subdomain_hook_idna

        u = urlparse(self.url)
        host = subdomain_hook_idna(name, u.hostname, "user")
        return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "")

    @property
    def db_url(self) -> str:
        if self.database_url_file or self.database_url_env:
            return read_secret("hub.database_url", self.database_url_file, self.database_url_env)
        return self.database_url or f"sqlite:///{self.state_dir / 'jupyterhub.sqlite'}"

    @model_validator(mode="before")
    @classmethod
    def _no_inline_db_password(cls, data: object) -> object:
        return _refuse_inline_db_password(data, "hub")


RESERVED_NAMES = [
    "root", "admin", "administrator", "hub", "jupyterhub", "api", "services", "user",
    "users", "system", "support", "security", "nobody", "daemon", "operator", "staff",
]  # fmt: skip


class NativeAuth(Section):
    open_signup: bool = False  # False: an admin approves every sign-up
    minimum_password_length: int = Field(8, ge=1)
    # Failed logins from one address before each further one makes that address wait
    # (1 s, 2 s, 4 s ... up to seconds_before_next_try). Accounts are never locked.
    allowed_failed_logins: int = Field(3, ge=0)
    seconds_before_next_try: int = Field(600, ge=1)
    signups_per_address_per_hour: int = Field(5, ge=1)
    # Sign-up closes (for a while) when this many wait for an admin's approval.
    max_pending_signups: int = Field(100, ge=1)
    # Names nobody may sign up as, besides those in hub.admins.
    reserved_names: list[str] = RESERVED_NAMES


def _refuse_inline_secret(data: object, key: str, section: str, stem: str) -> object:
    """A secret written into the site config is refused (without echoing it)."""
    if isinstance(data, dict) and key in data:
        raise ValueError(_at(f"{section}.{key}", Message(
            "a secret never goes in the config file; use {file} (a file only the hub's account "
            "can read) or {env} (an environment variable)", file=stem + "_file",
            env=stem + "_env")))  # fmt: skip
    return data


def _refuse_inline_db_password(data: object, section: str) -> object:
    """A database URL with a password in it is refused (without echoing it); one source."""
    if not isinstance(data, dict):
        return data
    url = data.get("database_url") or ""
    if isinstance(url, str) and re.match(r"^[\w+.-]+://[^/@:]*:[^/@]+@", url):
        raise ValueError(_at(f"{section}.database_url", Message(
            "it holds a password, which never goes in the config file; put the whole URL in "
            "database_url_file (a file only the hub's account can read) or database_url_env "
            "(an environment variable)")))  # fmt: skip
    sources = [k for k in ("database_url", "database_url_file", "database_url_env") if data.get(k)]
    if len(sources) > 1:
        raise ValueError(_at(section, Message("set only one of {keys}", keys=sources)))
    return data


def _at(key: str, reason: Message) -> str:
    """A model check's 'key: reason' (parse_settings takes the key from before ': '), the
    reason in the reader's language now: pydantic keeps the words, not the Message."""
    return f"{key}: {reason}"


def read_secret(key: str, file: Path | None, env: str | None) -> str:
    """A secret from its file or environment variable; ValueError naming the key if absent
    (its Message in the reader's language where it is shown: `shangzhuang up` prints it)."""
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ValueError(Message("{key}: can't read {file} ({error})", key=key + "_file",
                                     file=repr(str(file)), error=e.strerror)) from None
        if not value:
            raise ValueError(Message("{key}: {file} is empty", key=key + "_file",
                                     file=repr(str(file))))  # fmt: skip
        return value
    value = os.environ.get(env or "", "").strip()
    if not value:
        raise ValueError(Message("{key}: the environment variable {name} is not set",
                                 key=key + "_env", name=str(env)))  # fmt: skip
    return value


def _one_secret_source(section: str, stem: str, file: Path | None, env: str | None) -> None:
    if (file is None) == (env is None):
        raise ValueError(_at(section, Message("set exactly one of {file} and {env}",
                                              file=stem + "_file", env=stem + "_env")))


def _tidy_dn(dn: str) -> str:
    """'cn=pku, ou=groups' -> 'cn=pku,ou=groups' (ldap3 refuses the spaces); not a DN: error."""
    parts = [p.strip() for p in re.split(r"(?<!\\),", dn)]
    if not all(re.match(r"^[A-Za-z][\w.-]*\s*=", p) for p in parts):
        raise ValueError(Message("{dn} is not a DN such as 'cn=staff,ou=groups,dc=example,"
                                 "dc=org'", dn=repr(dn)))  # fmt: skip
    return ",".join(re.sub(r"^([\w.-]+)\s*=\s*", r"\1=", p) for p in parts)


class LdapAuth(Section):
    """Sign-in against an LDAP directory (jupyterhub-ldapauthenticator)."""

    server: str = Field(min_length=1)  # host name or address
    port: int | None = Field(None, ge=1, le=65535)  # None: 636 for ldaps, else 389
    # ldaps: TLS from the first byte; starttls: upgrade before the password is sent;
    # plain: no TLS at all, for test rigs on 127.0.0.1 only.
    tls: Literal["ldaps", "starttls", "plain"] = "starttls"
    ca_file: PathStr | None = None  # CA bundle that signed the server's certificate
    timeout_seconds: float = Field(5, gt=0)  # connect and answer timeout per request
    # Either a bind DN template ("uid={username},ou=people,dc=example,dc=org") ...
    bind_dn_template: list[str] = []
    # ... or a DN lookup: search user_search_base for user_attribute = the login name.
    user_search_base: str = ""
    user_attribute: str = "uid"
    search_user: str = ""  # DN to search as; empty: anonymous search
    search_password_file: PathStr | None = None
    search_password_env: str | None = None
    # Groups: entries under group_search_base whose filter names the user.
    group_search_base: str = ""
    group_filter: str = "(|(member={userdn})(uniqueMember={userdn})(memberUid={uid}))"
    allowed_groups: list[str] = []  # group DNs whose members may sign in
    admin_groups: list[str] = []  # group DNs whose members are hub admins (and may sign in)
    allow_all: bool = False  # True: anyone the directory knows may sign in

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: object) -> object:
        return _refuse_inline_secret(data, "search_password", "auth.ldap", "search_password")

    @field_validator("user_search_base", "search_user", "group_search_base")
    @classmethod
    def _one_dn(cls, v: str) -> str:
        return _tidy_dn(v) if v else v

    @field_validator("allowed_groups", "admin_groups")
    @classmethod
    def _dns(cls, dns: list[str]) -> list[str]:
        return [_tidy_dn(dn) for dn in dns]

    @field_validator("bind_dn_template")
    @classmethod
    def _has_username(cls, templates: list[str]) -> list[str]:
        for t in templates:
            if "{username}" not in t:
                raise ValueError(Message("{template} has no {username} in it",
                                         template=repr(t), username="{username}"))
        return templates

    @model_validator(mode="after")
    def _consistent(self) -> LdapAuth:
        if self.tls == "plain" and self.server not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(_at("auth.ldap.tls", Message(
                "'plain' sends passwords unencrypted, so only to a directory on 127.0.0.1; use "
                "'ldaps' or 'starttls' (the certificate is verified against ca_file, else the "
                "system's CA bundle)")))  # fmt: skip
        if bool(self.bind_dn_template) == bool(self.user_search_base):
            raise ValueError(_at("auth.ldap", Message(
                "set exactly one of bind_dn_template (users' DNs from their names) and "
                "user_search_base (DNs looked up in the directory)")))  # fmt: skip
        secret = self.search_password_file or self.search_password_env
        if secret and not self.search_user:
            raise ValueError(_at("auth.ldap.search_user",
                                 Message("a search password is set but no search_user")))
        if self.search_user and self.user_search_base:
            _one_secret_source(
                "auth.ldap", "search_password", self.search_password_file,
                self.search_password_env,
            )  # fmt: skip
        if not (self.allowed_groups or self.admin_groups or self.allow_all):
            raise ValueError(_at("auth.ldap.allowed_groups", Message(
                "empty, so nobody could sign in; list the group DNs whose members may, or set "
                "allow_all = true to let everyone in the directory in")))  # fmt: skip
        return self

    @property
    def uses_groups(self) -> bool:
        return bool(self.allowed_groups or self.admin_groups)


class OidcAuth(Section):
    """Sign-in with an OpenID Connect provider (Keycloak, CAS or Shibboleth bridges...)."""

    issuer: str  # discovery reads {issuer}/.well-known/openid-configuration at hub start
    display_name: str = "your institution"  # the login button: "Sign in with ..."
    client_id: str = Field(min_length=1)
    client_secret_file: PathStr | None = None
    client_secret_env: str | None = None
    # How the hub authenticates at the token endpoint (as registered with the provider).
    client_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    # Where the provider sends users back; empty: {hub address}/hub/oauth_callback. Set it
    # when users reach the hub through another address (a TLS front end).
    callback_url: str = ""
    scopes: list[str] = ["openid", "profile", "email"]
    # The claim users are keyed on: stable and unique (`sub`). preferred_username is neither
    # (users choose it); a value that is no portable user name becomes x-<hash of it>.
    username_claim: str = "sub"
    groups_claim: str = "groups"
    allowed_groups: list[str] = []  # values of the groups claim whose members may sign in
    admin_groups: list[str] = []  # ... who are hub admins (and may sign in)
    allow_all: bool = False  # True: anyone the provider signs in may use the hub

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: object) -> object:
        return _refuse_inline_secret(data, "client_secret", "auth.oidc", "client_secret")

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, v: str) -> str:
        m = re.match(r"^(https?)://([^/:?#]+)(:\d+)?(/[^?#]*)?$", v)
        if not m:
            raise ValueError(Message("{url} is not an http(s) URL such as "
                                     "'https://sso.example.org'", url=repr(v)))  # fmt: skip
        if m.group(1) == "http" and m.group(2) not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(Message("must be https:// (plain http only for a provider on "
                                     "localhost)"))  # fmt: skip
        return v.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, scopes: list[str]) -> list[str]:
        if "openid" not in scopes:
            raise ValueError(Message("must include 'openid'"))
        return scopes

    @model_validator(mode="after")
    def _consistent(self) -> OidcAuth:
        _one_secret_source(
            "auth.oidc", "client_secret", self.client_secret_file, self.client_secret_env
        )
        if not (self.allowed_groups or self.admin_groups or self.allow_all):
            raise ValueError(_at("auth.oidc.allowed_groups", Message(
                "empty, so nobody could sign in; list the groups whose members may, or set "
                "allow_all = true to let in everyone the provider signs in")))  # fmt: skip
        return self


class AccountRule(Section):
    """An institution -> quota account rule: a value equal to `match` (any case), or one
    matching the regular expression `pattern` (whole value, any case)."""

    match: str | None = None
    pattern: str | None = None
    account: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(Message("not a regular expression ({error})",
                                         error=str(e))) from None  # fmt: skip
        return v

    @model_validator(mode="after")
    def _one_test(self) -> AccountRule:
        if (self.match is None) == (self.pattern is None):
            raise ValueError(Message("set exactly one of match and pattern"))
        return self

    def matches(self, value: str) -> bool:
        if self.match is not None:
            return value.casefold() == self.match.casefold()
        return re.fullmatch(self.pattern, value, re.IGNORECASE) is not None


class Institution(Section):
    """Which quota account a signed-in user is charged to, decided again at every login."""

    # "groups": the user's directory groups (LDAP, group DNs) or the groups claim (OIDC);
    # anything else: an attribute of the user's LDAP entry or a claim of the OIDC user.
    source: str = Field("groups", min_length=1)
    rules: list[AccountRule] = []  # the first rule matching any value wins
    fallback: str | None = None  # when no rule matches; None: quota.default_account

    def account_for(self, values: list[str], default: str) -> str:
        """The account of a user whose `source` has `values`."""
        for rule in self.rules:
            if any(rule.matches(v) for v in values):
                return rule.account
        return self.fallback or default


class Auth(Section):
    kind: Literal["native", "ldap", "oidc"] = "native"
    native: NativeAuth = NativeAuth()
    ldap: LdapAuth | None = None
    oidc: OidcAuth | None = None
    institution: Institution | None = None

    @model_validator(mode="after")
    def _kind_configured(self) -> Auth:
        if self.kind == "ldap" and self.ldap is None:
            raise ValueError(_at("auth.ldap", Message("required when auth.kind = 'ldap'")))
        if self.kind == "oidc" and self.oidc is None:
            raise ValueError(_at("auth.oidc", Message("required when auth.kind = 'oidc'")))
        if self.kind == "native" and self.institution is not None:
            raise ValueError(_at("auth.institution", Message(
                "only used with auth.kind = 'ldap' or 'oidc' (with native sign-in an admin puts "
                "users in a hub group named like their account)")))  # fmt: skip
        uses_groups = self.institution is not None and self.institution.source == "groups"
        if (
            self.kind == "ldap"
            and (self.ldap.uses_groups or uses_groups)
            and not self.ldap.group_search_base
        ):
            raise ValueError(_at("auth.ldap.group_search_base", Message(
                "needed to find users' groups (for allowed_groups, admin_groups or "
                "auth.institution.source = 'groups')")))  # fmt: skip
        return self


class Gpu(Section):
    """A GPU of the node, listed by hand (or faked in tests) instead of found with NVML."""

    index: int = Field(ge=0)
    uuid: str = ""
    device: PathStr | None = None  # /dev/nvidiaN; None: no device file to guard


class UnixAccounts(Section):
    """Hub user alice runs as Unix account `{user_prefix}alice` (when the hub is root)."""

    user_prefix: str = "sz-"  # "": the Unix name is the hub name (central accounts)
    home_root: PathStr = Path("/home")
    # A deleted hub user's Unix account and home: "archive" (home kept root-only under
    # hub.state_dir/archived-homes, account deleted), "remove", or "keep" (central accounts).
    on_delete: Literal["archive", "remove", "keep"] = "archive"

    @field_validator("user_prefix")
    @classmethod
    def _portable(cls, v: str) -> str:
        if not re.fullmatch(r"([a-z_][a-z0-9_-]{0,15})?", v):
            raise ValueError(Message(
                "must be empty, or a lowercase letter or _ followed by up to 15 of a-z 0-9 _ -"))
        return v


class Containment(Section):
    """Each local session in a cgroup made from its profile (hub as root; hub/containment.py)."""

    # auto: a systemd scope per session where systemd is PID 1, else the machine's cgroup
    # layout (v2 unified, else v1); off: no cgroups at all.
    cgroups: Literal["auto", "systemd", "v1", "v2", "off"] = "auto"
    # Folder under each cgroup hierarchy's root; the hub's own id is added below it.
    cgroup_parent: str = "shangzhuang"
    pids_limit: int = Field(4096, ge=64)  # processes and threads per session

    @field_validator("cgroup_parent")
    @classmethod
    def _plain_folder(cls, v: str) -> str:
        parts = v.split("/")
        if not all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", p) for p in parts):
            raise ValueError(Message(
                "must be a relative folder such as 'shangzhuang' or 'sites/physics' "
                "(letters, digits, _ . -; no '..')"))  # fmt: skip
        return v


class LocalBackend(UnixAccounts):
    # Empty: detect with NVML. Non-empty: exactly these GPUs (how tests fake them).
    gpus: list[Gpu] = []
    containment: Containment = Containment()

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, gpus: list[Gpu]) -> list[Gpu]:
        seen = [g.index for g in gpus]
        if len(seen) != len(set(seen)):
            raise ValueError(Message("two GPUs share an index"))
        return gpus


WALLTIME = r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$"  # Slurm's [D-]HH:MM[:SS]


class SlurmBackend(UnixAccounts):
    """Lab sessions as Slurm jobs; the accounts must exist on the compute nodes too."""

    conf: PathStr | None = None  # SLURM_CONF for the hub and sessions; None: Slurm's default
    partition: str = ""  # default partition; "" = the cluster's default
    walltime: str = Field("08:00:00", pattern=WALLTIME)  # of a Lab session
    # The address the hub reaches a session on: Slurm's NodeAddr of the job's node.
    bind_ip: str = "0.0.0.0"  # what a session listens on, on its node
    # Users at zero, rewritten by the quota service every meter tick, for Slurm's
    # job_submit.lua (hub_config/examples/) to hold their jobs at submit; None: not written.
    at_zero_file: PathStr | None = None
    # The nodes run hub_config/examples/dashboard-*.sh (Prolog, Epilog, TaskProlog): Lab
    # sessions' dashboards are kept to their owner. Off: the home page says they are not.
    dashboard_prolog: bool = False


class Backend(Section):
    kind: Literal["local", "slurm"] = "local"
    local: LocalBackend = LocalBackend()
    slurm: SlurmBackend = SlurmBackend()

    @property
    def accounts(self) -> UnixAccounts:
        """The Unix-account settings of the backend in use."""
        return self.slurm if self.kind == "slurm" else self.local


class Cluster(Section):
    """Dask for notebooks: what `shangzhuang.cluster.cluster()` and plain
    `dask_jobqueue.SLURMCluster()` use on this site."""

    worker_cores: int = Field(1, ge=1)
    worker_memory: Bytes = 2 * 1024**3
    worker_walltime: str = Field("01:00:00", pattern=WALLTIME)
    max_workers: int = Field(16, ge=1)
    interface: str = ""  # network interface workers listen on; "" = Dask's choice
    log_dir: str = "~/.shangzhuang/dask-logs"  # in the user's home, on shared storage
    local_dir: str = "/tmp"  # node-local scratch for spilling

    @field_validator("log_dir", "local_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not (v.startswith("~/") or v.startswith("/")):
            raise ValueError(Message("must be an absolute path, or ~/... for a folder in each "
                                     "user's home"))  # fmt: skip
        return v


class Tutorials(Section):
    """Tutorial notebooks copied into a user's home once, when the workbench creates that
    home (a new Unix account, or a new home folder when not run as root)."""

    source: PathStr | None = None  # the folder they come from; None: the workbench's notebooks/
    folder: str = "tutorials"  # where in the new home they go; "" = the home itself
    copy_to_new_homes: list[str] = []  # file names in `source`, e.g. "01-welcome.ipynb"

    @field_validator("copy_to_new_homes")
    @classmethod
    def _file_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
                raise ValueError(Message("{name} is not a file name (the files are in "
                                         "tutorials.source)", name=repr(name)))  # fmt: skip
        return names

    @field_validator("folder")
    @classmethod
    def _inside_home(cls, folder: str) -> str:
        if folder.startswith("/") or ".." in Path(folder).parts or "\0" in folder:
            raise ValueError(Message("{folder} must be a folder inside the home, such as "
                                     "tutorials", folder=repr(folder)))  # fmt: skip
        return folder

    @property
    def files(self) -> list[Path]:
        """The files to copy, with their full paths."""
        return [(self.source or TUTORIALS) / name for name in self.copy_to_new_homes]


class Profile(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    display_name: str = ""
    cores: float = Field(gt=0)
    memory: Bytes
    gpus: int = Field(0, ge=0)
    description: str = ""
    partition: str = ""  # slurm backend: "" = backend.slurm.partition
    walltime: str = Field("", pattern=r"^$|" + WALLTIME)  # slurm: "" = backend.slurm.walltime
    # Idle GPU reclaim (quota.reclaim): this profile's idle period instead of the site's;
    # 0 = its sessions are never reclaimed.
    reclaim_idle_seconds: float | None = Field(None, ge=0)

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
    # Hub users who see the members' usage on the usage page and set their personal caps.
    managers: list[str] = []

    @field_validator("managers")
    @classmethod
    def _manager_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip() or name != name.strip():
                raise ValueError(Message("{name} is not a hub user name", name=repr(name)))
        if len(set(v)) != len(v):
            raise ValueError(Message("a manager is listed twice"))
        return v


class QuotaUser(Amounts):
    """A user's account, if not the default, and optional personal caps."""

    account: str | None = None


class QuotaAlerts(Section):
    """Messages when a pool or a personal cap crosses a share used: once per threshold per
    period, to the account's managers (a pool) or the user (a cap), by e-mail and webhook."""

    thresholds: list[float] = [0.5, 0.8, 1.0]  # shares of a limit used
    webhook_url: str = ""  # "": no webhook. A JSON POST per alert (WeCom, DingTalk, Feishu...)
    smtp_host: str = ""  # "": no e-mail
    smtp_port: int = Field(25, ge=1, le=65535)
    mail_from: str = ""
    # Where a hub user's mail goes: their name at this domain ("" with smtp_host: refused).
    mail_domain: str = ""

    @field_validator("thresholds")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in v) or len(set(v)) != len(v):
            raise ValueError(Message("each threshold is a share of a limit, above 0 and at "
                                     "most 1, once"))  # fmt: skip
        return sorted(v)

    @model_validator(mode="after")
    def _mail_needs_addresses(self) -> QuotaAlerts:
        if self.smtp_host and not (self.mail_from and self.mail_domain):
            raise ValueError(Message("{key} needs mail_from and mail_domain too",
                                     key="quota.alerts.smtp_host"))  # fmt: skip
        return self


class QuotaReclaim(Section):
    """Idle GPU reclaim (quota/reclaim.py): a GPU session whose GPUs all stay under
    `idle_threshold_percent` for `idle_seconds` is warned (Lab, home page) and offered to
    continue on `cpu_profile`; `grace_seconds` later it is stopped unless they got busy."""

    idle_seconds: float = Field(0, ge=0)  # 0 = off (the default: sites turn it on)
    idle_threshold_percent: float = Field(10, ge=0, le=100)
    grace_seconds: float = Field(1800, ge=0)
    cpu_profile: str = ""  # "continue on CPU" restarts on this; "" = the first without GPUs
    exempt: list[str] = []  # hub users whose sessions are never reclaimed

    @field_validator("exempt")
    @classmethod
    def _user_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip() or name != name.strip():
                raise ValueError(Message("{name} is not a hub user name", name=repr(name)))
        return v


class Quota(Section):
    enabled: bool = True
    period: Literal["monthly", "weekly", "none"] = "monthly"
    database_url: str = ""  # empty: SQLite ledger/quota.sqlite beside hub.state_dir (_file/_env)
    database_url_file: PathStr | None = None
    database_url_env: str | None = None
    port: int = Field(8082, ge=1, le=65535)  # the quota service, on 127.0.0.1
    sample_seconds: float = Field(15, gt=0)
    min_minutes_to_spawn: float = Field(10, ge=0)
    warn_fraction: float = Field(0.10, ge=0, le=1)
    grace_seconds: float = Field(300, ge=0)
    default_account: str = "default"
    accounts: dict[str, QuotaAccount] = {"default": QuotaAccount()}
    users: dict[str, QuotaUser] = {}
    alerts: QuotaAlerts = QuotaAlerts()
    reclaim: QuotaReclaim = QuotaReclaim()

    @model_validator(mode="before")
    @classmethod
    def _no_inline_db_password(cls, data: object) -> object:
        return _refuse_inline_db_password(data, "quota")

    @property
    def url(self) -> str:
        """The quota database's URL from wherever it is kept; "" for the default SQLite."""
        if self.database_url_file or self.database_url_env:
            return read_secret("quota.database_url", self.database_url_file, self.database_url_env)
        return self.database_url

    @model_validator(mode="after")
    def _accounts_exist(self) -> Quota:
        if self.default_account not in self.accounts:
            raise ValueError(_at("quota.default_account", Message(
                "{account} is not in quota.accounts", account=repr(self.default_account))))
        for name, user in self.users.items():
            if user.account is not None and user.account not in self.accounts:
                raise ValueError(_at(f"quota.users.{name}.account", Message(
                    "{account} is not in quota.accounts", account=repr(user.account))))
        return self


APP_NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"


class Apps(Section):
    """Voila apps: a notebook published as an app runs in its own named server of its owner
    (standalone Voila on a snapshot), viewers granted through JupyterHub's sharing."""

    enabled: bool = True
    port: int = Field(8083, ge=1, le=65535)  # the apps service, on 127.0.0.1
    # Snapshots and the app registry; None: a folder "apps" beside hub.state_dir. Relative
    # paths are resolved against the folder of the config file.
    folder: PathStr | None = None
    server_prefix: str = Field("app-", pattern=r"^[a-z][a-z0-9-]{0,15}$")  # named servers
    profile: str = ""  # the profile apps run on unless the owner picks one; "" = the first
    # May owners publish apps that anyone reaching the site can open, without a hub account?
    public_links: bool = False
    idle_stop_seconds: int = Field(900, ge=0)  # an app unused this long is stopped; 0 = never
    kernel_idle_seconds: int = Field(600, ge=0)  # a viewer's idle kernel is shut down; 0 = never
    preheat_kernels: int = Field(0, ge=0, le=16)  # kernels kept executed ahead (Voila's pool)
    # A revoked viewer's open page loses access within this (HubOAuth's cache age).
    auth_cache_seconds: int = Field(300, ge=1)
    max_snapshot_bytes: Bytes = 100 * 1024**2
    max_apps_per_user: int = Field(20, ge=1)
    # Every page load starts a kernel. At most this many viewers' kernels run in one app at
    # once (the next viewer is asked to come back later: 503) ...
    max_kernels_per_app: int = Field(20, ge=1, le=1000)
    # ... and a public app takes at most this many page loads a minute from one address (429).
    public_visits_per_minute: int = Field(30, ge=1)


class Settings(Section):
    site: Site = Site()
    hub: Hub = Hub()
    auth: Auth = Auth()
    backend: Backend = Backend()
    quota: Quota = Quota()
    cluster: Cluster = Cluster()
    apps: Apps = Apps()
    tutorials: Tutorials = Tutorials()
    profiles: list[Profile] = Field(min_length=1)

    # Filled in by load_settings, not by the file.
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [p.name for p in self.profiles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError("profiles: " + str(Message("duplicate profile name {name}",
                                                       name=repr(dupes[0]))))  # fmt: skip
        return self

    @model_validator(mode="after")
    def _strangers_keep_their_names(self) -> Settings:
        if self.auth.kind == "native" and not self.backend.accounts.user_prefix:
            raise ValueError(_at(f"backend.{self.backend.kind}.user_prefix", Message(
                "must not be empty with auth.kind = 'native': anyone signing up would choose "
                "their Unix account's name, also one that exists already (such as 'nobody'); "
                "keep a prefix such as 'sz-'")))  # fmt: skip
        return self

    @model_validator(mode="after")
    def _admins_by_kind(self) -> Settings:
        # Only native sign-in has a default admin; a directory or provider names its own.
        if self.hub.admins is None:
            admins = ["admin"] if self.auth.kind == "native" else []
            return self.model_copy(update={"hub": self.hub.model_copy(update={"admins": admins})})
        return self

    @model_validator(mode="after")
    def _institution_accounts(self) -> Settings:
        institution = self.auth.institution
        if institution is None or not self.quota.enabled:
            return self
        named = [(f"rules[{i}].account", r.account) for i, r in enumerate(institution.rules)]
        if institution.fallback is not None:
            named.append(("fallback", institution.fallback))
        for key, account in named:
            if account not in self.quota.accounts:
                raise ValueError(_at(f"auth.institution.{key}", Message(
                    "{account} is not in quota.accounts", account=repr(account))))
        return self

    @model_validator(mode="after")
    def _apps_profile(self) -> Settings:
        if self.apps.profile and self.apps.profile not in [p.name for p in self.profiles]:
            raise ValueError(_at("apps.profile", Message(
                "{profile} is not one of the profiles", profile=repr(self.apps.profile))))
        return self

    @model_validator(mode="after")
    def _reclaim_cpu_profile(self) -> Settings:
        reclaim = self.quota.reclaim
        gpu_free = [p.name for p in self.profiles if p.gpus == 0]
        if reclaim.cpu_profile and reclaim.cpu_profile not in gpu_free:
            profile = repr(reclaim.cpu_profile)
            if gpu_free:
                said = Message("{profile} is not one of the profiles without GPUs ({profiles})",
                               profile=profile, profiles=gpu_free)  # fmt: skip
            else:
                said = Message("{profile} is not one of the profiles without GPUs (there is "
                               "none)", profile=profile)  # fmt: skip
            raise ValueError(_at("quota.reclaim.cpu_profile", said))
        if reclaim.idle_seconds and not gpu_free:
            raise ValueError(_at("quota.reclaim.idle_seconds", Message(
                "idle GPU sessions continue on a profile without GPUs, and no profile has gpus "
                "= 0: add one, or set idle_seconds = 0")))  # fmt: skip
        return self

    @property
    def reclaim_cpu_profile(self) -> Profile | None:
        """The profile "continue on CPU" restarts a session on (None: no profile without GPUs)."""
        name = self.quota.reclaim.cpu_profile
        return next((p for p in self.profiles if p.gpus == 0 and (not name or p.name == name)),
                    None)  # fmt: skip

    @property
    def apps_folder(self) -> Path:
        """Where published apps live: apps.folder, else "apps" beside the state folder."""
        return self.apps.folder or self.hub.state_dir.parent / "apps"

    def profile(self, name: str | None) -> Profile:
        return find_profile(self.profiles, name)


def find_profile(profiles: list[Profile], name: str | None) -> Profile:
    """The profile named NAME; none named ("" or None) is the first, which a spawn with no
    profile starts. KeyError for a name the site does not offer, saying which it does."""
    if not name:
        return profiles[0]
    for p in profiles:
        if p.name == name:
            return p
    offered = ", ".join(p.name for p in profiles)
    raise KeyError(f"no profile {name!r} on this site; it offers {offered}")


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
    # Messages: `shangzhuang check` shows them in the operator's language (cli.py).
    if kind == "extra_forbidden":
        return Message("unknown key")
    if kind == "missing":
        return Message("required key is missing")
    ctx = {k: _figure(v) for k, v in err.get("ctx", {}).items()}
    if kind == "literal_error":
        return Message("input should be {expected}, got {given}",
                       expected=_choices(ctx["expected"]), given=repr(err["input"]))
    # pydantic names its own classes here ("instance of Site", "<class 'pathlib.Path'>").
    if kind == "model_type":
        return Message("Input should be a table")
    if kind == "path_type":
        return Message("Input should be a path (a string)")
    if kind == "too_short":
        return Plural("List should have at least {n} item, not {actual}",
                      "List should have at least {n} items, not {actual}",
                      err["ctx"]["min_length"], actual=ctx["actual_length"])  # fmt: skip
    if kind in _PYDANTIC_REASONS:  # pydantic's own English, in the operator's language
        return _PYDANTIC_REASONS[kind](ctx)
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _choices(expected: str) -> str:
    """pydantic's "'a', 'b' or 'c'" in the reader's words ("'a'、'b' 或 'c'")."""
    *some, last = re.split(r", | or ", expected)
    if not some or not all(p[:1] == p[-1:] == "'" and len(p) > 1 for p in [*some, last]):
        return expected
    # TRANSLATORS: the last of a list of choices, e.g. "'native', 'ldap' or 'oidc'"
    return Message("{some} or {last}", some=some, last=last)


def _figure(value) -> str:
    """A bound as pydantic writes it: 0, not 0.0 (and no thousands separator: 65535)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# pydantic-core 2's messages for the checks a site config meets most, word for word.
_PYDANTIC_REASONS = {
    "int_parsing": lambda ctx: Message("Input should be a valid integer"),
    "int_type": lambda ctx: Message("Input should be a valid integer"),
    "int_from_float": lambda ctx: Message("Input should be a valid integer"),
    "float_parsing": lambda ctx: Message("Input should be a valid number"),
    "float_type": lambda ctx: Message("Input should be a valid number"),
    "bool_parsing": lambda ctx: Message("Input should be a valid boolean"),
    "bool_type": lambda ctx: Message("Input should be a valid boolean"),
    "string_type": lambda ctx: Message("Input should be a valid string"),
    "list_type": lambda ctx: Message("Input should be a valid list"),
    "dict_type": lambda ctx: Message("Input should be a table"),
    "greater_than": lambda ctx: Message("Input should be greater than {gt}", **ctx),
    "greater_than_equal": lambda ctx: Message("Input should be greater than or equal to {ge}",
                                              **ctx),  # fmt: skip
    "less_than": lambda ctx: Message("Input should be less than {lt}", **ctx),
    "less_than_equal": lambda ctx: Message("Input should be less than or equal to {le}", **ctx),
    "string_pattern_mismatch": lambda ctx: Message("String should match pattern {pattern}",
                                                   pattern="'" + ctx["pattern"] + "'"),
}


def parse_settings(data: dict, source: Path | str = "<config>") -> Settings:
    """Validate a parsed TOML document; relative paths resolve against `source`'s folder."""
    # `source` is filled in by load_settings: in the file it is a key like any unknown one.
    problems = ["source: " + str(Message("unknown key"))] if "source" in data else []
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
    base = Path(source).resolve().parent if source != "<config>" else Path.cwd()
    settings = _resolve_sign_in_paths(settings, base)
    problems += _node_problems(settings)
    if settings.site.logo is not None and not _is_file(settings.site.logo):
        missing = Message("no such file {file}", file=repr(str(settings.site.logo)))
        problems.append(f"site.logo: {missing}")
    tutorials = settings.tutorials
    if tutorials.source is not None:
        tutorials = tutorials.model_copy(update={"source": (base / tutorials.source).resolve()})
    for i, path in enumerate(tutorials.files):
        if not _is_file(path):
            missing = Message("no file {name} in {folder}", name=repr(path.name),
                              folder=str(path.parent))  # fmt: skip
            problems.append(f"tutorials.copy_to_new_homes[{i}]: {missing}")
    if problems:
        raise SettingsError(source, problems)
    hub = settings.hub.model_copy(update={"state_dir": (base / settings.hub.state_dir).resolve()})
    apps = settings.apps
    if apps.folder is not None:
        apps = apps.model_copy(update={"folder": (base / apps.folder).resolve()})
    return settings.model_copy(
        update={"hub": hub, "apps": apps, "tutorials": tutorials, "source": Path(source)}
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return False


def _resolve_sign_in_paths(settings: Settings, base: Path) -> Settings:
    """The logo, CA and secret files, relative to the config file's folder."""

    def resolved(section: Section, *keys: str) -> Section:
        update = {k: base / getattr(section, k) for k in keys if getattr(section, k) is not None}
        return section.model_copy(update=update)

    auth = settings.auth
    if auth.ldap is not None:
        auth = auth.model_copy(
            update={"ldap": resolved(auth.ldap, "ca_file", "search_password_file")}
        )
    if auth.oidc is not None:
        auth = auth.model_copy(update={"oidc": resolved(auth.oidc, "client_secret_file")})
    return settings.model_copy(
        update={
            "site": resolved(settings.site, "logo"),
            "auth": auth,
            "hub": resolved(settings.hub, "database_url_file"),
            "quota": resolved(settings.quota, "database_url_file"),
        }
    )


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
        f"profiles[{i}].gpus: " + str(Message(
            "asks for {n} GPUs but this node has {listed} (listed in backend.local.gpus)",
            n=p.gpus, listed=len(listed)))
        for i, p in enumerate(settings.profiles)
        if listed and p.gpus > len(listed)
    ]  # fmt: skip
    hub, ports = settings.hub, {}
    named = [
        ("hub.port", hub.port), ("hub.api_port", hub.api_port),
        ("hub.proxy_api_port", hub.proxy_api_port), ("quota.port", settings.quota.port),
        ("apps.port", settings.apps.port),
    ]  # fmt: skip
    for key, port in named:
        if port in ports:
            used = Message("port {port} is already used by {key}", port=str(port),
                           key=ports[port])  # fmt: skip
            problems.append(f"{key}: {used}")
        ports.setdefault(port, key)
    return problems


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the site config: `path`, else $SHANGZHUANG_CONFIG, else the embedded default."""
    path = Path(path or os.environ.get("SHANGZHUANG_CONFIG") or DEFAULT_CONFIG)
    try:
        text = path.read_text(encoding="utf-8")  # TOML is UTF-8 whatever the locale
    except OSError as e:
        problem = Message("cannot read the file: {error}", error=e.strerror)
        raise SettingsError(path, [str(problem)]) from None
    except UnicodeDecodeError as e:
        problem = Message("not valid TOML: not UTF-8 text (byte {byte})", byte=str(e.start))
        raise SettingsError(path, [str(problem)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(path, [str(Message("not valid TOML: {error}", error=str(e)))]) from None
    return parse_settings(data, path)
