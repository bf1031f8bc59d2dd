"""Auction bidding rules: undersubscription handling, a bidder cap as a share of supply, the
bidder's corporate group captured on each bid, and bid amendments.

Written by hand from ``app.auction.models`` (``alembic check`` clean). Existing auctions keep
their behaviour (``undersubscribed = 'cancel'``, the only one before this revision); existing
bids carry no group and no amendment.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 21:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "auctions",
        sa.Column(
            "undersubscribed",
            sa.String(length=20),
            server_default=sa.text("'cancel'"),
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("auctions_undersubscribed_check"),
        "auctions",
        "undersubscribed IN ('cancel', 'sell_what_is_bid')",
    )
    op.add_column("auctions", sa.Column("max_bidder_share_bps", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("auctions_max_bidder_share_bps_check"),
        "auctions",
        "max_bidder_share_bps IS NULL"
        " OR (max_bidder_share_bps BETWEEN 1 AND 10000 AND max_bidder_quantity IS NOT NULL)",
    )
    op.add_column("auction_bids", sa.Column("group", sa.String(length=100), nullable=True))
    op.create_index(
        "ix_auction_bids_auction_id_group", "auction_bids", ["auction_id", "group"], unique=False
    )
    op.add_column(
        "auction_bids",
        sa.Column("amendments", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "auction_bids",
        sa.Column("amended_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
    )
    op.create_check_constraint(
        op.f("auction_bids_amendments_check"), "auction_bids", "amendments >= 0"
    )
    op.create_check_constraint(
        op.f("auction_bids_amended_at_check"),
        "auction_bids",
        "(amendments = 0) = (amended_at IS NULL)",
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint(op.f("auction_bids_amended_at_check"), "auction_bids", type_="check")
    op.drop_constraint(op.f("auction_bids_amendments_check"), "auction_bids", type_="check")
    op.drop_column("auction_bids", "amended_at")
    op.drop_column("auction_bids", "amendments")
    op.drop_index("ix_auction_bids_auction_id_group", table_name="auction_bids")
    op.drop_column("auction_bids", "group")
    op.drop_constraint(op.f("auctions_max_bidder_share_bps_check"), "auctions", type_="check")
    op.drop_column("auctions", "max_bidder_share_bps")
    op.drop_constraint(op.f("auctions_undersubscribed_check"), "auctions", type_="check")
    op.drop_column("auctions", "undersubscribed")
