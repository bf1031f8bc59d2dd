"""The OpenAPI document, told the truth about errors and idempotency.

FastAPI documents a route's errors under ``application/json`` and adds its own
``HTTPValidationError`` for 422, but every error this service sends is an
``application/problem+json`` document (``Problem``; ``ValidationProblem`` for 422). And every
``POST`` and ``PATCH`` accepts an ``Idempotency-Key`` header, which the middleware (not a route) handles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from app.core.errors import PROBLEM_MEDIA_TYPE, Problem, ValidationProblem
from app.core.idempotency import IDEMPOTENT_METHODS, MAX_KEY_LENGTH

_SCHEMA_REF = "#/components/schemas/{model}"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes the request safe to retry. The same key with the same request replays the first"
        " successful response (header `Idempotent-Replayed: true`); with a different request it"
        " is refused (422 `idempotency_key_reused`); while the first is still running, 409"
        " `idempotency_request_in_progress`. Keys are scoped to the API key sending them."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
}


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_code(responses: dict[str, Any], status: str, code: str, *, first: bool = False) -> None:
    entry = responses.setdefault(status, {"description": ""})
    description = entry.get("description", "")
    codes = [c for c in description.split(", ") if c] if description else []
    if description == "Validation Error":  # FastAPI's default 422
        codes = []
    if code not in codes:
        codes.insert(0 if first else len(codes), code)
    entry["description"] = ", ".join(codes)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, ValidationProblem):
        schemas.setdefault(model.__name__, model.model_json_schema(ref_template=_SCHEMA_REF))
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if method.upper() in IDEMPOTENT_METHODS:
                parameters = operation.setdefault("parameters", [])
                if not any(p.get("name", "").lower() == "idempotency-key" for p in parameters):
                    parameters.append(dict(IDEMPOTENCY_PARAMETER))
                _add_code(responses, "409", "idempotency_request_in_progress")
                _add_code(responses, "422", "idempotency_key_reused")
                _add_code(responses, "413", "payload_too_large")
            if "422" in responses:
                _add_code(responses, "422", "validation_error", first=True)
            for status, response in responses.items():
                if not (status.isdigit() and int(status) >= 400):
                    continue
                model = ValidationProblem if status == "422" else Problem
                response["content"] = {
                    PROBLEM_MEDIA_TYPE: {
                        "schema": {"$ref": _SCHEMA_REF.format(model=model.__name__)}
                    }
                }
                response.setdefault("description", "")
    others = {k: v for k, v in schemas.items() if k not in _FASTAPI_VALIDATION_SCHEMAS}
    used = set(_refs(schema.get("paths", {}))) | set(_refs(others))
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        if _SCHEMA_REF.format(model=name) not in used:
            schemas.pop(name, None)
    return schema
