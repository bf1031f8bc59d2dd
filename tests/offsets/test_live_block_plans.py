"""The look-ups of one holder's live blocks in a batch read that holder's blocks, not the batch's.

The exclusion constraint's GiST index on (batch, serial range) serves ``batch_id = x`` too.
Without statistics (a new database, a table grown since its last ANALYZE, a new batch) the
planner rated it as good as the live-blocks index on (batch, holder, serial) for "this
holder's blocks in this batch", took it, and filtered the batch's every live block by holder:
5 ms a call with 1,900 live blocks in ``bench/orders`` (the order group's lock call reads its
sellers' blocks so), growing with every trade. And the check that a hold still has live
blocks, as a semi-join planned on a small table, read the batch's every live block. Here each
statement is planned on a batch of one block, the batch is then cut into 3,000 live blocks of
another holder, with no ANALYZE since, and each look-up, planned then or now, may read only a
handful of rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx

from app.db.url import libpq_url
from app.ledger.service import credit_asset
from app.offsets import repository
from tests.factories import create_org
from tests.offsets.helpers import new_batch
from tests.plans import forget_statistics

FRAGMENTS = 3_000
# Rows a look-up may read: the holder's blocks and those touching them, a few index pages.
READ_AT_MOST = 20

_READS = (
    "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0)"
    " FROM pg_stat_xact_user_tables WHERE relname = 'offset_blocks'"
)


async def _rows_read(connection: asyncpg.Connection, sql: str, args: Sequence[Any]) -> int:
    """The rows of ``offset_blocks`` one run of ``sql`` read (this transaction's counters)."""
    before = int(await connection.fetchval(_READS))
    await connection.fetch(sql, *args)
    return int(await connection.fetchval(_READS)) - before


def _numbered(sql: str) -> str:
    """A statement of the registry's (``:batch``, ``:holders``, ``:hold``) for asyncpg."""
    return sql.replace(":batch", "$1").replace(":holders", "$2").replace(":hold", "$3")


async def test_a_holders_blocks_are_looked_up_by_holder(
    client: httpx.AsyncClient, database_url: str
) -> None:
    owner = await create_org(client)
    other = await create_org(client)
    issued = await new_batch(client, owner, 10_000)
    batch = uuid.UUID(issued.batch["id"])
    first = int(issued.batch["serial_start"])
    owners = [uuid.UUID(owner.id)]
    statements = {
        # Migration 0022/0025's whole-holder copy (no longer called by the app), and 0029's
        # copy of the holders' active blocks and the holds' blocks (``_LiveCopy``).
        "offset_live_copy": "SELECT * FROM offset_live_copy($1, $2::uuid[], $3::uuid)",
        "offset_live_copy_of": repository._COPY_SQL.replace("$3::uuid[]", "ARRAY[$3::uuid]"),
        "the holders' blocks": _numbered(str(repository._LIVE_BLOCKS_OF_SQL)),
        "a delivery's blocks": _numbered(str(repository._DELIVERY_BLOCKS_SQL)),
    }
    connection = await asyncpg.connect(libpq_url(database_url))
    transaction = connection.transaction()
    await transaction.start()
    try:
        await forget_statistics(connection, ["offset_blocks", "ledger_holds"])
        # Each statement's plans made while the batch is one block (a prepared statement's
        # generic plan after five runs, as a pooled connection keeps it).
        for sql in statements.values():
            for _ in range(6):
                await connection.fetch(sql, batch, owners, None)
        # The owner's one block becomes 3,000 one-credit blocks of the other holder and the
        # owner's rest, held (a hold of its credits: what a delivery reads from); all of it
        # rolled back at the end.
        hold = await connection.fetchval(
            "INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,"
            "                          reference, created_at, updated_at)"
            " VALUES (gen_random_uuid(), $1, $2, 1, 1, 'active', 'test', now(), now())"
            " RETURNING id",
            uuid.UUID(owner.id),
            credit_asset(batch),
        )
        parent = await connection.fetchval(
            "UPDATE offset_blocks SET closed_at = now()"
            " WHERE batch_id = $1 AND closed_at IS NULL RETURNING id",
            batch,
        )
        await connection.execute(
            "INSERT INTO offset_blocks (id, batch_id, holder_organization_id, serial_start,"
            "                           serial_end, state, hold_id, parent_ids, created_at)"
            " SELECT gen_random_uuid(), $1::uuid, $2::uuid, s, s, 'active', NULL::uuid,"
            "        ARRAY[$3::uuid], now()"
            "   FROM generate_series($4::bigint, $4::bigint + $5::int - 1) AS s"
            " UNION ALL"
            " SELECT gen_random_uuid(), $1, $6::uuid, $4::bigint + $5, $7::bigint, 'held', $8::uuid,"
            "        ARRAY[$3::uuid], now()",
            batch,
            uuid.UUID(other.id),
            parent,
            first,
            FRAGMENTS,
            uuid.UUID(owner.id),
            int(issued.batch["serial_end"]),
            hold,
        )
        # Each statement as planned then, and planned now (the same text with a comment: a
        # new prepared statement), on the grown table without statistics.
        read = {
            (name, when): await _rows_read(connection, sql + comment, [batch, owners, hold])
            for name, sql in statements.items()
            for when, comment in [("small", ""), ("grown", "\n-- planned after the growth")]
        }
        assert max(read.values()) <= READ_AT_MOST, read
    finally:
        await transaction.rollback()
        await connection.close()
