"""Category products (vintage window, labels, multi-batch sell holds) and trading fees.

Written by hand from ``app.market.models`` (``alembic check`` clean):

- ``market_products``: ``batch_id`` becomes optional; ``category``, ``vintage_min``,
  ``vintage_max`` and ``labels`` describe a category product (exactly one of ``batch_id`` and
  ``category``); ``maker_fee_bps`` and ``taker_fee_bps`` (0–1000, default 0).
- ``market_order_credit_holds``: a sell order's credit holds, one per batch, in delivery order.
  Each existing sell order's ``credit_hold_id`` is copied there (position 0, the product's
  batch, the order's quantity) and the column is dropped: one place for every sell hold.
- ``market_trades``: ``buyer_fee`` and ``seller_fee`` (JPY, default 0).

Downgrade refuses while a category product exists or a sell order has more than one hold
(they cannot be represented before this revision); otherwise it restores ``credit_hold_id``
from the position-0 hold.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 21:20:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CATEGORIES = (
    "category IN ('energy_saving', 'renewable_power', 'renewable_heat', 'forest', "
    "'industrial', 'agriculture', 'waste', 'other')"
)
OLD_HOLDS = (
    "(side = 'buy') = (cash_hold_id IS NOT NULL) AND (side = 'sell') = (credit_hold_id IS NOT NULL)"
)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Products: category products and fees.
    op.alter_column("market_products", "batch_id", existing_type=sa.UUID(), nullable=True)
    op.add_column("market_products", sa.Column("category", sa.String(length=20), nullable=True))
    op.add_column("market_products", sa.Column("vintage_min", sa.SmallInteger(), nullable=True))
    op.add_column("market_products", sa.Column("vintage_max", sa.SmallInteger(), nullable=True))
    op.add_column(
        "market_products",
        sa.Column(
            "labels",
            postgresql.ARRAY(sa.String(length=40)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    op.add_column(
        "market_products",
        sa.Column("maker_fee_bps", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "market_products",
        sa.Column("taker_fee_bps", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("market_products_category_check"), "market_products", CATEGORIES
    )
    op.create_check_constraint(
        op.f("market_products_source_check"),
        "market_products",
        "(batch_id IS NULL) <> (category IS NULL)",
    )
    op.create_check_constraint(
        op.f("market_products_category_filters_check"),
        "market_products",
        "category IS NOT NULL OR"
        " (vintage_min IS NULL AND vintage_max IS NULL AND cardinality(labels) = 0)",
    )
    op.create_check_constraint(
        op.f("market_products_vintage_window_check"),
        "market_products",
        "vintage_min <= vintage_max",
    )
    op.create_check_constraint(
        op.f("market_products_maker_fee_bps_check"),
        "market_products",
        "maker_fee_bps >= 0 AND maker_fee_bps <= 1000",
    )
    op.create_check_constraint(
        op.f("market_products_taker_fee_bps_check"),
        "market_products",
        "taker_fee_bps >= 0 AND taker_fee_bps <= 1000",
    )

    # Sell orders' credit holds: a table of their own, filled from credit_hold_id.
    op.create_table(
        "market_order_credit_holds",
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=False),
        sa.Column("hold_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("position >= 0", name=op.f("market_order_credit_holds_position_check")),
        sa.CheckConstraint("quantity > 0", name=op.f("market_order_credit_holds_quantity_check")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["offset_batches.id"],
            name=op.f("market_order_credit_holds_batch_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["hold_id"],
            ["ledger_holds.id"],
            name=op.f("market_order_credit_holds_hold_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["market_orders.id"],
            name=op.f("market_order_credit_holds_order_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint(
            "order_id", "position", name=op.f("market_order_credit_holds_pkey")
        ),
        sa.UniqueConstraint("hold_id", name=op.f("market_order_credit_holds_hold_id_key")),
    )
    op.execute(
        "INSERT INTO market_order_credit_holds (order_id, position, batch_id, hold_id, quantity)"
        " SELECT o.id, 0, p.batch_id, o.credit_hold_id, o.quantity"
        " FROM market_orders o JOIN market_products p ON p.id = o.product_id"
        " WHERE o.credit_hold_id IS NOT NULL"
    )
    op.drop_constraint(op.f("market_orders_holds_check"), "market_orders", type_="check")
    op.drop_column("market_orders", "credit_hold_id")  # its FK and UNIQUE go with it
    op.create_check_constraint(
        op.f("market_orders_holds_check"),
        "market_orders",
        "(side = 'buy') = (cash_hold_id IS NOT NULL)",
    )

    # Trades: the fee each side paid.
    op.add_column(
        "market_trades",
        sa.Column("buyer_fee", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "market_trades",
        sa.Column("seller_fee", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("market_trades_fees_check"), "market_trades", "buyer_fee >= 0 AND seller_fee >= 0"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM market_products WHERE category IS NOT NULL)
               OR EXISTS (SELECT 1 FROM market_order_credit_holds WHERE position > 0) THEN
                RAISE EXCEPTION 'category products or multi-batch sell orders exist:'
                    ' they cannot be represented before revision 0011';
            END IF;
        END $$
        """
    )
    op.drop_constraint(op.f("market_trades_fees_check"), "market_trades", type_="check")
    op.drop_column("market_trades", "seller_fee")
    op.drop_column("market_trades", "buyer_fee")

    op.drop_constraint(op.f("market_orders_holds_check"), "market_orders", type_="check")
    op.add_column("market_orders", sa.Column("credit_hold_id", sa.UUID(), nullable=True))
    op.execute(
        "UPDATE market_orders o SET credit_hold_id = h.hold_id FROM market_order_credit_holds h"
        " WHERE h.order_id = o.id AND h.position = 0"
    )
    op.create_foreign_key(
        op.f("market_orders_credit_hold_id_fkey"),
        "market_orders",
        "ledger_holds",
        ["credit_hold_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_unique_constraint(
        op.f("market_orders_credit_hold_id_key"), "market_orders", ["credit_hold_id"]
    )
    op.create_check_constraint(op.f("market_orders_holds_check"), "market_orders", OLD_HOLDS)
    op.drop_table("market_order_credit_holds")

    for name in (
        "taker_fee_bps",
        "maker_fee_bps",
        "vintage_window",
        "category_filters",
        "source",
        "category",
    ):
        op.drop_constraint(op.f(f"market_products_{name}_check"), "market_products", type_="check")
    for column in ("taker_fee_bps", "maker_fee_bps", "labels", "vintage_max", "vintage_min"):
        op.drop_column("market_products", column)
    op.drop_column("market_products", "category")
    op.alter_column("market_products", "batch_id", existing_type=sa.UUID(), nullable=False)
