"""The order group's batch and account locks taken in its other calls: one round trip fewer.

A group of orders on a batch product (``app.market.group``) made these round trips under the
product lock: ``BEGIN``, the product lock, the book, the batch and account locks, the sellers'
live blocks, the writes (``market_apply_group``) and ``COMMIT``. On this machine kind a round
trip costs 0.3–0.6 ms of wall time and about 0.15 ms of the caller's CPU even for
``SELECT 1``, and under load each waited for a busy event loop too (about 3 ms for the locks'
statement, of which 0.3 ms in the database). Two functions move the locks into calls the group
makes anyway:

- ``market_lock_product_and_batch``: ``market_lock_product``, then the product's batch (if
  any) ``FOR NO KEY UPDATE``. The live blocks read after it are then the batch's as of the
  lock, which is what they need.
- ``market_lock_accounts_and_apply_group``: locks the given ledger accounts by id, in id order
  (``FOR UPDATE``), then calls ``market_apply_group``. The accounts are still locked before
  any hold or posting, after the batch, in the global order every writer keeps (batches, then
  accounts by id), so it deadlocks no more than before. The caller names them by ids it has
  seen before; if any does not exist (an id remembered from a transaction that rolled back,
  or a test's TRUNCATE), SQLSTATE TN016 refuses the call before anything is written, and the
  caller forgets its ids and places the group's orders again.

Written by hand (no table or column changes: ``alembic check`` is unaffected).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-29 06:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# ``market_apply_group``'s parameters (0017), in order.
_APPLY_PARAMETERS = """
        p_kinds text[], p_holds uuid[], p_entries uuid[], p_orgs uuid[], p_assets text[],
        p_amounts bigint[], p_sources uuid[], p_destinations uuid[], p_entry_kinds text[],
        p_references text[], p_rest_only boolean[],
        p_now timestamptz, p_closed uuid[], p_ids uuid[], p_batches uuid[], p_holders uuid[],
        p_starts bigint[], p_ends bigint[], p_states text[], p_block_holds uuid[],
        p_retirements uuid[], p_parents text[], p_gone boolean[],
        p_orders jsonb, p_credit_holds jsonb, p_trades jsonb, p_fills jsonb,
        p_product uuid, p_last_trade_price bigint, p_product_updated_at timestamptz,
        p_channel text, p_events text[]"""
_NAMES_AND_TYPES = [part.strip().split(" ", 1) for part in _APPLY_PARAMETERS.split(",")]
_APPLY_ARGUMENTS = ", ".join(name for name, _ in _NAMES_AND_TYPES)
_APPLY_TYPES = ", ".join(kind for _, kind in _NAMES_AND_TYPES)

UP = [
    """
    CREATE FUNCTION market_lock_product_and_batch(p_id uuid) RETURNS SETOF market_products
    LANGUAGE plpgsql
    AS $$
    BEGIN
        PERFORM market_lock_product(p_id);
        PERFORM 1 FROM offset_batches b
         WHERE b.id = (SELECT p.batch_id FROM market_products p WHERE p.id = p_id)
           FOR NO KEY UPDATE;
        RETURN QUERY SELECT * FROM market_products WHERE id = p_id;
    END
    $$
    """,
    f"""
    CREATE FUNCTION market_lock_accounts_and_apply_group(
        p_accounts uuid[], {_APPLY_PARAMETERS.strip()}
    ) RETURNS TABLE (order_id uuid, order_sequence bigint)
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_locked bigint;
        v_wanted bigint;
    BEGIN
        SELECT count(*) INTO v_locked
          FROM (SELECT 1 FROM ledger_accounts WHERE id = ANY (p_accounts)
                 ORDER BY id FOR UPDATE) a;
        SELECT count(DISTINCT x) INTO v_wanted FROM unnest(p_accounts) AS x;
        IF v_locked <> v_wanted THEN
            RAISE EXCEPTION '% of % accounts to lock exist', v_locked, v_wanted
                USING ERRCODE = 'TN016';
        END IF;
        RETURN QUERY SELECT * FROM market_apply_group({_APPLY_ARGUMENTS});
    END
    $$
    """,
]

DOWN = [
    f"DROP FUNCTION market_lock_accounts_and_apply_group(uuid[], {_APPLY_TYPES})",
    "DROP FUNCTION market_lock_product_and_batch(uuid)",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
