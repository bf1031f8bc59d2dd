"""A group's lock call reads, of each side, only the orders its quantity can fill, and of the
serial blocks only those its operations take from.

The lock call (``market_lock_product_and_book``, 0028) read every resting order within the
reach of the group's prices. At the price where most orders meet, a level can hold hundreds
of orders (``bench/orders``' own level reached 140 in a run, 222 in another), and every group
read, sent and rebuilt all of them, though it can fill only as many as its orders' quantity.

Matching takes the other side in priority order (best price, then sequence), and a group's
orders on one side can take from the other side at most their own total quantity. So the
call now takes that quantity per side (``p_asks_need``: what the group's buys may take;
``p_bids_need``: its sells'), and of the orders within the reach it reads, in priority order,
those whose open quantity before them is below it; the rest of the reach it counts instead,
per price level (open quantity and orders), in four arrays on the first row. The engine
holds them behind the orders read (``OrderBook.restore(hidden=…)``), so the levels'
aggregates, and their ``level`` events, stay exact; if matching ever needed one of them, it
raises and the group is placed one order at a time. A NULL quantity reads the whole reach,
as before.

The live blocks the call reads for the registry's copy (``app.offsets.repository._LiveCopy``)
were every block of the queued sellers and of the sellers of the sells read: a seller with
many resting sells has a held block for each, and with ``bench/orders --spread 5`` reading
them (and the blocks touching each) took 10 ms of every lock call. A group's operations take
only from a seller's active blocks (a new sell's hold) or from a hold's blocks (a fill's
delivery, a release), and merge only with the blocks touching those: so a new function,
``offset_live_copy_of(batch, holders, holds)``, reads the holders' active blocks, the holds'
blocks, and every live block touching one of them; the call reads the queued sellers' active
blocks and the blocks of the credit holds of the sells it read, and returns the holds too
(``blocks_of_holds``). ``offset_live_copy`` stays (unused by the application).

Written by hand (no table or column changes: ``alembic check`` is unaffected); the downgrade
restores 0028's function and drops the new one.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-29 15:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "o.product_id = p_id AND (o.status = 'open' OR o.status = 'partially_filled')"


def _module(name: str):  # type: ignore[no-untyped-def]
    """An earlier migration's module (its SQL pieces, and its function for the downgrade)."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"tanso_migration_{path.stem}_for_0029", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A holder's live blocks as 0025 looks them up (in the live-blocks B-tree index only).
_0025 = _module("2026-11-29-0025_live_blocks_by_holder.py")
_COLUMNS = _0025._COLUMNS


# What a group's operations on the serial blocks can touch: the active blocks of the holders
# that will hold credits (a new sell order), the blocks of the holds it may deliver from or
# release (the resting sells it reads), and every live block touching one of them, whoever
# holds it (all a delivery, a release or a hold can merge with). One look-up per holder in
# the live-blocks index (the holds' holders found by the holds' keys, one look-up each: as
# ``id = ANY (…)`` a plan made on small statistics scanned every hold), each filtered to its
# active blocks or the holds' blocks; the touching ones as ``offset_live_copy`` finds them.
LIVE_COPY_OF = f"""
    CREATE FUNCTION offset_live_copy_of(p_batch uuid, p_holders uuid[], p_holds uuid[])
    RETURNS SETOF offset_live_block
    LANGUAGE sql STABLE
    AS $$
        WITH m AS MATERIALIZED (
            SELECT b.*
              FROM (SELECT DISTINCT unnest(p_holders || ARRAY(
                        SELECT l.organization_id FROM unnest(p_holds) AS x (id)
                         CROSS JOIN LATERAL (
                               SELECT organization_id FROM ledger_holds
                                WHERE id = x.id OFFSET 0) l)) AS id) h
             CROSS JOIN LATERAL (
                   SELECT {_COLUMNS} FROM offset_blocks
                    WHERE {_0025._of_holder("p_batch", "h.id")}
                      AND ((state = 'active' AND h.id = ANY (p_holders))
                           OR hold_id = ANY (p_holds)) OFFSET 0) b
        )
        SELECT {_COLUMNS}, true FROM m
        UNION ALL
        SELECT DISTINCT o.id, o.batch_id, o.holder_organization_id, o.serial_start,
               o.serial_end, o.state, o.parent_ids, o.hold_id, o.retirement_id, false
          FROM m CROSS JOIN LATERAL (
                SELECT {_COLUMNS} FROM offset_blocks
                 WHERE batch_id = p_batch AND closed_at IS NULL
                   AND int8range(serial_start, serial_end, '[]')
                       && int8range(m.serial_start - 1, m.serial_end + 1, '[]') OFFSET 0) o
         WHERE o.id <> ALL (ARRAY(SELECT id FROM m))
    $$
"""


def _side(side: str, bound: str, priority: str, need: str, into: str) -> str:
    """One side's read: the orders within the reach in priority order, those with less than
    ``need`` open before them kept whole (``into``'s first variable), the others counted per
    price level (the other three). The window runs over the few columns it needs; only the
    orders kept are read whole, by key (a row value made for every order in reach cost more
    than the window itself)."""
    return f"""
        WITH r AS (
            SELECT o.id, o.price, o.quantity - o.filled_quantity AS open,
                   {need} IS NULL
                   OR coalesce(sum(o.quantity - o.filled_quantity)
                                 OVER (ORDER BY {priority}
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                               0) < {need} AS shown
              FROM market_orders o
             WHERE {_OPEN} AND o.side = '{side}' AND {bound}
        )
        SELECT (SELECT coalesce(array_agg(k.o), '{{}}')
                  FROM r CROSS JOIN LATERAL (
                       SELECT o FROM market_orders o WHERE o.id = r.id OFFSET 0) k
                 WHERE r.shown),
               h.prices, h.quantities, h.counts
          INTO {into}
          FROM (SELECT coalesce(array_agg(g.price ORDER BY g.price), '{{}}') AS prices,
                       coalesce(array_agg(g.q ORDER BY g.price), '{{}}') AS quantities,
                       coalesce(array_agg(g.n ORDER BY g.price), '{{}}') AS counts
                  FROM (SELECT r.price, sum(r.open) AS q, count(*) AS n
                          FROM r WHERE NOT r.shown GROUP BY r.price) g) h;"""


_SELLS = _side(
    "sell",
    "o.price <= v_asks_to",
    "o.price, o.sequence",
    "p_asks_need",
    "v_sells, v_ask_prices, v_ask_quantities, v_ask_counts",
)
_BUYS = _side(
    "buy",
    "o.price >= v_bids_from",
    "o.price DESC, o.sequence",
    "p_bids_need",
    "v_buys, v_bid_prices, v_bid_quantities, v_bid_counts",
)

UP = [
    LIVE_COPY_OF,
    "DROP FUNCTION market_lock_product_and_book(uuid, uuid[], boolean, bigint, boolean, bigint)",
    f"""
    CREATE FUNCTION market_lock_product_and_book(
        p_id uuid, p_holders uuid[],
        p_asks_all boolean DEFAULT true, p_asks_to bigint DEFAULT NULL,
        p_bids_all boolean DEFAULT true, p_bids_from bigint DEFAULT NULL,
        p_asks_need bigint DEFAULT NULL, p_bids_need bigint DEFAULT NULL
    )
    RETURNS TABLE (
        product market_products, book_order market_orders, hold_positions smallint[],
        hold_batches uuid[], hold_ids uuid[], hold_remaining bigint[],
        blocks offset_live_block[], blocks_of uuid[], blocks_of_holds uuid[],
        hidden_sides text[], hidden_prices bigint[], hidden_quantities bigint[],
        hidden_counts bigint[]
    )
    LANGUAGE plpgsql
    AS $$
    DECLARE
        v_batch uuid;
        v_holds uuid[];
        v_blocks offset_live_block[];
        v_read boolean := false;
        v_asks_to bigint := CASE WHEN p_asks_all THEN 9223372036854775807 ELSE p_asks_to END;
        v_bids_from bigint := CASE WHEN p_bids_all THEN 0 ELSE p_bids_from END;
        v_sells market_orders[];
        v_buys market_orders[];
        v_ask_prices bigint[];
        v_ask_quantities bigint[];
        v_ask_counts bigint[];
        v_bid_prices bigint[];
        v_bid_quantities bigint[];
        v_bid_counts bigint[];
    BEGIN
        PERFORM market_lock_product_and_batch(p_id);
        {_SELLS}
        {_BUYS}
        SELECT batch_id INTO v_batch FROM market_products WHERE id = p_id;
        -- (No holders at all, NULL: no live blocks; the caller does not defer its writes.)
        IF v_batch IS NOT NULL AND p_holders IS NOT NULL THEN
            -- The credit holds of the sells read (those with something left), and the queued
            -- sellers' active blocks: what the group's fills and new sells can touch.
            -- (Each looked up by its key: LATERAL with OFFSET 0, as in the book's read.)
            v_holds := ARRAY(
                SELECT c.hold_id
                  FROM unnest(v_sells) AS o
                 CROSS JOIN LATERAL (
                       SELECT hold_id FROM market_order_credit_holds
                        WHERE order_id = (o).id OFFSET 0) c
                 CROSS JOIN LATERAL (
                       SELECT remaining, status FROM ledger_holds
                        WHERE id = c.hold_id OFFSET 0) l
                 WHERE l.status = 'active' AND l.remaining > 0);
            IF cardinality(p_holders) <= 32 AND cardinality(v_holds) <= 256 THEN
                v_read := true;
                v_blocks := ARRAY(
                    SELECT c FROM offset_live_copy_of(v_batch, p_holders, v_holds) c);
            END IF;
        END IF;
        RETURN QUERY
        SELECT p, b.o, h.hold_positions, h.hold_batches, h.hold_ids, h.hold_remaining,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1 AND v_read
                    THEN v_blocks END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1 AND v_read
                    THEN p_holders END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1 AND v_read
                    THEN v_holds END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1
                    THEN array_fill('sell'::text, ARRAY[cardinality(v_ask_prices)])
                         || array_fill('buy'::text, ARRAY[cardinality(v_bid_prices)]) END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1
                    THEN v_ask_prices || v_bid_prices END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1
                    THEN v_ask_quantities || v_bid_quantities END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1
                    THEN v_ask_counts || v_bid_counts END
          FROM market_products p
          LEFT JOIN (SELECT o FROM unnest(v_sells || v_buys) AS o) b ON true
          LEFT JOIN LATERAL (
                SELECT array_agg(c.position ORDER BY c.position) AS hold_positions,
                       array_agg(c.batch_id ORDER BY c.position) AS hold_batches,
                       array_agg(c.hold_id ORDER BY c.position) AS hold_ids,
                       array_agg(l.remaining ORDER BY c.position) AS hold_remaining
                  FROM market_order_credit_holds c CROSS JOIN LATERAL (
                       SELECT remaining, status FROM ledger_holds
                        WHERE id = c.hold_id OFFSET 0) l
                 WHERE c.order_id = (b.o).id AND (b.o).side = 'sell'
                   AND l.status = 'active' AND l.remaining > 0
          ) h ON true
         WHERE p.id = p_id
         ORDER BY (b.o).sequence;
    END
    $$
    """,
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "DROP FUNCTION market_lock_product_and_book(uuid, uuid[], boolean, bigint, boolean,"
        " bigint, bigint, bigint)"
    )
    [create] = [
        s
        for s in _module("2026-11-29-0028_group_reads_the_reachable_book.py").UP
        if "CREATE FUNCTION" in s
    ]
    op.execute(create)
    op.execute("DROP FUNCTION offset_live_copy_of(uuid, uuid[], uuid[])")
