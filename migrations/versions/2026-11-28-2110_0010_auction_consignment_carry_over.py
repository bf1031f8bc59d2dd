"""Consigned auction supply (several sellers, pro-rata proceeds) and series carry-over.

Written by hand from ``app.auction.models`` (``alembic check`` clean). A supply row now names
its seller (existing rows: the auction's creator, the only seller before this revision), may
share its batch with other rows of the same auction (consignors, carried-over lots), and gets
what it sold and earned at the close (existing settled auctions keep null: not recorded then).
Results record the carry-over; series get the ``carry_over`` option (on by default) and the
list of carry-overs waiting for their next auction.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 21:10:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # --- auction_supply: the seller, several rows per batch, what each sold ---------------
    op.add_column("auction_supply", sa.Column("seller_organization_id", sa.UUID(), nullable=True))
    op.add_column(
        "auction_supply",
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
    )
    op.execute(
        "UPDATE auction_supply s SET seller_organization_id = a.created_by_organization_id,"
        " created_at = a.created_at FROM auctions a WHERE a.id = s.auction_id"
    )
    op.alter_column("auction_supply", "seller_organization_id", nullable=False)
    op.alter_column("auction_supply", "created_at", nullable=False)
    op.create_foreign_key(
        op.f("auction_supply_seller_organization_id_fkey"),
        "auction_supply",
        "organizations",
        ["seller_organization_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_index(
        op.f("ix_auction_supply_seller_organization_id"),
        "auction_supply",
        ["seller_organization_id"],
        unique=False,
    )
    op.add_column("auction_supply", sa.Column("carried_from_auction_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("auction_supply_carried_from_auction_id_fkey"),
        "auction_supply",
        "auctions",
        ["carried_from_auction_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.add_column("auction_supply", sa.Column("sold_quantity", sa.BigInteger(), nullable=True))
    op.add_column("auction_supply", sa.Column("proceeds", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("auction_supply_sold_quantity_check"),
        "auction_supply",
        "sold_quantity >= 0 AND sold_quantity <= quantity",
    )
    op.create_check_constraint(
        op.f("auction_supply_proceeds_check"), "auction_supply", "proceeds >= 0"
    )
    op.create_check_constraint(
        op.f("auction_supply_settled_check"),
        "auction_supply",
        "(sold_quantity IS NULL) = (proceeds IS NULL)",
    )
    op.drop_constraint(
        op.f("auction_supply_auction_id_batch_id_key"), "auction_supply", type_="unique"
    )
    op.create_index(
        op.f("ix_auction_supply_auction_id"), "auction_supply", ["auction_id"], unique=False
    )

    # --- auction_results: the carry-over ---------------------------------------------------
    op.add_column(
        "auction_results",
        sa.Column(
            "carried_over_quantity", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
    )
    op.add_column("auction_results", sa.Column("carried_to_auction_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("auction_results_carried_to_auction_id_fkey"),
        "auction_results",
        "auctions",
        ["carried_to_auction_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_check_constraint(
        op.f("auction_results_carried_over_quantity_check"),
        "auction_results",
        "carried_over_quantity >= 0 AND carried_over_quantity <= unsold_quantity",
    )

    # --- auction_series: the option and the waiting carry-overs ---------------------------
    op.add_column(
        "auction_series",
        sa.Column("carry_over", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column(
        "auction_series",
        sa.Column(
            "pending_carry_over",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_column("auction_series", "pending_carry_over")
    op.drop_column("auction_series", "carry_over")

    op.drop_constraint(
        op.f("auction_results_carried_over_quantity_check"), "auction_results", type_="check"
    )
    op.drop_constraint(
        op.f("auction_results_carried_to_auction_id_fkey"), "auction_results", type_="foreignkey"
    )
    op.drop_column("auction_results", "carried_to_auction_id")
    op.drop_column("auction_results", "carried_over_quantity")

    # One row per (auction, batch) before this revision: fails loudly if consignments or
    # carry-overs made several (those auctions cannot be represented any more).
    op.drop_index(op.f("ix_auction_supply_auction_id"), table_name="auction_supply")
    op.create_unique_constraint(
        op.f("auction_supply_auction_id_batch_id_key"), "auction_supply", ["auction_id", "batch_id"]
    )
    op.drop_constraint(op.f("auction_supply_settled_check"), "auction_supply", type_="check")
    op.drop_constraint(op.f("auction_supply_proceeds_check"), "auction_supply", type_="check")
    op.drop_constraint(op.f("auction_supply_sold_quantity_check"), "auction_supply", type_="check")
    op.drop_column("auction_supply", "proceeds")
    op.drop_column("auction_supply", "sold_quantity")
    op.drop_constraint(
        op.f("auction_supply_carried_from_auction_id_fkey"), "auction_supply", type_="foreignkey"
    )
    op.drop_column("auction_supply", "carried_from_auction_id")
    op.drop_index(op.f("ix_auction_supply_seller_organization_id"), table_name="auction_supply")
    op.drop_constraint(
        op.f("auction_supply_seller_organization_id_fkey"), "auction_supply", type_="foreignkey"
    )
    op.drop_column("auction_supply", "created_at")
    op.drop_column("auction_supply", "seller_organization_id")
