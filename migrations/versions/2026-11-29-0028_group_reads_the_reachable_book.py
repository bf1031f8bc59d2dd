"""A group's lock call reads only the part of the book its orders can reach.

The lock call (``market_lock_product_and_book``, 0021, 0022 and 0026) read every resting order
of the product, with each sell order's credit holds, under the product lock, for every group,
and the worker then rebuilt the whole book from it: with 1,000 orders resting away from the
price, 16 ms in the database and about 50 ms in all a group (``bench/orders --depth``), and
throughput fell to a quarter.

A group's orders can only trade with the resting orders on the other side up to their limits,
and change their own side only at their own prices: so the call now takes the reach of the
group (``app.market.reach``, worked out by ``app.market.group`` from the orders queued when it
is sent) and reads only the sell orders priced at most ``p_asks_to`` and the buy orders priced
at least ``p_bids_from`` (every sell with ``p_asks_all``, every buy with ``p_bids_all``: a
market order has no limit), whole price levels, as two ranges of a new partial index of the
open orders by (product, side, price); the sellers whose live blocks it reads are those of the
orders it reads. Left out, the reach is the whole book, as before: the defaults
read everything.

The index is declared on the model too (``alembic check``); the downgrade drops it and
restores 0026's function.

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-29 13:10:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The open orders within the reach (resting orders always have a price), each side one range
# of the book's index (an OR of the two would be planned as a filter on every open order of
# the product); the bounds are made whole-side ones for ``p_asks_all`` and ``p_bids_all``, and
# a NULL bound reads nothing of its side.
_OPEN = "o.product_id = p_id AND (o.status = 'open' OR o.status = 'partially_filled')"
_SELLS = f"{_OPEN} AND o.side = 'sell' AND o.price <= v_asks_to"
_BUYS = f"{_OPEN} AND o.side = 'buy' AND o.price >= v_bids_from"

UP = [
    # The book by side and price: the reach is two ranges of it, whatever else rests.
    "CREATE INDEX ix_market_orders_book ON market_orders (product_id, side, price)"
    " WHERE status = 'open' OR status = 'partially_filled'",
    "DROP FUNCTION market_lock_product_and_book(uuid, uuid[])",
    f"""
    CREATE FUNCTION market_lock_product_and_book(
        p_id uuid, p_holders uuid[],
        p_asks_all boolean DEFAULT true, p_asks_to bigint DEFAULT NULL,
        p_bids_all boolean DEFAULT true, p_bids_from bigint DEFAULT NULL
    )
    RETURNS TABLE (
        product market_products, book_order market_orders, hold_positions smallint[],
        hold_batches uuid[], hold_ids uuid[], hold_remaining bigint[],
        blocks offset_live_block[], blocks_of uuid[]
    )
    LANGUAGE plpgsql
    AS $$
    DECLARE
        v_batch uuid;
        v_sellers uuid[];
        v_blocks offset_live_block[];
        v_asks_to bigint := CASE WHEN p_asks_all THEN 9223372036854775807 ELSE p_asks_to END;
        v_bids_from bigint := CASE WHEN p_bids_all THEN 0 ELSE p_bids_from END;
    BEGIN
        PERFORM market_lock_product_and_batch(p_id);
        SELECT batch_id INTO v_batch FROM market_products WHERE id = p_id;
        IF v_batch IS NOT NULL THEN
            SELECT array_agg(DISTINCT s) INTO v_sellers
              FROM (SELECT unnest(p_holders) AS s
                    UNION ALL
                    SELECT o.organization_id FROM market_orders o WHERE {_SELLS}) x;
            IF cardinality(v_sellers) > 32 THEN
                v_sellers := NULL;
            ELSIF v_sellers IS NOT NULL THEN
                v_blocks := ARRAY(SELECT c FROM offset_live_copy(v_batch, v_sellers, NULL) c);
            END IF;
        END IF;
        RETURN QUERY
        SELECT p, b.o, h.hold_positions, h.hold_batches, h.hold_ids, h.hold_remaining,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1 THEN v_blocks END,
               CASE WHEN row_number() OVER (ORDER BY (b.o).sequence) = 1 THEN v_sellers END
          FROM market_products p
          LEFT JOIN (SELECT o FROM market_orders o WHERE {_SELLS}
                     UNION ALL
                     SELECT o FROM market_orders o WHERE {_BUYS}) b ON true
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


def _function_0026() -> str:
    """0026's ``market_lock_product_and_book``, as ``CREATE OR REPLACE``."""
    path = Path(__file__).with_name("2026-11-29-0026_book_holds_by_key.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0026_for_0028", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._by_key())


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "DROP FUNCTION market_lock_product_and_book(uuid, uuid[], boolean, bigint, boolean, bigint)"
    )
    op.execute(_function_0026())
    op.execute("DROP INDEX ix_market_orders_book")
