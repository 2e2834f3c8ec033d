"""The quota API's OpenAPI description, served at .../api/v1/openapi.json."""

from __future__ import annotations

_limit = {
    "type": ["object", "null"],
    "properties": {k: {"type": "number"} for k in ("allocated", "granted", "used", "remaining")},
}
_balance = {
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
    },
}
_error = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
}


def _resp(schema: dict, desc: str = "OK") -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


_errors = {
    "400": _resp({"$ref": "#/components/schemas/Error"}, "Bad input"),
    "401": _resp({"$ref": "#/components/schemas/Error"}, "No or bad token"),
    "403": _resp({"$ref": "#/components/schemas/Error"}, "Not allowed"),
    "404": _resp({"$ref": "#/components/schemas/Error"}, "Not found"),
}
_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def document(prefix: str) -> dict:
    bal = {"$ref": "#/components/schemas/Balance"}
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
            "schemas": {"Balance": _balance, "Error": _error},
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization"}
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/me": {"get": {"summary": "My balance", "responses": {"200": _resp(bal), **_errors}}},
            "/users": {
                "get": {
                    "summary": "Every user's balance (admin), a page at a time",
                    "parameters": [
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],  # fmt: skip
                    "responses": {
                        "200": _resp(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": bal},
                                    "total": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                },
                            }
                        ),
                        **_errors,
                    },
                }
            },
            "/users/{name}": {
                "get": {
                    "summary": "A user's balance (self or admin)",
                    "parameters": [_name],
                    "responses": {"200": _resp(bal), **_errors},
                }
            },
            "/accounts/{name}": {
                "get": {
                    "summary": "An account's pool (its members or admin)",
                    "parameters": [_name],
                    "responses": {"200": _resp({"type": "object"}), **_errors},
                }
            },
            "/grants": {
                "get": {
                    "summary": "Grants of this period and later (admin)",
                    "responses": {"200": _resp({"type": "array"}), **_errors},
                },
                "post": {
                    "summary": "Top up an account or a user's personal cap (admin)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["resource", "amount", "reason"],
                                    "properties": {
                                        "user": {"type": "string"},
                                        "account": {"type": "string"},
                                        "resource": {
                                            "type": "string",
                                            "enum": ["gpu_hours", "cpu_hours"],
                                        },
                                        "amount": {"type": "number", "exclusiveMinimum": 0},
                                        "reason": {"type": "string", "minLength": 1},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"201": _resp({"type": "object"}, "Granted"), **_errors},
                },
            },
            "/usage": {
                "get": {
                    "summary": "Charged intervals (own, or anyone's for admins), JSON or CSV",
                    "parameters": [
                        {"name": "user", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                        {
                            "name": "until",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["json", "csv"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
                        },
                        {
                            "name": "order",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["oldest", "newest"]},
                        },
                    ],  # fmt: skip
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors,
                    },
                }
            },
        },
    }
