"""``market_apply_group``: a group of orders' every write, and its NOTIFY, in one call.

A group of orders on a batch product (``app.market.group``) sent its ledger and serial-block
writes in one call (``tanso_apply_deferred``, 0015), then flushed its order, credit-hold and
trade rows and the resting orders' fills through the ORM (four statements), then wrote the
product's last price and sent its NOTIFY (one more): five round trips under the product lock,
each also waiting for whatever else the worker's event loop had ready. This function takes
all of it at once, in the order the flush wrote it:

1. ``tanso_apply_deferred`` with the same 23 arguments (holds, entries, blocks);
2. the new orders, inserted in arrival order, so that their ``sequence`` (an identity) rises
   in that order as the flush's would; each one's id and sequence are returned;
3. the orders' credit holds, then the trades (both refer to the orders);
4. the resting orders' new fills and statuses;
5. the product's last trade price, when it traded, and the NOTIFY of the group's events.

Rows come as JSON arrays of objects keyed by column (``jsonb_populate_recordset`` on the
table's own row type, so each value is cast to its column's type); a constraint refusing a
row (a duplicate ``client_order_id``) raises as the flush would, and the caller rolls the
group back. Written by hand (no table or column changes: ``alembic check`` is unaffected).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29 02:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFERRED_ARGUMENTS = (
    "text[], uuid[], uuid[], uuid[], text[], bigint[], uuid[], uuid[], text[], text[], boolean[],"
    " timestamptz, uuid[], uuid[], uuid[], uuid[], bigint[], bigint[], text[], uuid[], uuid[],"
    " text[], boolean[]"
)

UP = [
    """
    CREATE FUNCTION market_apply_group(
        p_kinds text[], p_holds uuid[], p_entries uuid[], p_orgs uuid[], p_assets text[],
        p_amounts bigint[], p_sources uuid[], p_destinations uuid[], p_entry_kinds text[],
        p_references text[], p_rest_only boolean[],
        p_now timestamptz, p_closed uuid[], p_ids uuid[], p_batches uuid[], p_holders uuid[],
        p_starts bigint[], p_ends bigint[], p_states text[], p_block_holds uuid[],
        p_retirements uuid[], p_parents text[], p_gone boolean[],
        p_orders jsonb, p_credit_holds jsonb, p_trades jsonb, p_fills jsonb,
        p_product uuid, p_last_trade_price bigint, p_product_updated_at timestamptz,
        p_channel text, p_events text[]
    ) RETURNS TABLE (order_id uuid, order_sequence bigint)
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    BEGIN
        PERFORM tanso_apply_deferred(
            p_kinds, p_holds, p_entries, p_orgs, p_assets, p_amounts, p_sources,
            p_destinations, p_entry_kinds, p_references, p_rest_only, p_now, p_closed, p_ids,
            p_batches, p_holders, p_starts, p_ends, p_states, p_block_holds, p_retirements,
            p_parents, p_gone);
        RETURN QUERY
        WITH ins AS (
            INSERT INTO market_orders (id, product_id, organization_id, side, type, price,
                                       quantity, filled_quantity, filled_amount, status,
                                       cancel_reason, time_in_force, post_only, expires_at,
                                       client_order_id, cash_hold_id, created_at, updated_at)
            SELECT r.id, r.product_id, r.organization_id, r.side, r.type, r.price, r.quantity,
                   r.filled_quantity, r.filled_amount, r.status, r.cancel_reason,
                   r.time_in_force, r.post_only, r.expires_at, r.client_order_id,
                   r.cash_hold_id, r.created_at, r.updated_at
              FROM jsonb_populate_recordset(NULL::market_orders, p_orders)
                   WITH ORDINALITY AS r
             ORDER BY r.ordinality
            RETURNING market_orders.id, market_orders.sequence
        )
        SELECT ins.id, ins.sequence FROM ins;
        INSERT INTO market_order_credit_holds (order_id, position, batch_id, hold_id, quantity)
        SELECT r.order_id, r.position, r.batch_id, r.hold_id, r.quantity
          FROM jsonb_populate_recordset(NULL::market_order_credit_holds, p_credit_holds) AS r;
        INSERT INTO market_trades (id, product_id, batch_id, price, quantity, taker_side,
                                   buy_order_id, sell_order_id, buyer_organization_id,
                                   seller_organization_id, serial_ranges, buyer_fee,
                                   seller_fee, executed_at)
        SELECT r.id, r.product_id, r.batch_id, r.price, r.quantity, r.taker_side,
               r.buy_order_id, r.sell_order_id, r.buyer_organization_id,
               r.seller_organization_id, r.serial_ranges, r.buyer_fee, r.seller_fee,
               r.executed_at
          FROM jsonb_populate_recordset(NULL::market_trades, p_trades) AS r;
        UPDATE market_orders o
           SET filled_quantity = r.filled_quantity, filled_amount = r.filled_amount,
               status = r.status, cancel_reason = r.cancel_reason, updated_at = r.updated_at
          FROM jsonb_populate_recordset(NULL::market_orders, p_fills) AS r
         WHERE o.id = r.id;
        IF p_last_trade_price IS NOT NULL THEN
            UPDATE market_products
               SET last_trade_price = p_last_trade_price, updated_at = p_product_updated_at
             WHERE id = p_product;
        END IF;
        PERFORM pg_notify(p_channel, e) FROM unnest(p_events) AS e;
    END
    $$
    """,
]

DOWN = [
    f"DROP FUNCTION market_apply_group({DEFERRED_ARGUMENTS}, jsonb, jsonb, jsonb, jsonb, uuid,"
    " bigint, timestamptz, text, text[])",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
