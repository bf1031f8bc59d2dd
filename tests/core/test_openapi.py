"""/openapi.json describes every route, its errors as problem documents, and Idempotency-Key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

PROBLEM = "#/components/schemas/Problem"
VALIDATION_PROBLEM = "#/components/schemas/ValidationProblem"


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200, r.text
    document: dict[str, Any] = r.json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _codes(response: dict[str, Any]) -> list[str]:
    description: str = response["description"]
    return description.split(", ")


class TestOpenApi:
    def test_every_route_is_listed_with_its_declared_errors(
        self, app: FastAPI, spec: dict[str, Any]
    ) -> None:
        routes = [r for r in app.routes if isinstance(r, APIRoute) and r.include_in_schema]
        assert routes
        for route in routes:
            for method in route.methods or ():
                operation = spec["paths"][route.path_format][method.lower()]
                assert operation.get("summary"), f"{method} {route.path} has no summary"
                for status in route.responses:
                    assert str(status) in operation["responses"], (method, route.path, status)

    def test_every_reference_resolves(self, spec: dict[str, Any]) -> None:
        schemas = spec["components"]["schemas"]
        for ref in set(_refs(spec)):
            assert ref.startswith("#/components/schemas/"), ref
            assert ref.removeprefix("#/components/schemas/") in schemas, f"missing schema {ref}"

    def test_errors_are_problem_documents(self, spec: dict[str, Any]) -> None:
        for path, method, operation in _operations(spec):
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                expected = VALIDATION_PROBLEM if status == "422" else PROBLEM
                assert response["content"] == {
                    "application/problem+json": {"schema": {"$ref": expected}}
                }, (method, path, status)
                assert response["description"], (method, path, status)
        assert "HTTPValidationError" not in spec["components"]["schemas"]

    def test_problem_schemas_carry_the_documented_fields(self, spec: dict[str, Any]) -> None:
        schemas = spec["components"]["schemas"]
        assert set(schemas["Problem"]["required"]) >= {"type", "title", "status", "detail", "code"}
        assert "instance" in schemas["Problem"]["properties"]
        assert "errors" in schemas["ValidationProblem"]["required"]

    def test_routes_with_input_document_validation_errors(self, spec: dict[str, Any]) -> None:
        for path, method, operation in _operations(spec):
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in operation["responses"], (method, path)
                assert "validation_error" in _codes(operation["responses"]["422"]), (method, path)

    def test_authenticated_routes_document_401(self, spec: dict[str, Any]) -> None:
        for path, method, operation in _operations(spec):
            if operation.get("security"):
                assert "invalid_api_key" in _codes(operation["responses"]["401"]), (method, path)

    def test_every_post_documents_idempotency(self, spec: dict[str, Any]) -> None:
        posts = [(p, o) for p, m, o in _operations(spec) if m == "post"]
        assert posts
        for path, operation in posts:
            header = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
            assert len(header) == 1, path
            assert header[0]["in"] == "header"
            assert header[0]["required"] is False
            assert header[0]["schema"]["maxLength"] == 255
            responses = operation["responses"]
            assert "idempotency_request_in_progress" in _codes(responses["409"]), path
            assert "idempotency_key_reused" in _codes(responses["422"]), path

    @pytest.mark.parametrize(
        ("method", "path", "status", "code"),
        [
            ("post", "/v1/organizations", "409", "corporate_number_taken"),
            ("get", "/v1/organizations/{organization_id}", "404", "organization_not_found"),
            ("post", "/v1/organizations/{organization_id}/api-keys", "422", "scope_not_allowed"),
            ("post", "/v1/organizations/{organization_id}/api-keys", "403", "insufficient_scope"),
            ("delete", "/v1/api-keys/{api_key_id}", "404", "api_key_not_found"),
            ("get", "/v1/organizations", "403", "insufficient_scope"),
        ],
    )
    def test_domain_error_codes_are_documented(
        self, spec: dict[str, Any], method: str, path: str, status: str, code: str
    ) -> None:
        assert code in _codes(spec["paths"][path][method]["responses"][status])

    def test_document_is_built_once(self, app: FastAPI) -> None:
        assert app.openapi() is app.openapi()
