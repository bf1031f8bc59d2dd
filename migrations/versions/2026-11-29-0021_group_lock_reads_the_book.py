"""``market_lock_product_and_book``: the order group's lock call also reads the book.

A group of orders (``app.market.group``) took the product lock (with its batch, 0020) and
then read the book, the resting orders with their sell orders' credit holds, in a second
round trip (0.3–0.6 ms of wall time and about 0.15 ms of the caller's CPU on this machine
kind, more under load). This function takes the same locks (``market_lock_product_and_batch``)
and then returns the product with its book, one row per resting order in time priority
(the product alone, with a NULL order, when the book is empty): the product and the order
as whole rows, and each sell order's active credit holds with something left as parallel
arrays in delivery order, as ``OrderRepository.open_orders_with_credit_holds`` reads them.
Its query runs after the locks, so it sees what the previous holder committed.

Written by hand (no table or column changes: ``alembic check`` is unaffected).

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-29 06:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The book: the product, each resting order in time priority (a NULL order when there is
# none), and each sell order's active credit holds with something left (also read by 0022).
BOOK = """
          FROM market_products p
          LEFT JOIN market_orders o
                 ON o.product_id = p.id
                AND (o.status = 'open' OR o.status = 'partially_filled')
          LEFT JOIN LATERAL (
                SELECT array_agg(c.position ORDER BY c.position) AS hold_positions,
                       array_agg(c.batch_id ORDER BY c.position) AS hold_batches,
                       array_agg(c.hold_id ORDER BY c.position) AS hold_ids,
                       array_agg(l.remaining ORDER BY c.position) AS hold_remaining
                  FROM market_order_credit_holds c JOIN ledger_holds l ON l.id = c.hold_id
                 WHERE c.order_id = o.id AND o.side = 'sell'
                   AND l.status = 'active' AND l.remaining > 0
          ) h ON true
         WHERE p.id = p_id
         ORDER BY o.sequence"""

UP = f"""
    CREATE FUNCTION market_lock_product_and_book(p_id uuid)
    RETURNS TABLE (
        product market_products, book_order market_orders, hold_positions smallint[],
        hold_batches uuid[], hold_ids uuid[], hold_remaining bigint[]
    )
    LANGUAGE plpgsql
    AS $$
    BEGIN
        PERFORM market_lock_product_and_batch(p_id);
        RETURN QUERY
        SELECT p, o, h.hold_positions, h.hold_batches, h.hold_ids, h.hold_remaining{BOOK};
    END
    $$
"""

DOWN = "DROP FUNCTION market_lock_product_and_book(uuid)"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(UP)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(DOWN)
