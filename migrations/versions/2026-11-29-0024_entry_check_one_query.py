"""``ledger_check_entry_balanced`` in one query: the balance check at commit costs half.

The deferred constraint trigger on ``ledger_entries`` (0001) runs once per entry at commit:
it counted the entry's postings in one query and looked for an asset that does not sum to
zero in a second, then set ``tanso.ledger_checked`` (the flag the posting trigger reads, so
that no posting joins after the checks ran). Every ledger writer pays it per entry: an order
group of 16 orders commits about 32 entries, an auction close thousands.

Now one query reads both (per asset: the count and the sum, over the entry's postings by
``ix_ledger_postings_entry_id``), and the flag is set only when it is not set yet (it stays
set until the transaction ends). The same refusals (TN002 with the same messages; of several
unbalanced assets, the first in order is named, where it was any one of them) and the same
flag. Written by hand (no table or column changes: ``alembic check`` is unaffected); the
downgrade restores 0001's body.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-29 09:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = """
    CREATE OR REPLACE FUNCTION ledger_check_entry_balanced() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        v_count bigint;
        v_unbalanced text;
    BEGIN
        SELECT coalesce(sum(p.n), 0), min(p.asset) FILTER (WHERE p.total <> 0)
          INTO v_count, v_unbalanced
          FROM (SELECT asset, count(*) AS n, sum(amount) AS total
                  FROM ledger_postings WHERE entry_id = NEW.id GROUP BY asset) p;
        IF v_count < 2 THEN
            RAISE EXCEPTION 'ledger entry % has % posting(s); at least two are needed',
                NEW.id, v_count USING ERRCODE = 'TN002';
        END IF;
        IF v_unbalanced IS NOT NULL THEN
            RAISE EXCEPTION 'ledger entry % does not balance for asset %', NEW.id, v_unbalanced
                USING ERRCODE = 'TN002';
        END IF;
        -- Normally this runs at COMMIT, after which nothing more is written. Run earlier (by
        -- SET CONSTRAINTS ... IMMEDIATE), it must be the last word: say so for the guard on
        -- ledger_postings (set once; it holds until the transaction ends).
        IF current_setting('tanso.ledger_checked', true) IS DISTINCT FROM 'on' THEN
            PERFORM set_config('tanso.ledger_checked', 'on', true);
        END IF;
        RETURN NULL;
    END
    $$
"""


def _body_0001() -> str:
    """0001's body of the function (the downgrade's), from 0001's module."""
    path = Path(__file__).with_name("2026-11-28-1740_0001_accounts_ledger_and_idempotency.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0001", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [body] = [
        sql for sql in module.LEDGER_SQL if "CREATE FUNCTION ledger_check_entry_balanced" in sql
    ]
    return str(body).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(CHECK)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_body_0001())
