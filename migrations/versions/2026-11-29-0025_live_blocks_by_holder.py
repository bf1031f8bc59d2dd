"""``offset_live_copy`` looks each holder's blocks up in the live-blocks index, and only there.

The copy reads, per holder, the holder's live blocks of the batch (``batch_id = b AND
holder_organization_id = h``), meant as one look-up in ``ix_offset_blocks_live`` (batch,
holder, serial). But the exclusion constraint's GiST index on (batch, serial range) serves
``batch_id = b`` as well, and without statistics (a new database, a table grown since its
last ANALYZE, a new batch) the planner rated the two alike and took the GiST one, then
filtered the batch's every live block by holder: 5 ms a call at 1,900 live blocks in
``bench/orders``, where the order group's lock call (0022) reads its sellers' blocks so, under
the product lock, and more with every trade (each fill leaves the buyer a block).

The batch and the holder are now also compared as one row, ``(batch_id,
holder_organization_id) >= (b, h) AND … <= (b, h)``: the same rows, but a row comparison is
an index condition for a B-tree only, so the look-up has no GiST path left to choose. The
holder's equality stays, for the estimates. The hold's holder (the owner of a hold that
still has live blocks in the batch) is found the same way, through a LATERAL look-up with
LIMIT 1 instead of EXISTS: as a semi-join planned while the table was small, that read the
batch's every live block once per call. The touching blocks are still found through the GiST
index, by serial range (its purpose). ``tests/offsets/test_live_block_plans.py`` plans each
look-up on a batch of one block, cuts it into 3,000 blocks and counts the rows read.

Written by hand (no table or column changes: ``alembic check`` is unaffected); the downgrade
restores 0022's body.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-29 10:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "id, batch_id, holder_organization_id, serial_start, serial_end, state, parent_ids,"
    " hold_id, retirement_id"
)


def _of_holder(batch: str, holder: str) -> str:
    """``batch``'s live blocks of ``holder`` (a condition on ``offset_blocks``): a look-up in
    the live-blocks B-tree index only (module docstring)."""
    return (
        f"(batch_id, holder_organization_id) >= ({batch}, {holder})"
        f" AND (batch_id, holder_organization_id) <= ({batch}, {holder})"
        f" AND holder_organization_id = {holder} AND closed_at IS NULL"
    )


UP = f"""
    CREATE OR REPLACE FUNCTION offset_live_copy(p_batch uuid, p_holders uuid[], p_hold uuid)
    RETURNS SETOF offset_live_block
    LANGUAGE sql STABLE
    AS $$
        WITH m AS MATERIALIZED (
            SELECT b.*
              FROM (SELECT DISTINCT unnest(p_holders || ARRAY(
                        SELECT h.organization_id FROM ledger_holds h
                         CROSS JOIN LATERAL (
                               SELECT 1 FROM offset_blocks
                                WHERE {_of_holder("p_batch", "h.organization_id")}
                                  AND hold_id = h.id LIMIT 1) o
                         WHERE h.id = p_hold)) AS id) h
             CROSS JOIN LATERAL (
                   SELECT {_COLUMNS} FROM offset_blocks
                    WHERE {_of_holder("p_batch", "h.id")} OFFSET 0) b
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
"""


def _0022_function() -> str:
    """0022's ``offset_live_copy``, as ``CREATE OR REPLACE`` (the downgrade)."""
    path = Path(__file__).with_name("2026-11-29-0022_group_lock_reads_the_blocks.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0022_for_0025", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [body] = [s for s in module.UP if "CREATE FUNCTION offset_live_copy" in s]
    return str(body).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(UP)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_0022_function())
