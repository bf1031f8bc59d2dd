"""A market product's fees go to a fee account of its own.

Every fill that charged a fee, on any product, posted to the one system ``fees`` JPY account,
and so locked its row (``lock_settlement``, or the group's write call) and updated its cached
balance until its transaction committed: the settlements of all fee-charging products queued
on that row, though each product is otherwise settled under its own lock only.

``ledger_accounts`` gains ``scope_id``, which only a ``fees`` account may have (CHECK
``scope``): the market uses the fees account scoped by the product's id (no foreign key: the
ledger knows no market). The uniqueness of (organisation, asset, kind) takes the scope in
(still NULLS NOT DISTINCT), and ``ledger_account_of`` (0013) names the new key in its
``ON CONFLICT``, otherwise unchanged. The unscoped ``fees`` account keeps what it holds; the
platform's fees are the sum of the ``fees`` accounts.

The models declare the same (``alembic check``). The downgrade refuses while a scoped account
exists (its postings cannot be moved back without rewriting the ledger), and otherwise
restores the key, the function and the table.

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-29 20:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONFLICT_0013 = "ON CONFLICT (organization_id, asset, kind) DO NOTHING"
_CONFLICT_0031 = "ON CONFLICT (organization_id, asset, kind, scope_id) DO NOTHING"


def _account_of_0013() -> str:
    """0013's ``ledger_account_of``, as CREATE OR REPLACE, from 0013's module."""
    path = Path(__file__).with_name("2026-11-28-2140_0013_fast_order_path.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0013_for_0031", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [body] = [sql for sql in module.UP if "CREATE FUNCTION ledger_account_of" in sql]
    if str(body).count(_CONFLICT_0013) != 1:
        raise RuntimeError("0013's ledger_account_of no longer has its one ON CONFLICT")
    return str(body).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE ledger_accounts ADD COLUMN scope_id uuid")
    op.execute(
        "ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_scope_check"
        " CHECK (scope_id IS NULL OR kind = 'fees')"
    )
    op.execute(
        "ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_organization_id_asset_kind_key"
    )
    op.execute(
        "ALTER TABLE ledger_accounts ADD CONSTRAINT"
        " ledger_accounts_organization_id_asset_kind_scope_id_key"
        " UNIQUE NULLS NOT DISTINCT (organization_id, asset, kind, scope_id)"
    )
    op.execute(_account_of_0013().replace(_CONFLICT_0013, _CONFLICT_0031))


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        """
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM ledger_accounts WHERE scope_id IS NOT NULL) THEN
                RAISE EXCEPTION 'products have fee accounts of their own: their postings'
                    ' cannot be moved back to one fee account by a downgrade';
            END IF;
        END $$
        """
    )
    op.execute(_account_of_0013())
    op.execute(
        "ALTER TABLE ledger_accounts DROP CONSTRAINT"
        " ledger_accounts_organization_id_asset_kind_scope_id_key"
    )
    op.execute(
        "ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_organization_id_asset_kind_key"
        " UNIQUE NULLS NOT DISTINCT (organization_id, asset, kind)"
    )
    op.execute("ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_scope_check")
    op.execute("ALTER TABLE ledger_accounts DROP COLUMN scope_id")
