"""``fetch_rows`` and ``scalar_call``: the same rows and refusals whether the session's
transaction had begun (the driver runs the statement) or not (SQLAlchemy runs it, and so
begins the transaction)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.driver import DatabaseRefusal, fetch_rows, scalar_call
from app.db.session import create_sessionmaker

ROWS = "SELECT g, g * $1::int FROM generate_series(1, 3) AS g ORDER BY g"


async def test_rows_are_the_same_before_and_after_the_first_statement(
    engine: AsyncEngine,
) -> None:
    async with create_sessionmaker(engine)() as session:
        first = await fetch_rows(session, ROWS, [10])  # no statement yet: SQLAlchemy runs it
        assert session.in_transaction()
        later = await fetch_rows(session, ROWS, [10])  # the driver's own records
        assert isinstance(later[0], asyncpg.Record)
        assert (
            [tuple(r) for r in first]
            == [tuple(r) for r in later]
            == [
                (1, 10),
                (2, 20),
                (3, 30),
            ]
        )
        assert await scalar_call(session, ROWS, [2]) == 1
        assert await scalar_call(session, "SELECT 1 WHERE false", []) is None


@pytest.mark.parametrize("begun", [False, True], ids=["before-first-statement", "in-transaction"])
async def test_a_refusal_is_a_database_refusal_either_way(engine: AsyncEngine, begun: bool) -> None:
    async with create_sessionmaker(engine)() as session:
        if begun:
            await session.execute(text("SELECT 1"))
        with pytest.raises(DatabaseRefusal) as refused:
            await fetch_rows(session, "SELECT 1 / $1::int", [0])
        assert refused.value.sqlstate == "22012"  # division_by_zero
