"""Call auctions (itayose) per product: ``trading_mode``, ``call_times``, ``market_call_runs``.

Written by hand from ``app.market.models`` (``alembic check`` clean). Existing products keep
trading continuously (the column is added with a server default, then the default dropped:
the application always sets it). Order amendment needs no schema change.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 21:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "market_products",
        sa.Column(
            "trading_mode", sa.String(length=20), nullable=False, server_default="continuous"
        ),
    )
    op.add_column(
        "market_products",
        sa.Column(
            "call_times",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            server_default=sa.text("'[]'::jsonb"),
        ),
    )
    op.alter_column("market_products", "trading_mode", server_default=None)
    op.alter_column("market_products", "call_times", server_default=None)
    op.create_check_constraint(
        op.f("market_products_trading_mode_check"),
        "market_products",
        "trading_mode IN ('continuous', 'call', 'call_then_continuous')",
    )
    op.create_check_constraint(
        op.f("market_products_call_times_check"),
        "market_products",
        "(trading_mode = 'continuous') = (jsonb_array_length(call_times) = 0)",
    )
    op.create_check_constraint(
        op.f("market_products_opening_call_check"),
        "market_products",
        "trading_mode <> 'call_then_continuous' OR jsonb_array_length(call_times) = 1",
    )
    op.create_table(
        "market_call_runs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("product_id", sa.UUID(), nullable=False),
        sa.Column("scheduled_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(length=10), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("surplus", sa.BigInteger(), nullable=False),
        sa.Column("trades", sa.Integer(), nullable=False),
        sa.Column("ran_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "trigger IN ('scheduled', 'manual')", name=op.f("market_call_runs_trigger_check")
        ),
        sa.CheckConstraint("price > 0", name=op.f("market_call_runs_price_check")),
        sa.CheckConstraint(
            "volume >= 0 AND trades >= 0", name=op.f("market_call_runs_volume_check")
        ),
        sa.CheckConstraint(
            "(price IS NULL) = (volume = 0)", name=op.f("market_call_runs_price_if_volume_check")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["market_products.id"],
            name=op.f("market_call_runs_product_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("market_call_runs_pkey")),
        sa.UniqueConstraint(
            "product_id", "scheduled_at", name=op.f("market_call_runs_product_id_scheduled_at_key")
        ),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_table("market_call_runs")
    op.drop_constraint(op.f("market_products_opening_call_check"), "market_products", type_="check")
    op.drop_constraint(op.f("market_products_call_times_check"), "market_products", type_="check")
    op.drop_constraint(op.f("market_products_trading_mode_check"), "market_products", type_="check")
    op.drop_column("market_products", "call_times")
    op.drop_column("market_products", "trading_mode")
