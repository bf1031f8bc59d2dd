"""``app.db.literal``: every value it writes reads back from PostgreSQL as itself.

The literals are parsed by the server, so these run against it: a value written as SQL text
and selected must come back equal, whatever characters a string holds (quotes, backslashes,
braces, commas, the word NULL), so no value can end its literal early or be read as two.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.literal import Unwritable, call_sql, literal

BIGINT = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Any text PostgreSQL can hold (no NUL), with the characters that matter here made likely.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        st.sampled_from(["'", '"', "\\", "{", "}", ",", " ", "\n", "N", "U", "L"]),
    )
) | st.sampled_from(["NULL", "null", "", " ", "'", "''", "\\", '"', "{}", "{a,b}", "E'x'"])
# (hypothesis takes naive bounds and adds the timezone.)
EARLIEST, LATEST = datetime(1970, 1, 2), datetime(2200, 1, 1)  # noqa: DTZ001
TIMESTAMP = st.datetimes(
    min_value=EARLIEST,
    max_value=LATEST,
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=9))]),
)

VALUES: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("text", TEXT),
    ("bigint", BIGINT),
    ("boolean", st.booleans()),
    ("uuid", st.uuids()),
    ("timestamp with time zone", TIMESTAMP),
    ("jsonb", st.just('{"a": "it\'s", "b": "\\\\"}')),
    ("text[]", st.lists(st.none() | TEXT, max_size=6)),
    ("bigint[]", st.lists(st.none() | BIGINT, max_size=6)),
    ("boolean[]", st.lists(st.none() | st.booleans(), max_size=6)),
    ("uuid[]", st.lists(st.none() | st.uuids(), max_size=6)),
]


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@st.composite
def typed_value(draw: st.DrawFn) -> tuple[str, Any]:
    sql_type, values = draw(st.sampled_from(VALUES))
    return sql_type, draw(st.none() | values)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(typed=typed_value())
async def test_every_literal_reads_back_as_its_value(
    connection: asyncpg.Connection, typed: tuple[str, Any]
) -> None:
    sql_type, value = typed
    read = await connection.fetchval(f"SELECT {literal(value, sql_type)}")
    assert read == value  # (the JSON is written as PostgreSQL writes it back)


async def test_the_call_is_one_statement_with_every_argument_in_place(
    connection: asyncpg.Connection, engine: AsyncEngine
) -> None:
    await connection.execute(
        "CREATE FUNCTION pg_temp.echo(a text, b uuid[], c bigint) RETURNS TABLE (x text)"
        " LANGUAGE sql AS $$ SELECT a || '|' || b::text || '|' || c $$"
    )
    ids = [uuid.UUID(int=1), None]
    sql = call_sql("pg_temp.echo", ["text", "uuid[]", "bigint"], ["x'); DROP --", ids, 7])
    assert sql.startswith("SELECT count(*) FROM pg_temp.echo(")
    assert await connection.fetchval(sql) == 1
    row = await connection.fetchval(sql.replace("SELECT count(*) FROM", "SELECT x FROM", 1))
    assert row == "x'); DROP --|{00000000-0000-0000-0000-000000000001,NULL}|7"


@pytest.mark.parametrize(
    ("value", "sql_type"),
    [
        ("a\x00b", "text"),
        (["a", "b\x00"], "text[]"),
        (datetime(2026, 1, 1), "timestamp with time zone"),  # noqa: DTZ001 (which instant?)
        (1.5, "double precision"),
        ("abc", "text[]"),  # a string is not an array
        ([1.5], "bigint[]"),
        ([uuid.UUID(int=1), "00000000-0000-0000-0000-000000000002"], "uuid[]"),  # a str
    ],
)
def test_what_has_no_exact_literal_is_refused(value: Any, sql_type: str) -> None:
    with pytest.raises(Unwritable):
        literal(value, sql_type)


def test_a_call_names_as_many_arguments_as_types() -> None:
    with pytest.raises(ValueError, match="takes 2 arguments, not 1"):
        call_sql("f", ["text", "text"], ["a"])
