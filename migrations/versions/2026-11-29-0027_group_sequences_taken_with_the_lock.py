"""A group's order sequences are taken with the product lock, so its write call can commit too.

A group of orders (``app.market.group``) holds its product's lock from the lock call to its
commit. Its write call (``market_apply_group``, 0017 and 0018) answered with each new
order's ``sequence`` (an identity, taken on insert), so the call had to be a prepared
statement whose rows come back, and the COMMIT a second round trip under the lock. Sent
with its COMMIT as one simple-query message instead, the call gives no rows back, so the
group needs its orders' sequences beforehand:

- ``market_reserve_order_sequences(n)``: ``n`` values of the orders' identity, rising. The
  group's lock call takes them after the product lock (``app.market.repository``), so they
  are above every order placed before, exactly as the inserts' own would be; a group that
  uses fewer leaves a gap, as a rolled-back insert does (sequences order orders, they do not
  count them).
- ``market_apply_group`` inserts the new orders with the sequences their rows carry, when
  they carry them (the first row says); otherwise it inserts exactly as before, taking the
  identity's next values in arrival order and answering with them.

Written by hand (no table or column changes: ``alembic check`` is unaffected); the downgrade
restores 0018's function and drops the new one.

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-29 12:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INSERT_0017 = """        RETURN QUERY
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
"""

_INSERT_0027 = (
    """        IF (p_orders -> 0 ->> 'sequence') IS NOT NULL THEN
            -- Sequences taken with the lock (market_reserve_order_sequences).
            RETURN QUERY
            WITH ins AS (
                INSERT INTO market_orders (sequence, id, product_id, organization_id, side,
                                           type, price, quantity, filled_quantity,
                                           filled_amount, status, cancel_reason,
                                           time_in_force, post_only, expires_at,
                                           client_order_id, cash_hold_id, created_at,
                                           updated_at)
                SELECT r.sequence, r.id, r.product_id, r.organization_id, r.side, r.type,
                       r.price, r.quantity, r.filled_quantity, r.filled_amount, r.status,
                       r.cancel_reason, r.time_in_force, r.post_only, r.expires_at,
                       r.client_order_id, r.cash_hold_id, r.created_at, r.updated_at
                  FROM jsonb_populate_recordset(NULL::market_orders, p_orders) AS r
                RETURNING market_orders.id, market_orders.sequence
            )
            SELECT ins.id, ins.sequence FROM ins;
        ELSE
"""
    + _INSERT_0017.replace("\n        ", "\n            ").replace(
        "        RETURN", "            RETURN", 1
    )
    + """        END IF;
"""
)

# The identity's sequence looked up once, not once per value (64 look-ups cost 0.2 ms under
# the product lock).
RESERVE = """
    CREATE FUNCTION market_reserve_order_sequences(p_count integer) RETURNS bigint[]
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v_sequence regclass := pg_get_serial_sequence('market_orders', 'sequence')::regclass;
    BEGIN
        RETURN coalesce(
            (SELECT array_agg(nextval(v_sequence) ORDER BY i) FROM generate_series(1, p_count) i),
            '{}');
    END
    $$
"""


def _module_0018():  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name("2026-11-29-0018_group_fills_by_index.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0018_for_0027", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_0018() -> str:
    """0018's ``market_apply_group``, as ``CREATE OR REPLACE``."""
    module = _module_0018()
    [create] = module._statements_0017()
    return str(module._replaced(create))


def _function_0027() -> str:
    body = _function_0018()
    if body.count(_INSERT_0017) != 1:
        raise RuntimeError("0018's market_apply_group does not insert the orders as expected")
    return body.replace(_INSERT_0017, _INSERT_0027)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(RESERVE)
    op.execute(_function_0027())


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_function_0018())
    op.execute("DROP FUNCTION market_reserve_order_sequences(integer)")
