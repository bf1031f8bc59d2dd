"""``ledger_postings_same_transaction``: each new posting's entry looked up by primary key.

The statement trigger on ``ledger_postings`` (0001) checks that every posting joins an entry
of the inserting transaction, with ``EXISTS (SELECT 1 FROM new_postings n JOIN
ledger_entries e ON e.id = n.entry_id WHERE e.txid <> …)``. The query has no parameters, so
each connection plans it once, when first run, and keeps that plan until the table's
statistics change: planned while ``ledger_entries`` was small, it is a nested loop over a
scan of the whole table, which then costs more with every entry posted (``auto_explain`` in
``bench/orders``: 24,570 rows compared for one group of 78 postings; 0.6 ms a call on
average, up to 6.5 ms). The entry of each posting is now looked up by its primary key (a
correlated subquery, which the planner cannot turn into a scan), so the check costs what the
statement's postings cost, whatever the table's size. The same rule: a posting whose entry
does not exist is left to the foreign key, as before.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29 04:40:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
    CREATE OR REPLACE FUNCTION ledger_postings_same_transaction() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('tanso.ledger_checked', true) = 'on' THEN
            RAISE EXCEPTION 'postings cannot be added after the balance checks ran'
                USING ERRCODE = 'TN003',
                      HINT = 'SET CONSTRAINTS ... IMMEDIATE ran them early in this transaction';
        END IF;
        IF EXISTS ({check}) THEN
            RAISE EXCEPTION 'postings can only be added by the transaction that created the entry'
                USING ERRCODE = 'TN003';
        END IF;
        RETURN NULL;
    END
    $$
"""

CHECK_0019 = """SELECT 1 FROM new_postings n
                    WHERE (SELECT e.txid FROM ledger_entries e WHERE e.id = n.entry_id)
                          <> pg_current_xact_id()::text::bigint"""

CHECK_0001 = """SELECT 1 FROM new_postings n JOIN ledger_entries e ON e.id = n.entry_id
                    WHERE e.txid <> pg_current_xact_id()::text::bigint"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_FUNCTION.format(check=CHECK_0019))


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_FUNCTION.format(check=CHECK_0001))
