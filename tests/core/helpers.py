"""Assertions on problem documents, and one-line SQL reads for checking database state."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://tanso.dev/problems/"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with this status and code; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_TYPE_BASE + code
    assert body["title"] == HTTPStatus(status).phrase
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if status == 422:
        assert isinstance(body["errors"], list)
        assert body["errors"]
        for error in body["errors"]:
            assert set(error) == {"loc", "msg", "type"}
    return body


def error_locations(body: dict[str, Any]) -> set[tuple[str | int, ...]]:
    return {tuple(error["loc"]) for error in body["errors"]}


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """One value from a fresh connection (no transaction is left open to block the clean-up)."""
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def tables_containing(engine: AsyncEngine, needle: str) -> list[str]:
    """Every table with a row whose text form holds ``needle`` (also hex-encoded, for bytea)."""
    found = []
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ).scalars()
        for table in list(tables):
            hits = (
                await conn.execute(
                    text(
                        f'SELECT count(*) FROM "{table}" AS t '
                        "WHERE position(:needle IN t::text) > 0 OR position(:hex IN t::text) > 0"
                    ),
                    {"needle": needle, "hex": needle.encode().hex()},
                )
            ).scalar_one()
            if hits:
                found.append(table)
    return found
