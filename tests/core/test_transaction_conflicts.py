"""A transaction PostgreSQL aborted to break a deadlock (or a serialisation conflict) is a 409
``transaction_conflict`` with Retry-After, not a 500: nothing was applied, send it again. A
database that takes no work (too many connections, shutting down, connection lost) is a 503
``database_unavailable`` with Retry-After."""

from __future__ import annotations

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError

from app.core.errors import retryable_sqlstate, unavailable_sqlstate


def _deadlock() -> asyncpg.PostgresError:
    return asyncpg.exceptions.DeadlockDetectedError("deadlock detected")


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("wrapped")
        self.sqlstate = sqlstate


async def _get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


async def test_a_deadlock_is_a_retryable_409(app: FastAPI) -> None:
    async def deadlocked() -> None:
        raise _deadlock()

    app.add_api_route("/deadlocked", deadlocked)
    r = await _get(app, "/deadlocked")
    assert r.status_code == 409
    assert r.json()["code"] == "transaction_conflict"
    assert r.headers["retry-after"] == "1"


async def test_a_wrapped_serialisation_failure_is_a_409(app: FastAPI) -> None:
    async def conflicted() -> None:
        raise DBAPIError("UPDATE …", {}, _Orig("40001"))

    app.add_api_route("/conflicted", conflicted)
    r = await _get(app, "/conflicted")
    assert r.status_code == 409
    assert r.json()["code"] == "transaction_conflict"


async def test_too_many_connections_is_a_503(app: FastAPI) -> None:
    async def full() -> None:
        raise asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")

    app.add_api_route("/full", full)
    r = await _get(app, "/full")
    assert r.status_code == 503
    assert r.json()["code"] == "database_unavailable"
    assert r.headers["retry-after"] == "1"


async def test_a_lost_connection_is_a_503(app: FastAPI) -> None:
    async def lost() -> None:
        raise DBAPIError("SELECT …", {}, _Orig("08006"))

    app.add_api_route("/lost", lost)
    r = await _get(app, "/lost")
    assert r.status_code == 503
    assert r.json()["code"] == "database_unavailable"


async def test_other_database_errors_stay_500s(app: FastAPI) -> None:
    async def broken() -> None:
        raise DBAPIError("SELECT …", {}, _Orig("42P01"))

    app.add_api_route("/broken", broken)
    r = await _get(app, "/broken")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"


def test_retryable_sqlstate_follows_causes() -> None:
    outer = RuntimeError("outer")
    outer.__cause__ = _deadlock()
    assert retryable_sqlstate(outer) == "40P01"
    assert retryable_sqlstate(ValueError("no")) is None
    assert unavailable_sqlstate(outer) is None
    outer.__cause__ = asyncpg.exceptions.CannotConnectNowError("starting up")
    assert unavailable_sqlstate(outer) == "57P03"
