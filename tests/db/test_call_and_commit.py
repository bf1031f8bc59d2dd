"""``call_and_commit``: a call and the COMMIT of its transaction in one message, with the
outcome the caller needs: committed, refused (nothing committed), or unknown (the connection
failed on the way). Checked from another connection, on a table and function of the test's
own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.driver import (
    CommitOutcomeUnknown,
    DatabaseRefusal,
    call_and_commit,
    driver_transaction,
)
from app.db.session import create_sessionmaker
from app.db.url import async_url

WRITE = "tanso_test_write"
TYPES = ("text", "double precision")


@pytest.fixture
async def table(engine: AsyncEngine) -> AsyncIterator[None]:
    """A table the function writes to: ``refuse`` makes the call fail; ``refuse at commit``
    makes the commit's deferred check fail; a positive ``pause`` waits that long first."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE tanso_test_writes (note text, pause float8)"))
        await conn.execute(
            text(
                f"CREATE FUNCTION {WRITE}(p_note text, p_pause float8) RETURNS SETOF int"
                " LANGUAGE plpgsql AS $$ BEGIN"
                "  PERFORM pg_sleep(p_pause);"
                "  IF p_note = 'refuse' THEN"
                "    RAISE EXCEPTION 'refused' USING ERRCODE = 'TN999'; END IF;"
                "  INSERT INTO tanso_test_writes VALUES (p_note, p_pause); RETURN NEXT 1;"
                " END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE FUNCTION tanso_test_check() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.note = 'refuse at commit' THEN"
                "  RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'TN998'; END IF;"
                " RETURN NULL; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER tanso_test_check AFTER INSERT ON tanso_test_writes"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tanso_test_check()"
            )
        )
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE tanso_test_writes"))
            await conn.execute(text(f"DROP FUNCTION {WRITE}(text, float8)"))
            await conn.execute(text("DROP FUNCTION tanso_test_check()"))


async def _stored(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT note FROM tanso_test_writes ORDER BY note"))
        return list(rows.scalars())


async def _call(engine: AsyncEngine, note: str, pause: float = 0.0) -> bool:
    """Call and commit; whether the connection was left outside any transaction."""
    async with create_sessionmaker(engine)() as session, driver_transaction(session) as driver:
        try:
            await call_and_commit(session, WRITE, TYPES, [note, pause])
        finally:
            outside = not driver.is_in_transaction()
    return outside


@pytest.mark.usefixtures("table")
async def test_the_call_is_committed_with_it(engine: AsyncEngine) -> None:
    note = 'it\'s a \\ {note}, "quoted"'
    assert await _call(engine, note)
    assert await _stored(engine) == [note]


@pytest.mark.usefixtures("table")
async def test_a_value_without_a_literal_is_sent_as_an_argument_and_still_committed(
    engine: AsyncEngine,
) -> None:
    assert await _call(engine, "a float", 0.000_1)  # a float has no exact literal here
    assert await _stored(engine) == ["a float"]


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize(("note", "sqlstate"), [("refuse", "TN999"), ("refuse at commit", "TN998")])
async def test_a_refusal_commits_nothing(engine: AsyncEngine, note: str, sqlstate: str) -> None:
    async with create_sessionmaker(engine)() as session, driver_transaction(session):
        await session.execute(text("INSERT INTO tanso_test_writes VALUES ('before', 0)"))
        with pytest.raises(DatabaseRefusal) as refused:
            await call_and_commit(session, WRITE, TYPES, [note, 0.0])
    assert refused.value.sqlstate == sqlstate
    assert await _stored(engine) == []  # the session's own earlier write is gone too
    # The pooled connections are usable, outside any transaction, afterwards.
    assert await _call(engine, "after")
    assert await _stored(engine) == ["after"]


@pytest.mark.usefixtures("table")
async def test_a_lost_connection_leaves_the_outcome_unknown(engine: AsyncEngine) -> None:
    async with create_sessionmaker(engine)() as session, driver_transaction(session) as driver:
        pid = driver.get_server_pid()

        async def terminate() -> None:
            await asyncio.sleep(0.2)
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        killer = asyncio.create_task(terminate())
        with pytest.raises(CommitOutcomeUnknown):
            await call_and_commit(session, WRITE, TYPES, ["lost", 5.0])
        await killer
    assert await _stored(engine) == []  # (here it was not committed; the caller must look)


async def test_it_needs_a_transaction_begun_on_the_driver(engine: AsyncEngine) -> None:
    async with create_sessionmaker(engine)() as session:
        with pytest.raises(RuntimeError, match="driver_transaction"):
            await call_and_commit(session, WRITE, TYPES, ["x", 0.0])


async def test_the_pooled_connection_is_transactional_again_afterwards(database_url: str) -> None:
    """``driver_transaction`` puts the session's connection in autocommit mode for
    SQLAlchemy; the pool must hand it to the next session transactional again, or that
    session's statements would each commit alone. One connection in the pool: the same
    one comes back."""
    engine = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0)
    try:
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session, driver_transaction(session) as driver:
            first = driver.get_server_pid()
        async with sessionmaker() as session:
            await session.execute(text("CREATE TEMP TABLE t (x int)"))
            await session.execute(text("INSERT INTO t VALUES (1)"))
            raw = await (await session.connection()).get_raw_connection()
            assert raw.driver_connection is not None
            assert raw.driver_connection.get_server_pid() == first
            assert raw.driver_connection.is_in_transaction()
            await session.rollback()  # undoes both statements: one transaction
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT to_regclass('pg_temp.t')")) is None
    finally:
        await engine.dispose()
