"""Institutional sign-in: LDAP (jupyterhub-ldapauthenticator) and OpenID Connect
(oauthenticator's GenericOAuthenticator), with the institution deciding the quota account.

At every login the user's institution (directory groups, an LDAP attribute, or an OIDC
claim) is mapped by the site's rules to a quota account. The user's JupyterHub groups are
managed by the sign-in and hold exactly that account, which the spawner and the quota meter
read, and the quota service is told at once, so a user who moves institution is charged to
the new account from that login on.

A refused login says why: the password was wrong, the user is not allowed on this site, or
the directory or provider can't be reached. No password or client secret is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import ssl
import threading
import urllib.error
import urllib.request
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ldap3
from jupyterhub.handlers.login import LoginHandler
from ldap3.core.exceptions import (
    LDAPBindError,
    LDAPCommunicationError,
    LDAPException,
    LDAPMaximumRetriesError,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)
from ldap3.core.tls import Tls
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Dict, Float, List, Unicode

from shangzhuang.hub.accounts import UserAccounts  # a deleted user's account, home, quota
from shangzhuang.hub.auth import Refusals
from shangzhuang.settings import AccountRule, Institution, SettingsError, read_secret

if TYPE_CHECKING:
    from shangzhuang.settings import Settings


# --- why a login was refused ---------------------------------------------------------
@dataclass
class LoginAttempt:
    """What the authenticator found out about one login, for the page the user sees."""

    username: str = ""
    refusal: str = "password"  # "password" | "not_allowed" | "bad_name" | "unavailable"


# Set by the login handlers for the duration of one login. JupyterHub runs parts of a login
# in tasks of their own (copies of this context), so they change the object, never the var.
_attempt: ContextVar[LoginAttempt | None] = ContextVar("shangzhuang_login_attempt", default=None)


def _note(refusal: str, username: str = "") -> None:
    attempt = _attempt.get()
    if attempt is not None:
        attempt.refusal = refusal
        attempt.username = username or attempt.username


def refusal_message(attempt: LoginAttempt, site: str, service: str) -> str:
    """The sentence a refused user reads."""
    if attempt.refusal == "not_allowed":
        return (
            f"{attempt.username or 'This account'} is not allowed on {site}: your {service} "
            "account is not in a group this site admits. Ask your institution's "
            "administrator for access."
        )
    if attempt.refusal == "bad_name":
        return (
            f"{attempt.username!r} can't be a user name on {site}: names are 1-16 lower-case "
            "letters, digits, '-' and '_', starting with a letter. Ask the site's operators."
        )
    if attempt.refusal == "unavailable":
        return (
            f"{site} can't reach {service} right now, so nobody can sign in. Try again in a "
            "few minutes; if it lasts, tell the site's operators."
        )
    return "Wrong username or password."


# --- what both kinds share -----------------------------------------------------------
def _casefold_dn(dn: str) -> str:
    """LDAP DNs compare without case and without spaces around commas."""
    return ",".join(part.strip() for part in dn.split(",")).casefold()


class SiteSignIn(UserAccounts):
    """The base of our LDAP and OIDC authenticators (before the upstream class in their
    bases): the site's name for messages, and institution -> quota account at login."""

    site_name = Unicode("this site", help="The site's name, for messages.").tag(config=True)

    service_name = Unicode(
        "the sign-in service", help="What users sign in with, for messages ('LDAP')."
    ).tag(config=True)

    account_source = Unicode(
        "groups",
        help="""Where a user's institution is read: "groups" (directory groups, or the
        groups claim) or the name of an LDAP attribute or OIDC claim.""",
    ).tag(config=True)

    account_rules = List(
        Dict(),
        help="""Institution -> quota account rules, in order: dicts with "account" and
        either "match" (a value, any case) or "pattern" (a regular expression).""",
    ).tag(config=True)

    fallback_account = Unicode("default", help="The account of a user no rule matches.").tag(
        config=True
    )

    quota_timeout = Float(
        5, help="Seconds a login waits for the quota service before going ahead without it."
    ).tag(config=True)

    @property
    def institution(self) -> Institution:
        rules = [AccountRule.model_validate(r) for r in self.account_rules]
        return Institution(source=self.account_source, rules=rules)

    def institution_values(self, authentication: dict) -> list[str]:
        """The values of `account_source` for this login (each kind reads its own)."""
        raise NotImplementedError

    def validate_username(self, username: str) -> bool:
        if super().validate_username(username):
            return True
        _note("bad_name", username)
        return False

    async def run_post_auth_hook(self, handler, authentication: dict) -> dict:
        """Charge the user to their institution's account from this login on."""
        name = self.normalize_username(authentication["name"])
        values = self.institution_values(authentication)
        account = self.institution.account_for(values, self.fallback_account)
        authentication["groups"] = [account]  # manage_groups: the hub's groups follow
        self.log.info("%s signs in, charged to account %s", name, account)
        if self.quota is not None:
            await self._tell_quota(name, account)
        return await super().run_post_auth_hook(handler, authentication)

    async def _tell_quota(self, name: str, account: str) -> None:
        # A per-user account set in [quota.users] still wins, as everywhere else.
        try:
            await asyncio.wait_for(self.quota.set_account(name, [account]), self.quota_timeout)
        except Exception as e:  # the login goes ahead; spawns and the meter set it again
            self.log.warning(
                "quota service unavailable at %s's login, account %s not recorded yet: %s",
                name, account, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
            )  # fmt: skip


class RefusalLoginHandler(Refusals, LoginHandler):
    """JupyterHub's login form, saying why a login was refused (an expired form too, logged
    at INFO: see Refusals)."""

    async def post(self):
        data = {
            arg: self.get_argument(arg, strip=arg == "username")
            for arg in self.request.body_arguments
            if arg != "_xsrf"
        }
        attempt = LoginAttempt(username=data.get("username", "")[:64])
        token = _attempt.set(attempt)
        try:
            user = await self.login_user(data)
        finally:
            _attempt.reset(token)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        auth = self.authenticator
        self.set_status(503 if attempt.refusal == "unavailable" else 403)
        html = await self._render(
            login_error=refusal_message(attempt, auth.site_name, auth.service_name),
            username=attempt.username,
        )
        self.finish(html)


# --- LDAP ----------------------------------------------------------------------------
UNREACHABLE = (
    LDAPCommunicationError, LDAPResponseTimeoutError, LDAPMaximumRetriesError, LDAPStartTLSError,
)  # fmt: skip


class WorkbenchLDAPAuthenticator(SiteSignIn, LDAPAuthenticator):
    """LDAPAuthenticator with users' groups, admin groups, timeouts, and clear refusals.

    Upstream's directory calls block; here each login runs them on a worker thread, with
    connect and answer timeouts, so a slow or dead directory never stalls the hub.
    """

    group_search_base = Unicode(
        "",
        help="""Where users' groups are searched (subtree), with `group_search_filter`.
        Empty: only the groups in `allowed_groups` are checked, as upstream does.""",
    ).tag(config=True)

    admin_groups = List(
        Unicode(),
        help="Group DNs whose members are hub admins (and may sign in).",
    ).tag(config=True)

    timeout_seconds = Float(
        5, help="Connect and answer timeout of each request to the directory."
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._local = threading.local()

    def get_handlers(self, app):
        return [("/login", RefusalLoginHandler)]

    @property
    def server_url(self) -> str:
        scheme = "ldaps" if self.tls_strategy.name == "on_connect" else "ldap"
        return f"{scheme}://{self.server_address}:{self.server_port}"

    # upstream's get_connection, with timeouts (ldapauthenticator 2.0.2 sets none)
    def get_connection(self, userdn, password):
        strategy = self.tls_strategy.name
        auto_bind = (
            ldap3.AUTO_BIND_TLS_BEFORE_BIND
            if strategy == "before_bind"
            else (ldap3.AUTO_BIND_NO_TLS)
        )
        server = ldap3.Server(
            self.server_address,
            port=self.server_port,
            use_ssl=strategy == "on_connect",
            tls=Tls(**self.tls_kwargs),
            connect_timeout=self.timeout_seconds,
        )
        try:
            return ldap3.Connection(
                server, user=userdn, password=password, auto_bind=auto_bind,
                receive_timeout=max(1, round(self.timeout_seconds)),  # ldap3 packs an int
            )  # fmt: skip
        except LDAPBindError:
            return None

    def get_user_attributes(self, conn, userdn):
        attributes = super().get_user_attributes(conn, userdn)
        groups: list[str] = []
        if self.group_search_base:
            conn.search(
                search_base=self.group_search_base,
                search_scope=ldap3.SUBTREE,
                search_filter=self.group_search_filter.format(
                    userdn=escape_filter_chars(userdn),
                    uid=escape_filter_chars(self._local.login),
                ),
                attributes=[],
            )
            groups = [e.entry_dn for e in conn.entries]
        self._local.groups = groups
        return attributes

    def _authenticate_blocking(self, handler, data):
        self._local.login = data.get("username", "")
        self._local.groups = []
        result = asyncio.run(LDAPAuthenticator.authenticate(self, handler, data))
        if result:
            found = result["auth_state"]["ldap_groups"] + self._local.groups
            result["auth_state"]["ldap_groups"] = sorted(set(found))
        return result

    async def authenticate(self, handler, data):
        login = data.get("username", "")[:64]
        try:
            result = await asyncio.to_thread(self._authenticate_blocking, handler, data)
        except (*UNREACHABLE, OSError) as e:
            self.log.error(
                "LDAP server %s (auth.ldap.server) can't be reached, login of %s refused: %s: %s",
                self.server_url, login, type(e).__name__, str(e)[:300],
            )  # fmt: skip
            _note("unavailable")
            return None
        except LDAPException as e:  # the directory refused a request: the settings are off
            self.log.error("LDAP sign-in of %s failed (check [auth.ldap]): %r", login, e)
            _note("unavailable")
            return None
        if not result:
            _note("password")
            return None
        groups = {_casefold_dn(g) for g in result["auth_state"]["ldap_groups"]}
        name = self.normalize_username(result["name"])
        if self.admin_groups and name not in self.admin_users:
            # membership decides at every login: leaving the group revokes admin
            result["admin"] = bool(groups & {_casefold_dn(g) for g in self.admin_groups})
        return result

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        state = (auth_model or {}).get("auth_state") or {}
        groups = {_casefold_dn(g) for g in state.get("ldap_groups", [])}
        admitted = {_casefold_dn(g) for g in [*(self.allowed_groups or []), *self.admin_groups]}
        if groups & admitted or username in self.admin_users:
            return True
        _note("not_allowed", username)
        return False

    def institution_values(self, authentication: dict) -> list[str]:
        state = authentication.get("auth_state") or {}
        if self.account_source == "groups":
            return list(state.get("ldap_groups", []))
        values = (state.get("user_attributes") or {}).get(self.account_source, [])
        return [str(v) for v in (values if isinstance(values, list) else [values])]


# --- OpenID Connect --------------------------------------------------------------------
class RefusalCallbackHandler(OAuthCallbackHandler):
    """oauthenticator's callback, saying who was refused and why."""

    def _request_summary(self) -> str:
        # tornado logs refusals with the full URI: here it holds the authorization code
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, web.HTTPError):
            super().log_exception(typ, value, tb)
        else:  # tornado would add repr(request), URI and code included
            self.log.error("Uncaught exception %s", self._request_summary(), exc_info=value)

    async def get(self):
        self.check_arguments()
        attempt = LoginAttempt(refusal="not_allowed")
        token = _attempt.set(attempt)
        auth = self.authenticator
        try:
            user = await self.login_user()
        except (HTTPClientError, OSError) as e:
            if isinstance(e, HTTPClientError) and e.code != 599:
                raise
            auth.log.error("OIDC provider %s can't be reached: %s", auth.issuer, e)
            attempt.refusal = "unavailable"
            user = None
        finally:
            _attempt.reset(token)
        if user is None:
            # the login page again, the reason above its "Sign in with ..." button
            self.set_status(503 if attempt.refusal == "unavailable" else 403)
            html = await self.render_template(
                "login.html",
                login_error=refusal_message(attempt, auth.site_name, auth.service_name),
                authenticator_login_url=auth.login_url(self.hub.base_url),
                login_url=self.settings["login_url"],
                authenticator=auth,
                xsrf=self.xsrf_token.decode("ascii"),
                next="",
                username="",
                custom_html="",
            )
            self.finish(html)
            return
        self.redirect(self.get_next_url(user))


HUB_NAME = re.compile(r"[a-z][a-z0-9_-]{0,15}")


def hub_name(subject: str) -> str:
    """The hub (and Unix) user name of an OIDC user: their key claim (`sub` by default)
    when it is a portable name already, else "x-" and 14 characters of its SHA-256: the
    same at every login and distinct for distinct subjects (a hash, not a lower-cased or
    cut copy, which could merge two people)."""
    if HUB_NAME.fullmatch(subject):
        return subject
    digest = hashlib.sha256(subject.encode()).digest()
    return "x-" + base64.b32encode(digest).decode().lower()[:14]


class WorkbenchOIDCAuthenticator(SiteSignIn, GenericOAuthenticator):
    """GenericOAuthenticator for an OpenID Connect provider found by issuer discovery.

    Users are keyed on a stable, unique claim (`sub` by default): preferred_username is the
    user's to choose and change, so keying on it let one person take over another's
    sessions, files and quota. What they call themselves stays in auth_state (oauth_user).
    """

    issuer = Unicode("", help="The provider's issuer URL (for messages).").tag(config=True)

    callback_handler = RefusalCallbackHandler

    def user_info_to_username(self, user_info):
        return hub_name(str(super().user_info_to_username(user_info)))

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        _note("not_allowed", username)
        return False

    def institution_values(self, authentication: dict) -> list[str]:
        user = (authentication.get("auth_state") or {}).get(self.user_auth_state_key) or {}
        if self.account_source == "groups":
            return list(authentication.get("groups") or [])
        value = user.get(self.account_source)
        if value is None:
            return []
        return [str(v) for v in (value if isinstance(value, list) else [value])]


def discover(issuer: str, timeout: float = 10) -> dict[str, str]:
    """The provider's endpoints from {issuer}/.well-known/openid-configuration.

    oauthenticator 17 does no discovery of its own. Raises ValueError naming
    auth.oidc.issuer when the document can't be had or doesn't fit.
    """
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            doc = json.load(r)
    except urllib.error.HTTPError as e:
        raise ValueError(f"auth.oidc.issuer: {url} answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"auth.oidc.issuer: can't read {url} ({reason})") from None
    except ValueError:
        raise ValueError(f"auth.oidc.issuer: {url} is not a JSON document") from None
    if not isinstance(doc, dict) or str(doc.get("issuer", "")).rstrip("/") != issuer:
        said = doc.get("issuer") if isinstance(doc, dict) else None
        raise ValueError(f"auth.oidc.issuer: {url} names another issuer ({said!r})")
    endpoints = {}
    for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        if not doc.get(key):
            raise ValueError(f"auth.oidc.issuer: {url} has no {key}")
        endpoints[key] = doc[key]
    return endpoints


# --- the hub's config: the sign-in part (hub/config.py) ----------------------------------
def signin_facts(settings: Settings) -> dict:
    """What the sign-in's config needs from outside the settings: the secret (from its file
    or variable) and, for OIDC, the provider's endpoints (discovered over the network).
    Raises SettingsError naming the key when one can't be had."""
    auth = settings.auth
    try:
        if auth.kind == "ldap" and auth.ldap.search_user:
            ldap = auth.ldap
            secret = read_secret(
                "auth.ldap.search_password", ldap.search_password_file, ldap.search_password_env
            )
            return {"signin_secret": secret}
        if auth.kind == "oidc":
            oidc = auth.oidc
            return {
                "oidc_endpoints": discover(oidc.issuer),
                "signin_secret": read_secret(
                    "auth.oidc.client_secret", oidc.client_secret_file, oidc.client_secret_env
                ),
            }
    except ValueError as e:
        raise SettingsError(settings.source or "<config>", [str(e)]) from None
    return {}


def configure_signin(c, settings: Settings) -> None:
    """The sign-in part alone, onto a config object (for tools and tests)."""
    from shangzhuang.hub.config import Host, apply

    apply(c, signin_config(settings, Host(**signin_facts(settings))))


def signin_config(settings: Settings, host) -> dict:
    """How people sign in: native, LDAP or OIDC, from `[auth]` (host: hub.config.Host)."""
    from shangzhuang.hub.auth import native_config

    auth, site = settings.auth, settings.site
    authenticator = {
        "admin_users": set(settings.hub.admins),
        # Hub names become Unix account names (after the prefix): keep them portable.
        "username_pattern": r"^[a-z][a-z0-9_-]{0,15}$",
    }
    if auth.kind == "native":
        native = native_config(settings, host)
        return {**native, "Authenticator": {**authenticator, **native["Authenticator"]}}
    if auth.kind == "ldap":
        cls, traits = WorkbenchLDAPAuthenticator, _ldap_traits(settings, host)
    else:
        cls, traits = WorkbenchOIDCAuthenticator, _oidc_traits(settings, host)
    institution = auth.institution or Institution()
    traits.update(
        site_name=site.name,
        account_source=institution.source,
        account_rules=[r.model_dump(exclude_none=True) for r in institution.rules],
        fallback_account=institution.fallback or settings.quota.default_account,
    )
    authenticator["manage_groups"] = True  # a user's hub group is their account
    return {
        "JupyterHub": {"authenticator_class": cls},
        "Authenticator": authenticator,
        cls.__name__: traits,
    }


def _ldap_traits(settings: Settings, host) -> dict:
    ldap = settings.auth.ldap
    institution = settings.auth.institution
    a = {
        "service_name": "the directory (LDAP)",
        "server_address": ldap.server,
        "tls_strategy": {"ldaps": "on_connect", "starttls": "before_bind", "plain": "insecure"}[
            ldap.tls
        ],
        "server_port": ldap.port or (636 if ldap.tls == "ldaps" else 389),
        "timeout_seconds": ldap.timeout_seconds,
        "group_search_base": ldap.group_search_base,
        "group_search_filter": ldap.group_filter,
        "allowed_groups": list(ldap.allowed_groups),
        "admin_groups": list(ldap.admin_groups),
        "allow_all": ldap.allow_all,
    }
    if ldap.tls != "plain":
        # The server's certificate is always verified: against ca_file, else the system's CA
        # bundle (ldap3 loads it when given no file), and its name against auth.ldap.server.
        a["tls_kwargs"] = {"validate": ssl.CERT_REQUIRED}
        if ldap.ca_file is not None:
            a["tls_kwargs"]["ca_certs_file"] = str(ldap.ca_file)
    if ldap.bind_dn_template:
        a["bind_dn_template"] = list(ldap.bind_dn_template)
    else:
        a["lookup_dn"] = True
        a["user_search_base"] = ldap.user_search_base
        a["user_attribute"] = ldap.user_attribute
        a["lookup_dn_user_dn_attribute"] = ldap.user_attribute
        if ldap.search_user:
            a["lookup_dn_search_user"] = ldap.search_user
            a["lookup_dn_search_password"] = host.signin_secret
    if institution is not None and institution.source != "groups":
        a["auth_state_attributes"] = [institution.source]
    return a


def _oidc_traits(settings: Settings, host) -> dict:
    oidc, endpoints = settings.auth.oidc, host.oidc_endpoints
    return {
        "issuer": oidc.issuer,
        "login_service": oidc.display_name,
        "service_name": oidc.display_name,
        "authorize_url": endpoints["authorization_endpoint"],
        "token_url": endpoints["token_endpoint"],
        "userdata_url": endpoints["userinfo_endpoint"],
        "client_id": oidc.client_id,
        "client_secret": host.signin_secret,
        "basic_auth": oidc.client_auth == "client_secret_basic",
        "oauth_callback_url": oidc.callback_url or f"{settings.hub.url}/hub/oauth_callback",
        "scope": list(oidc.scopes),
        "username_claim": oidc.username_claim,
        "manage_groups": True,  # before the group settings: oauthenticator checks the order
        "auth_state_groups_key": f"oauth_user.{oidc.groups_claim}",
        "allowed_groups": set(oidc.allowed_groups),
        "admin_groups": set(oidc.admin_groups),
        "allow_all": oidc.allow_all,
    }
