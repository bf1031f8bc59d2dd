"""``market_apply_group``: the resting orders' fills updated through the primary key.

0017's function updated the resting orders a group filled with ``UPDATE market_orders …
FROM jsonb_populate_recordset(…) WHERE o.id = r.id``. Its plan is generic (planned once per
connection, ``plan_cache_mode = force_generic_plan``), made for a set-returning function of
unknown size (the planner's 100 rows) against the whole table: a hash join over a scan of
``market_orders``, so each group paid for every order ever placed (1.2 ms a call after
9,000 orders in ``bench/orders``, growing with the table). The same statement now also names
the ids as an array (``o.id = ANY (…)``), which the primary key's index answers whatever the
plan, in time that grows with the group and not with the table. Nothing else changes.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29 04:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _statements_0017() -> list[str]:
    """0017's ``CREATE FUNCTION market_apply_group`` (the downgrade's and the base of this
    revision's definition: one copy of the function's text)."""
    path = Path(__file__).with_name("2026-11-29-0017_market_group_writes.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0017", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.UP)


FILLS_0017 = "         WHERE o.id = r.id;"
FILLS_0018 = """         WHERE o.id = r.id
           AND o.id = ANY (ARRAY(SELECT (f ->> 'id')::uuid
                                   FROM jsonb_array_elements(p_fills) AS f));"""


def _replaced(statement: str) -> str:
    if statement.count(FILLS_0017) != 1:
        raise RuntimeError("0017's market_apply_group is not the text this revision expects")
    return statement.replace(FILLS_0017, FILLS_0018).replace(
        "CREATE FUNCTION market_apply_group", "CREATE OR REPLACE FUNCTION market_apply_group"
    )


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    [create] = _statements_0017()
    op.execute(_replaced(create))


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    [create] = _statements_0017()
    op.execute(create.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
