"""One statement straight through asyncpg, inside the session's transaction.

For hot paths that are a single call of a SQL function (posting to the ledger, drawing from
an offset pool): SQLAlchemy's statement machinery costs more than the call itself. The
statement runs on the session's own connection, so it is part of the session's transaction.
When no transaction is open yet on that connection, SQLAlchemy runs it (and so begins the
transaction properly); asyncpg is used only once SQLAlchemy's BEGIN has been sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession


class DatabaseRefusal(Exception):
    """The database refused the statement: its SQLSTATE, message and constraint, if any."""

    def __init__(self, sqlstate: str | None, message: str, constraint: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.constraint = constraint


async def scalar_call(session: AsyncSession, sql: str, args: Sequence[Any]) -> Any:
    """The first column of the first row of ``sql`` (``$1``, ``$2``… placeholders)."""
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is not None and driver.is_in_transaction():
        try:
            return await driver.fetchval(sql, *args)
        except asyncpg.PostgresError as exc:
            raise _refusal(exc) from exc
    try:
        return (await connection.exec_driver_sql(sql, tuple(args))).scalar()
    except DBAPIError as exc:
        orig = exc.orig
        cause = getattr(orig, "__cause__", None)
        raise DatabaseRefusal(
            getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None),
            str(cause or orig or exc),
            getattr(cause, "constraint_name", None),
        ) from exc


async def fetch_rows(session: AsyncSession, sql: str, args: Sequence[Any]) -> list[Any]:
    """Every row of ``sql`` (``$1``, ``$2``… placeholders) as asyncpg records, for reads of
    tens of thousands of rows (an auction close's bids), where building SQLAlchemy rows costs
    more than the query, or a call returning rows. The session's transaction must be open (a
    lock taken before). A refusal raises ``DatabaseRefusal``."""
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None or not driver.is_in_transaction():
        raise RuntimeError("fetch_rows runs inside the session's open transaction")
    try:
        rows: list[Any] = await driver.fetch(sql, *args)
    except asyncpg.PostgresError as exc:
        raise _refusal(exc) from exc
    return rows


def _refusal(exc: asyncpg.PostgresError) -> DatabaseRefusal:
    return DatabaseRefusal(exc.sqlstate, str(exc), getattr(exc, "constraint_name", None))
