"""``tanso_apply_deferred`` (migration 0023: the hold operations run in memory) against 0015's
body, which ran each operation through the one-by-one row functions: on random sequences of
reserves, takes and transfers (valid and not), both must refuse with the same SQLSTATE, or
both leave the same holds, entries, postings and balances.

Each example runs both bodies in one transaction, each in a savepoint rolled back afterwards,
on the same committed start: two funded organisations, an unfunded one (its accounts do not
exist yet), an active hold and a closed one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.core.time import utc_now
from app.db.session import SessionMaker, create_sessionmaker
from app.db.url import async_url, libpq_url
from app.ledger import service as ledger
from app.ledger.models import AccountKind
from tests.conftest import _truncate as truncate
from tests.ledger.helpers import fund, make_org

CASH = ledger.CASH
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"


def _reference_body() -> str:
    """0015's ``tanso_apply_deferred``, as a temporary function ``pg_temp.apply_0015``."""
    path = MIGRATIONS / "2026-11-29-0015_deferred_writes.py"
    spec = importlib.util.spec_from_file_location("tanso_migration_0015_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    body: str = module.APPLY
    assert "CREATE FUNCTION tanso_apply_deferred(" in body
    return body.replace(
        "CREATE FUNCTION tanso_apply_deferred(", "CREATE FUNCTION pg_temp.apply_0015("
    )


@dataclass(frozen=True)
class World:
    """What the examples run against: organisations A and B (funded), C (no accounts), their
    accounts, an active hold of A's and a closed one of B's."""

    orgs: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
    accounts: dict[str, uuid.UUID]  # "A available", "A held", "B available", …
    active_hold: uuid.UUID
    closed_hold: uuid.UUID


async def _make_world(session: AsyncSession) -> World:
    a, b, c = [await make_org(session) for _ in range(3)]
    for org in (a, b):
        await fund(session, org, 1_000)
    active = await ledger.reserve(session, a, CASH, 300, reference="order:active")
    closed = await ledger.reserve(session, b, CASH, 100, reference="order:closed")
    await ledger.release_rest(session, closed)
    await session.commit()
    accounts = {
        f"{name} {kind.value}": await ledger.account_id(session, org, CASH, kind)
        for name, org in (("A", a), ("B", b))
        for kind in (AccountKind.available, AccountKind.held)
    }
    await session.commit()
    return World((a, b, c), accounts, active, closed)


NEW_HOLDS = [uuid.UUID(int=i) for i in (1, 2, 3)]

# An operation: (kind, hold index, org index, amount, source, destination, reference,
# rest_only); indexes resolve against the world (hold: 0-2 new, 3 the active one, 4 the
# closed one; accounts by name).
# Mostly valid (a sequence is refused at its first bad operation: the writes must be reached).
_amounts = st.one_of(
    st.integers(1, 400), st.integers(1, 400), st.integers(1, 400), st.sampled_from([None, -5, 0])
)
_accounts = st.sampled_from([None, None, None, "A available", "B available", "A held", "B held"])
_references = st.sampled_from([None, "order:x", "trade:1", None, "order:y", "x" * 201, None])
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.sampled_from([0, 1, 2, 3]),
            st.sampled_from([0, 0, 1, 1, 2]),
            _amounts,
            st.none(),
            st.none(),
            _references,
            st.just(False),
        ),
        st.tuples(
            st.just("take"),
            st.sampled_from([0, 0, 1, 2, 3, 3, 3, 4]),
            st.none(),
            _amounts,
            st.none(),
            _accounts,
            _references,
            st.booleans(),
        ),
        st.tuples(
            st.just("transfer"),
            st.none(),
            st.none(),
            st.integers(1, 700),
            st.sampled_from(["A available", "B available"]),
            st.sampled_from(["A available", "B available", "A held"]),
            st.sampled_from([None, "fee:1"]),
            st.just(False),
        ),
    ),
    min_size=1,
    max_size=10,
)


def _arguments(world: World, ops: list[tuple[Any, ...]]) -> list[Any]:
    holds = [*NEW_HOLDS, world.active_hold, world.closed_hold]
    account = world.accounts.get
    return [
        [op[0] for op in ops],
        [None if op[1] is None else holds[op[1]] for op in ops],
        [uuid.UUID(int=1000 + i) for i in range(len(ops))],
        [None if op[2] is None else world.orgs[op[2]] for op in ops],
        [CASH if op[0] in ("reserve", "transfer") else None for op in ops],
        [op[3] for op in ops],
        [None if op[4] is None else account(op[4]) for op in ops],
        [None if op[5] is None else account(op[5]) for op in ops],
        [None if op[0] == "reserve" else "trade" for op in ops],
        [op[6] for op in ops],
        [op[7] for op in ops],
        utc_now(),
        [],
        *([] for _ in range(9)),
        [],
    ]


_CALL = "SELECT {}(" + ", ".join(f"${i}" for i in range(1, 24)) + ")"


async def _outcome(
    connection: asyncpg.Connection, function: str, world: World, arguments: list[Any]
) -> tuple[Any, ...]:
    """The call's refusal (SQLSTATE), or what it left: holds, entries with their postings, and
    the balances of every account of the three organisations. In a savepoint, rolled back."""
    savepoint = connection.transaction()
    await savepoint.start()
    try:
        try:
            await connection.execute(_CALL.format(function), *arguments)
        except asyncpg.PostgresError as exc:
            return ("refused", exc.sqlstate)
        holds = await connection.fetch(
            "SELECT id, organization_id, asset, amount, remaining, status, reference"
            " FROM ledger_holds WHERE organization_id = ANY ($1) ORDER BY id",
            list(world.orgs),
        )
        entries = await connection.fetch(
            "SELECT e.id, e.kind, e.reference, e.metadata::text,"
            "       array_agg(ARRAY[p.account_id::text, p.asset, p.amount::text,"
            "                       p.balance_after::text] ORDER BY p.id)"
            "  FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id"
            " WHERE e.id = ANY ($1) GROUP BY e.id ORDER BY e.id",
            arguments[2],
        )
        balances = await connection.fetch(
            "SELECT organization_id, asset, kind, balance, version FROM ledger_accounts"
            " WHERE organization_id = ANY ($1) ORDER BY organization_id, asset, kind",
            list(world.orgs),
        )
        return (
            "written",
            [tuple(r) for r in holds],
            [tuple(r) for r in entries],
            [tuple(r) for r in balances],
        )
    finally:
        await savepoint.rollback()


def test_the_in_memory_body_does_what_the_row_by_row_body_did(database_url: str) -> None:
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        engine = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0)
        connection = runner.run(asyncpg.connect(libpq_url(database_url)))
        try:
            _compare(runner, create_sessionmaker(engine), connection)
        finally:
            runner.run(connection.close())
            runner.run(truncate(engine))
            runner.run(engine.dispose())


def _compare(
    runner: asyncio.Runner, sessions: SessionMaker, connection: asyncpg.Connection
) -> None:
    async def make() -> World:
        async with sessions() as session:
            return await _make_world(session)

    world = runner.run(make())
    reference = _reference_body()
    seen: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=_ops)
    def check(ops: list[tuple[Any, ...]]) -> None:
        expected, got = runner.run(_both(connection, reference, world, _arguments(world, ops)))
        assert got == expected, ops
        key = expected[0] if expected[0] == "written" else expected[1]
        seen[key] = seen.get(key, 0) + 1

    check()
    # The examples reached both outcomes and several refusals (a test that only ever
    # refused would prove little). How many are written varies from run to run (9 to 35 of
    # the 150 in six runs): 10 as the floor failed one run in several.
    assert seen.get("written", 0) >= 3, seen
    assert len(seen) >= 4, seen


async def _both(
    connection: asyncpg.Connection, reference: str, world: World, arguments: list[Any]
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """0015's outcome and 0023's, in one transaction rolled back."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(reference)
        expected = await _outcome(connection, "pg_temp.apply_0015", world, arguments)
        got = await _outcome(connection, "tanso_apply_deferred", world, arguments)
    finally:
        await transaction.rollback()
    return expected, got


def test_the_holds_are_looked_up_by_key_however_much_the_table_grew(database_url: str) -> None:
    """A PL/pgSQL plan is made once per connection: made while ``ledger_holds`` was small, a
    plan that scans it would scan it whole on every later call (0023's first version did:
    7.2 ms a call once the table held 30,000 rows). On one connection: a first call on the
    small table, then 3,000 more holds, then a call that must not scan the table."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        engine = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0)
        connection = runner.run(asyncpg.connect(libpq_url(database_url)))
        try:
            runner.run(_scans_after_growth(create_sessionmaker(engine), connection))
        finally:
            runner.run(connection.close())
            runner.run(truncate(engine))
            runner.run(engine.dispose())


async def _scans_after_growth(sessions: SessionMaker, connection: asyncpg.Connection) -> None:
    async with sessions() as session:
        world = await _make_world(session)
    # Reserve for A and B, take from A's active hold, pay B: every kind, all valid.
    ops: list[tuple[Any, ...]] = [
        ("reserve", 0, 0, 50, None, None, "order:x", False),
        ("reserve", 1, 1, 60, None, None, "order:y", False),
        ("take", 3, None, 40, None, "B available", "trade:1", False),
        ("take", 0, None, None, None, None, None, True),
    ]
    call = _CALL.format("tanso_apply_deferred")

    async def once() -> int:
        """The call's sequential scans of ledger_holds (this transaction's counters)."""
        transaction = connection.transaction()
        await transaction.start()
        try:
            scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'ledger_holds'"
            before = await connection.fetchval(scans)
            await connection.execute(call, *_arguments(world, ops))
            return int(await connection.fetchval(scans)) - int(before)
        finally:
            await transaction.rollback()

    await once()  # the plans are made here, on a small table
    await connection.execute(
        "INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,"
        "                          reference, created_at, updated_at)"
        " SELECT gen_random_uuid(), $1, $2, 1, 0, 'closed', 'grown', now(), now()"
        "   FROM generate_series(1, 3000)",
        world.orgs[0],
        CASH,
    )
    assert await once() == 0
