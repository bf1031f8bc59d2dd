"""The order group's lock call reads the book's resting orders, not the product's every order.

``market_lock_product_and_book`` is PL/pgSQL: each of its statements is planned once per
connection and kept. Planned while the product had a few orders, the book's read must not
become one that reads every order the product ever had, or every credit hold (they grow with
every trade): here the call is planned on a book of two orders (one a sell, whose credit hold
the call reads), 3,000 filled sell orders with their spent holds are added, and the call may
read only a handful of rows of those tables. Nor, given a group's reach (migration 0028), may
it read the orders resting outside it: 2,000 are added, and it reads the same handful.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from app.db.url import libpq_url
from app.ledger.service import credit_asset
from app.market import repository
from tests.market.helpers import market, order
from tests.plans import forget_statistics

CLOSED = 3_000
READ_AT_MOST = 30  # the resting orders and a few index pages' worth

_READS = (
    "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0)"
    " FROM pg_stat_xact_user_tables"
    " WHERE relname IN ('market_orders', 'market_order_credit_holds', 'ledger_holds')"
)
# The group's lock call, and the one-by-one path's read of the same book.
_CALLS = {
    "market_lock_product_and_book": (
        "SELECT count(*) FROM market_lock_product_and_book($1, $2::uuid[])"
    ),
    "open_orders_with_credit_holds": "SELECT count(*) FROM ("
    + str(repository._OPEN_ORDERS_WITH_CREDIT_HOLDS)
    .replace(":product_id", "$1")
    .replace(":asks_to", str(repository._ALL_ASKS))  # the whole book
    .replace(":bids_from", str(repository._ALL_BIDS))
    .replace("ORDER BY o.sequence", "")
    + ") AS book WHERE $2::uuid[] IS NOT NULL",
}


@asynccontextmanager
async def _without_statistics(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction (rolled back at the end) in which the book's tables
    have no statistics, as on a new database: the plans it makes are made on a small book."""
    connection = await asyncpg.connect(libpq_url(database_url))
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            await forget_statistics(
                connection, ["market_orders", "market_order_credit_holds", "ledger_holds"]
            )
            yield connection
        finally:
            await transaction.rollback()
    finally:
        await connection.close()


async def test_the_book_is_read_from_the_resting_orders_only(
    client: httpx.AsyncClient, database_url: str
) -> None:
    m = await market(client, sellers=2, buyers=2)
    for side, org, price in [("sell", m.sellers[0], 1_010), ("buy", m.buyers[0], 990)]:
        r = await order(client, org, m, side, price, 1)
        assert r.status_code == 201, r.text
    product = uuid.UUID(m.product["id"])
    batch = uuid.UUID(m.batch_id)
    seller = uuid.UUID(m.sellers[1].id)
    async with _without_statistics(database_url) as connection:
        for _ in range(6):  # planned on the small book (generic plans after five runs)
            for call in _CALLS.values():
                assert await connection.fetchval(call, product, []) == 2
        # Filled sell orders, each with its spent credit hold.
        await connection.execute(
            "WITH h AS (INSERT INTO ledger_holds (id, organization_id, asset, amount,"
            "             remaining, status, reference, created_at, updated_at)"
            "           SELECT gen_random_uuid(), $2, $4, 1, 0, 'closed', 'grown', now(),"
            "                  now() FROM generate_series(1, $3::int) RETURNING id),"
            "     o AS (INSERT INTO market_orders (id, product_id, organization_id, side,"
            "             type, price, quantity, filled_quantity, filled_amount, status,"
            "             time_in_force, post_only, created_at, updated_at)"
            "           SELECT gen_random_uuid(), $1, $2, 'sell', 'limit', 1000, 1, 1, 1000,"
            "                  'filled', 'gtc', false, now(), now()"
            "             FROM generate_series(1, $3::int) RETURNING id)"
            " INSERT INTO market_order_credit_holds (order_id, position, batch_id, hold_id,"
            "                                        quantity)"
            " SELECT o.id, 0, $5, h.id, 1"
            "   FROM (SELECT id, row_number() OVER () AS n FROM o) o"
            "   JOIN (SELECT id, row_number() OVER () AS n FROM h) h USING (n)",
            product,
            seller,
            CLOSED,
            credit_asset(batch),
            batch,
        )
        read: dict[str, int] = {}
        for name, call in _CALLS.items():
            before = int(await connection.fetchval(_READS))
            assert await connection.fetchval(call, product, []) == 2
            read[name] = int(await connection.fetchval(_READS)) - before
    assert max(read.values()) <= READ_AT_MOST, read


RESTING_AWAY = 2_000


async def test_a_groups_lock_call_reads_its_reach_only_however_deep_the_book(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """Planned on a book of two orders, the call with a reach (migration 0028), and the read of
    an order placed alone, read only the orders within it once 2,000 more rest outside it
    (``ix_market_orders_book``: two ranges by side and price); the sellers the call reads
    blocks for are those within it."""
    m = await market(client, sellers=2, buyers=2)
    for side, org, price in [("sell", m.sellers[0], 1_010), ("buy", m.buyers[0], 990)]:
        r = await order(client, org, m, side, price, 1)
        assert r.status_code == 201, r.text
    product = uuid.UUID(m.product["id"])
    away = uuid.UUID(m.sellers[1].id)
    calls = {  # each with what it returns: (orders, holds whose blocks it read)
        "market_lock_product_and_book": (
            "SELECT count(book_order), max(cardinality(blocks_of_holds))"
            " FROM market_lock_product_and_book($1, '{}'::uuid[], false, 1010, false, 990)"
        ),
        # Only what a quantity of 1 a side can fill (migration 0029).
        "market_lock_product_and_book, needs": (
            "SELECT count(book_order), max(cardinality(blocks_of_holds))"
            " FROM market_lock_product_and_book($1, '{}'::uuid[], false, 1010, false, 990, 1, 1)"
        ),
        # The same reach read by an order placed alone (``open_orders_with_credit_holds``).
        "open_orders_with_credit_holds": "SELECT count(*), 1 FROM ("
        + str(repository._OPEN_ORDERS_WITH_CREDIT_HOLDS)
        .replace(":product_id", "$1")
        .replace(":asks_to", "1010")
        .replace(":bids_from", "990")
        .replace("ORDER BY o.sequence", "")
        + ") AS book",
    }
    async with _without_statistics(database_url) as connection:
        for _ in range(6):  # planned on the small book (generic plans after five runs)
            for call in calls.values():
                assert tuple(await connection.fetchrow(call, product)) == (2, 1)
        await connection.execute(
            "INSERT INTO market_orders (id, product_id, organization_id, side, type, price,"
            "  quantity, filled_quantity, filled_amount, status, time_in_force, post_only,"
            "  created_at, updated_at)"
            " SELECT gen_random_uuid(), $1, $2, 'sell', 'limit', 1100 + g % 50, 1, 0, 0,"
            "        'open', 'gtc', false, now(), now()"
            "   FROM generate_series(1, $3::int) AS g",
            product,
            away,
            RESTING_AWAY,
        )
        read: dict[str, int] = {}
        for name, call in calls.items():
            before = int(await connection.fetchval(_READS))
            assert tuple(await connection.fetchrow(call, product)) == (2, 1)
            read[name] = int(await connection.fetchval(_READS)) - before
    assert max(read.values()) <= READ_AT_MOST, read
