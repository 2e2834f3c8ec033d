"""The quota API's inputs as pydantic models, and its OpenAPI document generated from the
handlers themselves (served at .../api/v1/openapi.json), so the two can't drift apart.

Each API method is decorated with `operation(...)`: its summary, its query and body models
and its answer. The decorator parses the request with those very models before the method
runs (a 400 names the field at fault), and `document()` walks the service's route table
(service.API) and describes each decorated method from the same declaration.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field
from tornado import web

from shangzhuang.services import Error, Input

# --- inputs ---------------------------------------------------------------------------


class UsersQuery(Input):
    offset: int = Field(0, ge=0, le=10**9)
    limit: int = Field(100, ge=1, le=1000)


class UsageQuery(Input):
    user: str | None = Field(None, description="whose usage (default: yours; an admin's: all)")
    since: str | None = Field(None, description="an ISO 8601 date or time, such as 2026-11-01")
    until: str | None = Field(None, description="an ISO 8601 date or time, such as 2026-11-01")
    format: Literal["json", "csv"] = "json"
    limit: int = Field(100000, ge=1, le=100000)
    order: Literal["oldest", "newest"] = "oldest"


class GrantRequest(Input):
    """A top-up of an account (`account`) or of a user's personal cap (`user`)."""

    user: str | None = None
    account: str | None = None
    resource: str = Field(description="a resource the site meters, such as gpu_hours")
    amount: float = Field(gt=0, description="hours")
    reason: str = Field(min_length=1)


class AccountRequest(Input):
    """The hub tells a user's groups (at login, at spawn): their account follows from them."""

    groups: list[str] = Field(default_factory=list, max_length=1000)


class RatesRequest(Input):
    """What one unit of work burns per hour (a Dask worker job, say): can the balance pay
    for it, and for how many, for `quota.min_minutes_to_spawn`?"""

    rates: dict[Literal["gpu_hours", "cpu_hours"], float] = Field(
        description="resource -> hours per hour of one unit"
    )


class OpenRequest(Input):
    """The hub started a session (or its Slurm job runs): meter it from `started`."""

    consumer: str = Field(description="the ledger's id, such as lab:ada/@1764500000000")
    user: str = Field(min_length=1)
    profile: str = Field(description="the profile it runs with (its rates)")
    started: float = Field(gt=0, description="seconds since the epoch")


class CloseRequest(Input):
    """The hub stopped a session (`end`, exact) or found it dead (`end` null: charged to
    the meter's last mark)."""

    consumer: str
    end: float | None = None


class RefusalRequest(Input):
    """A start the hub refused (quota/refusals.py): whose, why, the profile asked for and
    the resources it lacked."""

    user: str = Field(min_length=1, max_length=100)
    reason: Literal["quota", "quota-unavailable", "gpus-busy", "server-limit", "slurm"]
    profile: str = Field("", max_length=100)
    resources: list[Literal["gpu_hours", "cpu_hours"]] = []
    # When it was refused (the hub's clock), for a record delivered late; None: now.
    at: float | None = None


# --- answers (JSON schemas) -----------------------------------------------------------

_limit = {
    "type": ["object", "null"],
    "properties": {k: {"type": "number"} for k in ("allocated", "granted", "used", "remaining")},
}
BALANCE = {
    "type": "object",
    "required": ["user", "account", "state", "period", "resources"],
    "properties": {
        "user": {"type": "string"},
        "account": {"type": "string"},
        "state": {"type": "string", "enum": ["ok", "low", "exhausted"]},
        "period": {
            "type": "object",
            "properties": {
                "start": {"type": ["string", "null"]},
                "resets_at": {"type": ["string", "null"]},
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "remaining": {"type": ["number", "null"]},
                    "account": _limit,
                    "personal": _limit,
                },
            },
        },
        "exhausted_since": {"type": ["string", "null"]},
        "running": {"type": "array", "items": {"type": "object"}},
        # sessions stopped for idle GPUs in the last day (quota/reclaim.py)
        "reclaimed": {"type": "array", "items": {"type": "object"}},
    },
}
_balance_ref = {"$ref": "#/components/schemas/Balance"}
BALANCE_PAGE = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": _balance_ref},
        "total": {"type": "integer"},
        "offset": {"type": "integer"},
        "limit": {"type": "integer"},
    },
}
ANY_OBJECT: dict = {"type": "object"}

# --- operations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    summary: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    status: int = 200
    answer: dict = field(default_factory=lambda: ANY_OBJECT)
    csv: bool = False  # also answers text/csv


def operation(summary: str, **kw):
    """Declare an API method: it is called as method(self, *path, query=..., body=...)
    with its inputs parsed (after the caller is authenticated), and described by the
    OpenAPI document."""
    op = Operation(summary, **kw)

    def declare(method):
        @functools.wraps(method)
        def parsed(handler, *args, **kwargs):
            handler.caller()  # anonymous callers get 401 (or the login page), not a 400
            if op.query:
                kwargs["query"] = handler.query(op.query)
            if op.body:
                kwargs["body"] = handler.json_body(op.body)
            return method(handler, *args, **kwargs)

        parsed.operation = op
        return parsed

    return declare


METHODS = ("get", "post", "put", "patch", "delete")


def _parameters(model: type[BaseModel], where: str) -> list[dict]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        if "anyOf" in prop:  # `str | None`: the query has the string or nothing
            prop.update(next(s for s in prop.pop("anyOf") if s.get("type") != "null"))
        prop.pop("title", None)
        prop.pop("default", None)
        params.append({"name": name, "in": where, "required": name in required, "schema": prop})
    return params


def _operation(op: Operation, path_params: list[str]) -> dict:
    error = {"$ref": "#/components/schemas/Error"}
    answer = {"application/json": {"schema": op.answer}}
    if op.csv:
        answer["text/csv"] = {"schema": {"type": "string"}}
    out = {
        "summary": op.summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in path_params
        ]
        + (_parameters(op.query, "query") if op.query else []),
        "responses": {
            str(op.status): {"description": "OK", "content": answer},
            **{
                str(status): {
                    "description": why,
                    "content": {"application/json": {"schema": error}},
                }
                for status, why in (
                    (400, "Bad input"),
                    (401, "No or bad token"),
                    (403, "Not allowed"),
                    (404, "Not found"),
                )
            },  # fmt: skip
        },
    }
    if op.body:
        schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return out


def document(prefix: str, routes: list[tuple[str, type]]) -> dict:
    """The OpenAPI document of ROUTES ((path such as "/users/{name}", handler class))."""
    paths = {}
    for path, handler in routes:
        ops = {}
        for method in METHODS:
            fn = getattr(handler, method)
            if fn is getattr(web.RequestHandler, method):
                continue  # tornado's own 405: not offered
            if not hasattr(fn, "operation"):
                raise TypeError(f"{handler.__name__}.{method}: declare it with @operation")
            ops[method] = _operation(fn.operation, re.findall(r"{(\w+)}", path))
        paths[path] = ops
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Shangzhuang quota",
            "version": "1",
            "description": "Remaining GPU and CPU hours, usage and grants. "
            "Authenticate with a JupyterHub token: `Authorization: token ...`.",
        },
        "servers": [{"url": prefix.rstrip("/") + "/api/v1"}],
        "components": {
            "schemas": {"Balance": BALANCE, "Error": Error.model_json_schema()},
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization"}
            },
        },
        "security": [{"token": []}],
        "paths": paths,
    }


def route(path: str) -> str:
    """A documented path ("/users/{name}") as the tornado pattern that routes it (the name
    becomes the method's keyword argument)."""
    return re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", path)
