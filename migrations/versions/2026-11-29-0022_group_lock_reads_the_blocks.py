"""The order group's lock call also reads its sellers' live blocks: one round trip fewer.

After matching, a group of orders on a batch product (``app.market.group``) read the live
blocks of its sellers, and the blocks touching theirs, into the registry's copy
(``app.offsets.repository._LiveCopy``), in a round trip of its own under the product lock
(about 2.7 ms of a 32 ms hold in ``bench/orders``). The sellers are known before matching up
to the orders that arrive while the lock is awaited: those of the book's resting sell orders
(the makers any fill takes from) and those of the sell orders queued when the lock is asked
for. So:

- ``offset_live_copy(batch, holders, hold)``: the copy's query, moved here from Python so that
  it exists once: the live blocks of the holders (and of the hold's holder), whole (``own``),
  and every live block touching one of theirs, whoever holds it. ``offset_live_block`` is its
  row type.
- ``market_lock_product_and_book(product, holders)`` replaces 0021's one-argument function:
  after the same locks, it reads the book as before and, on its first row, the copy of the
  sellers' blocks (the resting sell orders' organisations and ``holders``), with the holders
  it read whole. It reads none (NULLs) for a product without a batch, or when there are more
  than 32 such sellers (a deep book: the group then reads only those it needs, after
  matching, as before). The copy is read after the batch lock, so it is the batch as of the
  lock, and nothing else changes it while the group holds that lock. A seller the call did not
  read (an order that arrived meanwhile) is read when the group needs it, as before.

Written by hand (no table or column changes: ``alembic check`` is unaffected). The downgrade
restores 0021's function.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-29 07:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SELLERS_READ_AT_MOST = 32

_COLUMNS = (
    "id, batch_id, holder_organization_id, serial_start, serial_end, state, parent_ids,"
    " hold_id, retirement_id"
)


def _load_0021() -> ModuleType:
    """0021's module: its book query (one copy) and its function (the downgrade's)."""
    path = Path(__file__).with_name("2026-11-29-0021_group_lock_reads_the_book.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0021", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0021 = _load_0021()

UP = [
    """
    CREATE TYPE offset_live_block AS (
        id uuid, batch_id uuid, holder_organization_id uuid, serial_start bigint,
        serial_end bigint, state varchar(10), parent_ids uuid[], hold_id uuid,
        retirement_id uuid, own boolean
    )
    """,
    # The holders' (and the hold's holder's) live blocks: one look-up per holder in the
    # live-blocks index (LATERAL with OFFSET 0 keeps each an index condition); then every live
    # block touching one of them, found through the live-serials GiST index, whoever holds it.
    f"""
    CREATE FUNCTION offset_live_copy(p_batch uuid, p_holders uuid[], p_hold uuid)
    RETURNS SETOF offset_live_block
    LANGUAGE sql STABLE
    AS $$
        WITH m AS MATERIALIZED (
            SELECT b.*
              FROM (SELECT DISTINCT unnest(p_holders || ARRAY(
                        SELECT h.organization_id FROM ledger_holds h
                         WHERE h.id = p_hold AND EXISTS (
                               SELECT 1 FROM offset_blocks o
                                WHERE o.batch_id = p_batch
                                  AND o.holder_organization_id = h.organization_id
                                  AND o.hold_id = h.id AND o.closed_at IS NULL))) AS id) h
             CROSS JOIN LATERAL (
                   SELECT {_COLUMNS} FROM offset_blocks
                    WHERE batch_id = p_batch AND closed_at IS NULL
                      AND holder_organization_id = h.id OFFSET 0) b
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
         WHERE o.holder_organization_id <> ALL (ARRAY(
                   SELECT DISTINCT holder_organization_id FROM m))
    $$
    """,
    "DROP FUNCTION market_lock_product_and_book(uuid)",
    f"""
    CREATE FUNCTION market_lock_product_and_book(p_id uuid, p_holders uuid[])
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
    BEGIN
        PERFORM market_lock_product_and_batch(p_id);
        SELECT batch_id INTO v_batch FROM market_products WHERE id = p_id;
        IF v_batch IS NOT NULL THEN
            SELECT array_agg(DISTINCT s) INTO v_sellers
              FROM (SELECT unnest(p_holders) AS s
                    UNION ALL
                    SELECT o.organization_id FROM market_orders o
                     WHERE o.product_id = p_id AND o.side = 'sell'
                       AND (o.status = 'open' OR o.status = 'partially_filled')) x;
            IF cardinality(v_sellers) > {SELLERS_READ_AT_MOST} THEN
                v_sellers := NULL;
            ELSIF v_sellers IS NOT NULL THEN
                v_blocks := ARRAY(SELECT c FROM offset_live_copy(v_batch, v_sellers, NULL) c);
            END IF;
        END IF;
        RETURN QUERY
        SELECT p, o, h.hold_positions, h.hold_batches, h.hold_ids, h.hold_remaining,
               CASE WHEN row_number() OVER (ORDER BY o.sequence) = 1 THEN v_blocks END,
               CASE WHEN row_number() OVER (ORDER BY o.sequence) = 1 THEN v_sellers END{_0021.BOOK};
    END
    $$
    """,
]


DOWN = [
    "DROP FUNCTION market_lock_product_and_book(uuid, uuid[])",
    "DROP FUNCTION offset_live_copy(uuid, uuid[], uuid)",
    "DROP TYPE offset_live_block",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
    op.execute(_0021.UP)
