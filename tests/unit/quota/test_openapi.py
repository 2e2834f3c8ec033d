"""The quota API's OpenAPI document is generated from the handlers' own declarations
(their routes, @operation models), so it can't drift from what they parse."""

from __future__ import annotations

import pytest

from shangzhuang.quota.openapi import GrantRequest, UsageQuery, document, operation
from shangzhuang.quota.service import API, APIHandler, GrantsHandler, UsageHandler
from shangzhuang.services import Error


def test_every_route_and_method_is_documented_from_its_declaration():
    doc = document("/services/quota/", API)
    assert doc["servers"] == [{"url": "/services/quota/api/v1"}]
    assert set(doc["paths"]) == {path for path, _ in API}
    assert set(doc["paths"]["/grants"]) == {"get", "post"}
    assert doc["paths"]["/users/{name}"]["get"]["parameters"][0]["name"] == "name"
    # the query parameters are the model's fields, with its bounds
    usage = doc["paths"]["/usage"]["get"]
    assert [p["name"] for p in usage["parameters"]] == list(UsageQuery.model_fields)
    limit = next(p for p in usage["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100000}
    fmt = next(p for p in usage["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["json", "csv"] and not fmt["required"]
    assert set(usage["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    # the body is the model's schema; errors are services.Error
    post = doc["paths"]["/grants"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == GrantRequest.model_json_schema()
    assert set(body["required"]) == {"resource", "amount", "reason"}
    assert body["additionalProperties"] is False
    assert "201" in post["responses"]
    assert doc["components"]["schemas"]["Error"] == Error.model_json_schema()
    # the handlers parse with the very models the document shows
    assert GrantsHandler.post.operation.body is GrantRequest
    assert UsageHandler.get.operation.query is UsageQuery


def test_document_is_valid_openapi_3_1():
    jsonschema = pytest.importorskip("jsonschema")
    doc = document("/services/quota/", API)
    # every schema in it is a valid JSON Schema (2020-12, OpenAPI 3.1's dialect)
    for path in doc["paths"].values():
        for op in path.values():
            for p in op["parameters"]:
                jsonschema.Draft202012Validator.check_schema(p["schema"])
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                jsonschema.Draft202012Validator.check_schema(schema)


def test_an_undeclared_method_cannot_be_routed_undocumented():
    class Sneaky(APIHandler):
        def delete(self):
            pass

    with pytest.raises(TypeError, match=r"Sneaky.delete: declare it with @operation"):
        document("/services/quota/", [*API, ("/sneaky", Sneaky)])

    class Declared(APIHandler):
        @operation("Remove nothing")
        def delete(self):
            pass

    assert "delete" in document("/services/quota/", [("/declared", Declared)])["paths"]["/declared"]
