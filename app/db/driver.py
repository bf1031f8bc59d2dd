"""One statement straight through asyncpg, inside the session's transaction (or, for a group
of orders, together with its COMMIT: ``call_and_commit``).

For hot paths that are a single call of a SQL function (posting to the ledger, drawing from
an offset pool): SQLAlchemy's statement machinery costs more than the call itself. The
statement runs on the session's own connection, so it is part of the session's transaction.
When no transaction is open yet on that connection, SQLAlchemy runs it (and so begins the
transaction properly); asyncpg is used only once SQLAlchemy's BEGIN has been sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.literal import Unwritable, call_sql


class DatabaseRefusal(Exception):
    """The database refused the statement: its SQLSTATE, message and constraint, if any."""

    def __init__(self, sqlstate: str | None, message: str, constraint: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.constraint = constraint


async def scalar_call(session: AsyncSession, sql: str, args: Sequence[Any]) -> Any:
    """The first column of the first row of ``sql`` (``$1``, ``$2``… placeholders)."""
    rows = await _run(session, sql, args, first=True)
    return rows[0][0] if rows else None


async def fetch_rows(session: AsyncSession, sql: str, args: Sequence[Any]) -> list[Any]:
    """Every row of ``sql`` (``$1``, ``$2``… placeholders) as the driver decodes it (asyncpg
    records; before the session's first statement, rows that index the same way): for reads
    of many rows (an auction close's bids, an order book), where building SQLAlchemy rows
    costs more than the query, or a call returning rows. A refusal raises
    ``DatabaseRefusal``."""
    return await _run(session, sql, args, first=False)


async def _run(session: AsyncSession, sql: str, args: Sequence[Any], *, first: bool) -> list[Any]:
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is not None and driver.is_in_transaction():
        try:
            if first:
                row = await driver.fetchrow(sql, *args)
                return [] if row is None else [row]
            rows: list[Any] = await driver.fetch(sql, *args)
            return rows
        except asyncpg.PostgresError as exc:
            raise _refusal(exc) from exc
    # No statement has run yet: SQLAlchemy runs this one, and so begins the transaction.
    try:
        result = await connection.exec_driver_sql(sql, tuple(args))
        if first:
            row = result.first()
            return [] if row is None else [row]
        return list(result.all())
    except DBAPIError as exc:
        orig = exc.orig
        cause = getattr(orig, "__cause__", None)
        raise DatabaseRefusal(
            getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None),
            str(cause or orig or exc),
            getattr(cause, "constraint_name", None),
        ) from exc


def _refusal(exc: asyncpg.PostgresError) -> DatabaseRefusal:
    return DatabaseRefusal(exc.sqlstate, str(exc), getattr(exc, "constraint_name", None))


@asynccontextmanager
async def driver_transaction(session: AsyncSession) -> AsyncIterator[asyncpg.Connection]:
    """A transaction begun on the session's own driver connection, which SQLAlchemy then uses
    in autocommit mode: the session's statements run in it, and ``call_and_commit`` can
    commit it in the same round trip as its call (SQLAlchemy's own transaction would not
    learn of that COMMIT). The session must not have begun yet. Rolled back at the end
    unless committed; if that fails, the connection is discarded, not pooled, so no
    transaction outlives the block."""
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None:
        raise RuntimeError("the session's connection is closed")
    await driver.execute("BEGIN")
    try:
        yield driver
    finally:
        if driver.is_closed():  # lost: SQLAlchemy, which did not see it, must not pool it
            await connection.invalidate()
        elif driver.is_in_transaction():
            try:
                await driver.execute("ROLLBACK")
            except BaseException:
                await connection.invalidate()
                raise


class CommitOutcomeUnknown(Exception):
    """The connection failed while a COMMIT was on its way: the transaction may or may not
    have committed. The caller finds out from what it wrote (``app.market.group``)."""


async def call_and_commit(
    session: AsyncSession, function: str, types: Sequence[str], args: Sequence[Any]
) -> None:
    """Call ``function`` (parameters of ``types``) with ``args``, then COMMIT the session's
    transaction: both in one simple-query message, so one round trip (``app.db.literal``).

    The transaction must be a ``driver_transaction``: SQLAlchemy does not learn of this
    COMMIT.
    If an argument has no exact literal, or the server does not read strings the standard
    way, the call is sent as a prepared statement and the COMMIT after it (two round trips).

    A refusal (raised by the call or by the commit's deferred checks) raises
    ``DatabaseRefusal``, and nothing was committed. If the connection fails instead, raises
    ``CommitOutcomeUnknown``."""
    raw = await (await session.connection()).get_raw_connection()
    driver, adapted = raw.driver_connection, raw.dbapi_connection
    if (
        driver is None
        or adapted is None
        or not adapted.autocommit
        or not driver.is_in_transaction()
    ):
        raise RuntimeError("call_and_commit runs inside a driver_transaction")
    try:
        if driver.get_settings().standard_conforming_strings != "on":
            raise Unwritable("the server reads backslashes in strings as escapes")
        sql = call_sql(function, types, args) + "; COMMIT"
    except Unwritable:
        placeholders = ", ".join(f"${i}::{t}" for i, t in enumerate(types, 1))
        statements = [(f"SELECT count(*) FROM {function}({placeholders})", args), ("COMMIT", ())]
    else:
        statements = [(sql, ())]
    for statement, arguments in statements:
        await _committing(driver, statement, arguments)


async def commit(driver: asyncpg.Connection) -> None:
    """COMMIT a ``driver_transaction``: ``DatabaseRefusal`` if the commit's deferred checks
    refuse it (nothing committed), ``CommitOutcomeUnknown`` if the connection fails."""
    await _committing(driver, "COMMIT", ())


async def _committing(driver: asyncpg.Connection, sql: str, args: Sequence[Any]) -> None:
    """Run a statement on the way to a COMMIT. An error the server answered with, on a
    connection still open, ended the transaction uncommitted: ``DatabaseRefusal``. If the
    connection is lost (whether or not the server said why first: a FATAL error such as a
    terminated backend closes it), the COMMIT may or may not have happened."""
    try:
        await driver.execute(sql, *args)
    except asyncpg.PostgresError as exc:
        if driver.is_closed() or isinstance(exc, asyncpg.PostgresConnectionError):
            raise CommitOutcomeUnknown(str(exc)) from exc
        raise _refusal(exc) from exc
    except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise CommitOutcomeUnknown(str(exc)) from exc
