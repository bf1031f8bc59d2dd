"""Indexes that wrote an entry for every row, for a value most rows do not have, are partial;
one the application never reads is dropped.

Every order writes about 38 index entries (``bench/orders``, counted from
``pg_stat_user_tables``: an order is about 2 ledger entries, 4 postings, 1.5 serial blocks
created and 1.2 closed, a hold, an order row and half a trade). About 6 of them were for values
almost no row has, in B-tree indexes that also store NULL:

- ``ledger_entries.idempotency_key`` (UNIQUE): only an entry posted with a key of its own
  (``app.ledger.service.PostEntry.idempotency_key``) has one, and none of the application's
  writers (orders, auctions, claims, deposits) gives one. Now a unique index where it is not
  NULL; ``ledger_post_entries`` (0001) names that predicate in its
  ``ON CONFLICT`` (a partial unique index is its arbiter only so), otherwise unchanged.
- ``offset_blocks.retirement_id``: only retired blocks have one, and every transfer, hold and
  delivery creates blocks and closes others (a new row version each, which writes every index
  of the table again). Now an index of the retired blocks.
- ``market_orders.cash_hold_id`` (UNIQUE): a sell has none. Now a unique index where it is
  not NULL.

``ix_market_orders_product_id_status`` is dropped: the book's reads (open orders by product)
use ``ix_market_orders_book`` (0028), the expiry task ``ix_market_orders_expires_at_open_gtd``,
and nothing reads a product's orders of every status; products are never deleted (the foreign
key's check on a delete is the only other user a product id index would have).

Unique indexes keep the names of the constraints they replace, so a violation names the same
rule. The models declare the same (``alembic check``); the downgrade restores the constraints,
the full indexes and 0001's function.

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-29 19:30:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONFLICT_0001 = "ON CONFLICT (idempotency_key) DO NOTHING"
_CONFLICT_0030 = "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"


def _post_entries_0001() -> str:
    """0001's ``ledger_post_entries``, as CREATE OR REPLACE, from 0001's module."""
    path = Path(__file__).with_name("2026-11-28-1740_0001_accounts_ledger_and_idempotency.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0001_for_0030", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [body] = [sql for sql in module.LEDGER_SQL if "CREATE FUNCTION ledger_post_entries" in sql]
    if str(body).count(_CONFLICT_0001) != 1:
        raise RuntimeError("0001's ledger_post_entries no longer has its one ON CONFLICT")
    return str(body).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP INDEX ix_market_orders_product_id_status")
    op.execute("ALTER TABLE market_orders DROP CONSTRAINT market_orders_cash_hold_id_key")
    op.execute(
        "CREATE UNIQUE INDEX market_orders_cash_hold_id_key ON market_orders (cash_hold_id)"
        " WHERE cash_hold_id IS NOT NULL"
    )
    op.execute("DROP INDEX ix_offset_blocks_retirement_id")
    op.execute(
        "CREATE INDEX ix_offset_blocks_retirement_id ON offset_blocks (retirement_id)"
        " WHERE retirement_id IS NOT NULL"
    )
    op.execute("ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_idempotency_key_key")
    op.execute(
        "CREATE UNIQUE INDEX ledger_entries_idempotency_key_key ON ledger_entries"
        " (idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    op.execute(_post_entries_0001().replace(_CONFLICT_0001, _CONFLICT_0030))


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP INDEX ledger_entries_idempotency_key_key")
    op.execute(
        "ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_idempotency_key_key"
        " UNIQUE (idempotency_key)"
    )
    op.execute(_post_entries_0001())
    op.execute("DROP INDEX ix_offset_blocks_retirement_id")
    op.execute("CREATE INDEX ix_offset_blocks_retirement_id ON offset_blocks (retirement_id)")
    op.execute("DROP INDEX market_orders_cash_hold_id_key")
    op.execute(
        "ALTER TABLE market_orders ADD CONSTRAINT market_orders_cash_hold_id_key"
        " UNIQUE (cash_hold_id)"
    )
    op.execute(
        "CREATE INDEX ix_market_orders_product_id_status ON market_orders (product_id, status)"
    )
