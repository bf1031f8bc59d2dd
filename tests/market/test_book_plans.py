"""The order group's lock call reads the book's resting orders, not the product's every order.

``market_lock_product_and_book`` is PL/pgSQL: each of its statements is planned once per
connection and kept. Planned while the product had a few orders, the book's read must not
become one that reads every order the product ever had (its filled and cancelled ones grow
with every trade): here the call is planned on a book of a few orders, 3,000 filled orders
are added, and the call may read only a handful of ``market_orders`` rows.
"""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from app.db.url import libpq_url
from tests.market.helpers import market, order

CLOSED = 3_000
READ_AT_MOST = 30  # the resting orders and a few index pages' worth

_READS = (
    "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0)"
    " FROM pg_stat_xact_user_tables WHERE relname = 'market_orders'"
)
_CALL = "SELECT count(*) FROM market_lock_product_and_book($1, $2::uuid[])"


async def test_the_book_is_read_from_the_resting_orders_only(
    client: httpx.AsyncClient, database_url: str
) -> None:
    m = await market(client, sellers=2, buyers=2)
    for side, org, price in [("sell", m.sellers[0], 1_010), ("buy", m.buyers[0], 990)]:
        r = await order(client, org, m, side, price, 1)
        assert r.status_code == 201, r.text
    product = uuid.UUID(m.product["id"])
    seller = uuid.UUID(m.sellers[1].id)
    connection = await asyncpg.connect(libpq_url(database_url))
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            for _ in range(6):  # planned on the small book (generic plans after five runs)
                assert await connection.fetchval(_CALL, product, []) == 2
            await connection.execute(
                "INSERT INTO market_orders (id, product_id, organization_id, side, type, price,"
                "  quantity, filled_quantity, filled_amount, status, time_in_force, post_only,"
                "  created_at, updated_at)"
                " SELECT gen_random_uuid(), $1, $2, 'sell', 'limit', 1000, 1, 1, 1000,"
                "        'filled', 'gtc', false, now(), now()"
                "   FROM generate_series(1, $3::int)",
                product,
                seller,
                CLOSED,
            )
            before = int(await connection.fetchval(_READS))
            assert await connection.fetchval(_CALL, product, []) == 2
            read = int(await connection.fetchval(_READS)) - before
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    assert read <= READ_AT_MOST, f"the book's read took {read} rows of market_orders"
