"""Domain errors and their rendering as RFC 9457 problem details (``application/problem+json``).

Services raise a ``DomainError`` subclass; one handler renders it. Every error has a stable
machine ``code``; the problem ``type`` is ``https://tanso.dev/problems/<code>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = structlog.get_logger()

PROBLEM_TYPE_BASE = "https://tanso.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class DomainError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class InvalidInput(DomainError):
    """A semantic validation error found by a service (422, like payload validation)."""

    status_code = 422
    code = "validation_error"

    def __init__(
        self, detail: str, *, field: str | None = None, location: str = "body", **extra: Any
    ) -> None:
        """``location`` is where ``field`` was sent: ``body``, ``query``, ``path`` or ``header``."""
        errors = [
            {
                "loc": [location, field] if field else [location],
                "msg": detail,
                "type": "value_error",
            }
        ]
        super().__init__(detail, errors=errors, **extra)


class Problem(BaseModel):
    """The problem document every error response carries."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


class ValidationProblem(Problem):
    errors: list[dict[str, Any]]


def problem_response(
    request: Request | None,
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def problem_responses(*errors: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status its errors can produce, documented with codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = out.setdefault(
            error.status_code,
            {
                "model": ValidationProblem if error.status_code == 422 else Problem,
                "content": {PROBLEM_MEDIA_TYPE: {}},
                "description": "",
            },
        )
        codes = entry["description"].split(", ") if entry["description"] else []
        if error.code not in codes:
            codes.append(error.code)
        entry["description"] = ", ".join(codes)
    return out


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# Deadlock, serialisation failure, lock not available: the transaction was rolled back whole.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# The database took no work at all: too many connections, starting up or shutting down, or the
# connection failed (class 08). Nothing was applied; the client may try again shortly.
UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})


def _sqlstates(exc: BaseException) -> Iterator[str]:
    """The SQLSTATEs carried by ``exc`` and what it wraps (SQLAlchemy's ``orig``, causes)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return
        for candidate in (seen, getattr(seen, "orig", None)):
            code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if code:
                yield str(code)
        seen = seen.__cause__


def retryable_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE if ``exc`` (or what it wraps) is a conflict a retry would resolve."""
    return next((code for code in _sqlstates(exc) if code in RETRYABLE_SQLSTATES), None)


def unavailable_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE if ``exc`` says the database could not take the request at all."""
    return next(
        (
            code
            for code in _sqlstates(exc)
            if code in UNAVAILABLE_SQLSTATES or code.startswith("08")
        ),
        None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json, and document them so in the OpenAPI document."""
    from app.core.openapi import install_openapi  # imports this module: import it late

    install_openapi(app)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return problem_response(
            request, exc.status_code, exc.code, exc.detail, headers=headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return problem_response(
            request, 422, "validation_error", "The request is not valid.", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return problem_response(
            request, exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
        )

    async def _conflict_or_bug(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL aborted the transaction to break a deadlock or a serialisation conflict:
        # nothing was applied, and the same request (same Idempotency-Key) can be sent again.
        sqlstate = retryable_sqlstate(exc)
        if sqlstate is not None:
            log.warning("http.transaction_conflict", path=request.url.path, sqlstate=sqlstate)
            return problem_response(
                request,
                409,
                "transaction_conflict",
                "The request collided with another one and was not applied; send it again.",
                headers={"Retry-After": "1"},
            )
        sqlstate = unavailable_sqlstate(exc)
        if sqlstate is not None:
            log.warning("http.database_unavailable", path=request.url.path, sqlstate=sqlstate)
            return problem_response(
                request,
                503,
                "database_unavailable",
                "The database could not take the request now; nothing was applied. Try again.",
                headers={"Retry-After": "1"},
            )
        return await _unhandled(request, exc)

    # Database errors are handled inside the app (ExceptionMiddleware), so a conflict is an
    # ordinary 409, not an exception that the server logs as a crash.
    app.add_exception_handler(DBAPIError, _conflict_or_bug)
    app.add_exception_handler(asyncpg.PostgresError, _conflict_or_bug)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        # This handler runs outside RequestIdMiddleware (Starlette's ServerErrorMiddleware is
        # the outermost layer), so the id the log line carries is added to the response here.
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        return problem_response(
            request,
            500,
            "internal_error",
            "An unexpected error occurred.",
            headers={"X-Request-ID": request_id} if request_id else None,
        )
