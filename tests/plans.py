"""For tests of query plans: a table's statistics forgotten, inside a transaction.

A plan test plans a statement while a table is small, grows the table and counts the rows the
statement then reads. What the planner knew of the table when it planned decides the plan:
nothing (a new database, never analyzed: the planner assumes at least ten pages) or figures
from an ANALYZE of the small table (autovacuum may have run one on the test database, after
earlier tests, or not). The second state makes almost any plan of a one-page table a
sequential scan, and no wording of a query avoids that; it lasts until the next ANALYZE. So a
plan test starts from the first state, the one a new deployment and ``bench/`` start from:
this removes the tables' statistics in the caller's transaction, which rolls them back.
Needs a superuser (the embedded server's and CI's); skips the test otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import pytest


async def forget_statistics(connection: asyncpg.Connection, tables: Sequence[str]) -> None:
    """As if ``tables`` had never been analyzed, until the transaction ends."""
    if not await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("forgetting a table's statistics needs a superuser")
    if not connection.is_in_transaction():
        raise RuntimeError("forget_statistics runs in a transaction (it is rolled back)")
    oids = [await connection.fetchval("SELECT $1::regclass::oid", table) for table in tables]
    await connection.execute("DELETE FROM pg_statistic WHERE starelid = ANY($1::oid[])", oids)
    # The tables' sizes and their indexes' (the planner costs an index by its own).
    await connection.execute(
        "UPDATE pg_class SET reltuples = -1, relpages = 0, relallvisible = 0"
        " WHERE oid = ANY($1::oid[])"
        "    OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = ANY($1::oid[]))",
        oids,
    )
