"""The book's read looks each credit hold up by its key: it no longer scans ``ledger_holds``.

The book (``market_lock_product_and_book``, 0021 and 0022) reads each resting sell order's
credit holds with what is left of them, joining ``market_order_credit_holds`` with
``ledger_holds``. The function is PL/pgSQL: its statements are planned once per connection
and kept, and a plan made while ``ledger_holds`` was small took it whole into a hash join.
``ledger_holds`` gains a row with every order, so from then on every group's lock call read
every hold ever made: 3.2 ms a call on average through one run of ``bench/orders`` (15,000
holds at its end), under the product lock, and more with every order.

Now each hold is looked up by its primary key (a LATERAL subquery with OFFSET 0, which the
planner cannot turn back into a join), as ``OrderRepository.open_orders_with_credit_holds``
does for the one-by-one path. ``tests/market/test_book_plans.py`` plans the call on a book of
two orders, adds 3,000 filled orders with their holds and counts the rows the call reads
(3,007 before).

Written by hand (no table or column changes: ``alembic check`` is unaffected); the downgrade
restores 0022's function.

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-29 10:30:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOIN = "FROM market_order_credit_holds c JOIN ledger_holds l ON l.id = c.hold_id"
_BY_KEY = (
    "FROM market_order_credit_holds c CROSS JOIN LATERAL (\n"
    "                       SELECT remaining, status FROM ledger_holds\n"
    "                        WHERE id = c.hold_id OFFSET 0) l"
)


def _0022_function() -> str:
    """0022's ``market_lock_product_and_book`` (with 0021's book), as ``CREATE OR REPLACE``."""
    path = Path(__file__).with_name("2026-11-29-0022_group_lock_reads_the_blocks.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0022_for_0026", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [body] = [s for s in module.UP if "CREATE FUNCTION market_lock_product_and_book" in s]
    return str(body).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _by_key() -> str:
    body = _0022_function()
    if body.count(_JOIN) != 1:
        raise RuntimeError("0022's book does not join the holds as expected")
    return body.replace(_JOIN, _BY_KEY)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_by_key())


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_0022_function())
