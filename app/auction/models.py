"""Sealed-bid auction tables: the auction and its rules, the supply held for it, the bids.

Invariants held in the database as well as in Python: positive quantities and prices, valid
status values, ``closes_at > opens_at``, a reserve not below the public floor, commitments as
64 hex digits, one arrival sequence number per bid (``submitted_seq``, an identity column).
"""

from __future__ import annotations

import uuid
from datetime import datetime, time
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    String,
    Time,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auction.clearing import ClearingFormat, ClearingStatus, TieBreak, Undersubscribed
from app.db.base import Base, IdMixin, TimestampMixin, values_in

HEX64 = "'^[0-9a-f]{64}$'"


class AuctionStatus(StrEnum):
    scheduled = "scheduled"
    open = "open"
    closed = "closed"
    cleared = "cleared"
    settled = "settled"
    cancelled = "cancelled"


class BidStatus(StrEnum):
    """A bid's status as the API shows it. Only ``active`` and ``withdrawn`` are stored:
    once the auction is settled or cancelled, an active bid is ``won`` when it has an
    allocation and ``lost`` otherwise (``service.bid_status``), so a close writes one row per
    winning bid (its allocation), not one per bid."""

    active = "active"
    withdrawn = "withdrawn"
    won = "won"
    lost = "lost"


def share_cap(supply: int, share_bps: int, quantity_step: int) -> int:
    """The absolute cap a share of ``supply`` converts to: rounded down to a whole step (the
    clearing cuts in steps), but never below one step (a cap of 0 would refuse every bid)."""
    return max(supply * share_bps // 10_000 // quantity_step * quantity_step, quantity_step)


class Auction(IdMixin, TimestampMixin, Base):
    __tablename__ = "auctions"
    __table_args__ = (
        CheckConstraint(values_in("format", ClearingFormat), name="format"),
        CheckConstraint(values_in("status", AuctionStatus), name="status"),
        CheckConstraint(values_in("tie_break", TieBreak), name="tie_break"),
        CheckConstraint("closes_at > opens_at", name="window"),
        CheckConstraint("supply_quantity > 0", name="supply_quantity"),
        CheckConstraint("min_bid_quantity > 0", name="min_bid_quantity"),
        CheckConstraint("quantity_step > 0", name="quantity_step"),
        CheckConstraint("price_tick > 0", name="price_tick"),
        CheckConstraint("public_floor_price > 0", name="public_floor_price"),
        CheckConstraint("reserve_price > 0", name="reserve_price"),
        CheckConstraint(
            "reserve_price IS NULL OR public_floor_price IS NULL"
            " OR reserve_price >= public_floor_price",
            name="reserve_floor",
        ),
        CheckConstraint("max_bidder_quantity > 0", name="max_bidder_quantity"),
        CheckConstraint(
            "max_bidder_share_bps IS NULL"
            " OR (max_bidder_share_bps BETWEEN 1 AND 10000 AND max_bidder_quantity IS NOT NULL)",
            name="max_bidder_share_bps",
        ),
        CheckConstraint(values_in("undersubscribed", Undersubscribed), name="undersubscribed"),
        CheckConstraint("max_bids_per_bidder > 0", name="max_bids_per_bidder"),
        CheckConstraint(f"reserve_commitment ~ {HEX64}", name="reserve_commitment"),
        CheckConstraint(f"reserve_nonce ~ {HEX64}", name="reserve_nonce"),
        CheckConstraint(f"seed_commitment ~ {HEX64}", name="seed_commitment"),
        CheckConstraint(f"seed ~ {HEX64}", name="seed"),
        CheckConstraint(f"seed_nonce ~ {HEX64}", name="seed_nonce"),
        # A series creates at most one auction per window (the scheduler relies on it).
        UniqueConstraint("series_id", "opens_at"),
    )

    title: Mapped[str] = mapped_column(String(200), nullable=False)
    format: Mapped[ClearingFormat] = mapped_column(String(20), nullable=False)
    status: Mapped[AuctionStatus] = mapped_column(String(20), nullable=False)
    created_by_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    opens_at: Mapped[datetime] = mapped_column(nullable=False)
    closes_at: Mapped[datetime] = mapped_column(nullable=False, index=True)
    supply_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    min_bid_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quantity_step: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price_tick: Mapped[int] = mapped_column(BigInteger, nullable=False)
    public_floor_price: Mapped[int | None] = mapped_column(BigInteger)
    # Confidential until the auction is cleared: never in an API response before then.
    reserve_price: Mapped[int | None] = mapped_column(BigInteger)
    max_bidder_quantity: Mapped[int | None] = mapped_column(BigInteger)
    # When the cap was given as a share of supply (basis points): max_bidder_quantity is then
    # the cap it converted to at creation, the one the bids and the clearing use.
    max_bidder_share_bps: Mapped[int | None] = mapped_column(Integer)
    max_bids_per_bidder: Mapped[int | None] = mapped_column(Integer)
    tie_break: Mapped[TieBreak] = mapped_column(String(20), nullable=False)
    undersubscribed: Mapped[Undersubscribed] = mapped_column(
        String(20), nullable=False, server_default=text("'cancel'")
    )
    reserve_commitment: Mapped[str] = mapped_column(String(64), nullable=False)
    reserve_nonce: Mapped[str] = mapped_column(String(64), nullable=False)
    seed_commitment: Mapped[str] = mapped_column(String(64), nullable=False)
    seed: Mapped[str] = mapped_column(String(64), nullable=False)
    seed_nonce: Mapped[str] = mapped_column(String(64), nullable=False)
    # The calendar series that created it (None for an auction created on its own).
    series_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("auction_series.id", ondelete="RESTRICT")
    )

    supply: Mapped[list[AuctionSupply]] = relationship(
        lazy="raise", order_by="AuctionSupply.batch_id", foreign_keys="AuctionSupply.auction_id"
    )

    def add_supply(self, quantity: int, now: datetime) -> None:
        """Grow the supply (a consignment, a carry-over; only before bidding opens) and, when
        the cap was given as a share, the absolute cap with it: the share applies to the
        supply that is finally sold, not to the creator's first lots."""
        self.supply_quantity += quantity
        if self.max_bidder_share_bps is not None:
            self.max_bidder_quantity = share_cap(
                self.supply_quantity, self.max_bidder_share_bps, self.quantity_step
            )
        self.updated_at = now


class AuctionSupply(IdMixin, Base):
    """One lot of the auction's supply: credits of one batch held from one seller (the creator,
    a consignor, or the creator's unsold credits carried over from an earlier auction of the
    series). Several rows may share a batch; ``sold_quantity`` and ``proceeds`` are written by
    the close (pro rata, see :mod:`app.auction.settlement`)."""

    __tablename__ = "auction_supply"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("sold_quantity >= 0 AND sold_quantity <= quantity", name="sold_quantity"),
        CheckConstraint("proceeds >= 0", name="proceeds"),
        CheckConstraint("(sold_quantity IS NULL) = (proceeds IS NULL)", name="settled"),
    )

    auction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auctions.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The registry hold (offsets.hold_credits) on the seller's credits.
    credit_hold_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ledger_holds.id", ondelete="RESTRICT"), nullable=False, unique=True
    )
    # Whose credits these are and who is paid for them.
    seller_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    # The auction whose unsold credits these are (series carry-over); None otherwise.
    carried_from_auction_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("auctions.id", ondelete="RESTRICT")
    )
    sold_quantity: Mapped[int | None] = mapped_column(BigInteger)
    proceeds: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(nullable=False)


class AuctionBid(IdMixin, TimestampMixin, Base):
    __tablename__ = "auction_bids"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'withdrawn')", name="status"),
        CheckConstraint("price > 0", name="price"),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint(f"commitment ~ {HEX64}", name="commitment"),
        CheckConstraint(f"nonce ~ {HEX64}", name="nonce"),
        CheckConstraint("amendments >= 0", name="amendments"),
        CheckConstraint("(amendments = 0) = (amended_at IS NULL)", name="amended_at"),
        Index(
            "ix_auction_bids_auction_id_bidder_organization_id",
            "auction_id",
            "bidder_organization_id",
        ),
        # The group cap sums a group's active bids at every bid.
        Index("ix_auction_bids_auction_id_group", "auction_id", "group"),
        # The target of the allocations' one foreign key (bid, auction and bidder agree).
        UniqueConstraint("id", "auction_id", "bidder_organization_id"),
    )

    auction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auctions.id", ondelete="RESTRICT"), nullable=False
    )
    bidder_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    price: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[BidStatus] = mapped_column(String(20), nullable=False)
    # The bidder's cash hold in this auction, shared by all its active bids: its remaining
    # amount is the sum of their price × quantity (app.auction.service keeps it so).
    cash_hold_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ledger_holds.id", ondelete="RESTRICT"), nullable=False
    )
    commitment: Mapped[str] = mapped_column(String(64), nullable=False)
    # Kept to be revealed by the post-clearing audit; returned to the bidder once.
    nonce: Mapped[str] = mapped_column(String(64), nullable=False)
    submitted_seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True, nullable=False)
    # The bidder's corporate group when the bid was placed (organizations.group): the group
    # caps count it, so a later change of the organisation's group cannot alter the result.
    group: Mapped[str | None] = mapped_column(String(100))
    # How many times the bid was amended (PATCH), and when last; price, quantity, commitment,
    # nonce (and submitted_seq when it lost its time priority) are the amended ones.
    amendments: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    amended_at: Mapped[datetime | None] = mapped_column()


class AuctionResult(Base):
    """The published figures of a cleared (settled or cancelled) auction, one row per auction,
    written once by the close in the same transaction as the settlement."""

    __tablename__ = "auction_results"
    __table_args__ = (
        CheckConstraint(values_in("status", ClearingStatus), name="status"),
        CheckConstraint("sold_quantity >= 0 AND sold_quantity <= offered_quantity", name="sold"),
        CheckConstraint("unsold_quantity = offered_quantity - sold_quantity", name="unsold"),
        CheckConstraint("revenue >= 0", name="revenue"),
        CheckConstraint(
            "carried_over_quantity >= 0 AND carried_over_quantity <= unsold_quantity",
            name="carried_over_quantity",
        ),
    )

    auction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auctions.id", ondelete="RESTRICT"), primary_key=True
    )
    status: Mapped[ClearingStatus] = mapped_column(String(20), nullable=False)
    clearing_price: Mapped[int | None] = mapped_column(BigInteger)
    average_price: Mapped[int | None] = mapped_column(BigInteger)
    median_price: Mapped[int | None] = mapped_column(BigInteger)
    min_price: Mapped[int | None] = mapped_column(BigInteger)
    max_price: Mapped[int | None] = mapped_column(BigInteger)
    offered_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bid_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    eligible_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sold_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    unsold_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cover_ratio_numerator: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cover_ratio_denominator: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cover_ratio_permille: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bidders: Mapped[int] = mapped_column(Integer, nullable=False)
    winners: Mapped[int] = mapped_column(Integer, nullable=False)
    revenue: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cleared_at: Mapped[datetime] = mapped_column(nullable=False)
    # The creator's unsold credits added to the next auction of the series (carry-over), and
    # that auction once known (None while the carry-over waits on the series).
    carried_over_quantity: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    carried_to_auction_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("auctions.id", ondelete="RESTRICT")
    )


class AuctionAllocation(IdMixin, Base):
    """One winning bid's award: what it gets and pays (written by the close)."""

    __tablename__ = "auction_allocations"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("price > 0", name="price"),
        CheckConstraint("amount = price * quantity", name="amount"),
        Index(
            "ix_auction_allocations_auction_id_bidder_organization_id",
            "auction_id",
            "bidder_organization_id",
        ),
        # One foreign key for the three columns (migration 0014): an allocation names a bid of
        # its auction and its bidder, and the bid's own keys reach the auction and the
        # organisation. A close inserts 50,000 allocations: one check each, not three.
        ForeignKeyConstraint(
            ["bid_id", "auction_id", "bidder_organization_id"],
            ["auction_bids.id", "auction_bids.auction_id", "auction_bids.bidder_organization_id"],
            name="auction_allocations_bid_fkey",
            ondelete="RESTRICT",
        ),
    )

    auction_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    bid_id: Mapped[uuid.UUID] = mapped_column(nullable=False, unique=True)
    bidder_organization_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price: Mapped[int] = mapped_column(BigInteger, nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    tie_selected: Mapped[bool] = mapped_column(Boolean, nullable=False)


class AuctionSeries(IdMixin, TimestampMixin, Base):
    """A calendar of recurring auctions: the same template on the given weekdays, each in the
    same daily window (Asia/Tokyo), created ``horizon_days`` ahead by a periodic task."""

    __tablename__ = "auction_series"
    __table_args__ = (
        CheckConstraint(values_in("format", ClearingFormat), name="format"),
        CheckConstraint("closes_time > opens_time", name="window"),
        CheckConstraint("horizon_days > 0", name="horizon_days"),
        CheckConstraint(
            "cardinality(weekdays) > 0 AND weekdays <@ ARRAY[1, 2, 3, 4, 5, 6, 7]",
            name="weekdays",
        ),
    )

    title: Mapped[str] = mapped_column(String(200), nullable=False)
    format: Mapped[ClearingFormat] = mapped_column(String(20), nullable=False)
    created_by_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    # [{"batch_id": "…", "quantity": n}, …]: the supply of each auction.
    supply: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
    # min_bid_quantity, quantity_step, price_tick, public_floor_price, reserve_price,
    # max_bidder_quantity, max_bids_per_bidder, tie_break (``schemas.SeriesRules``).
    rules: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    # ISO weekdays, 1 = Monday … 7 = Sunday.
    weekdays: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    # The daily bidding window, wall-clock times in Asia/Tokyo.
    opens_time: Mapped[time] = mapped_column(Time, nullable=False)
    closes_time: Mapped[time] = mapped_column(Time, nullable=False)
    horizon_days: Mapped[int] = mapped_column(Integer, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # Unsold credits of a closed auction go to the next auction of the series (README).
    carry_over: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    # Carry-overs waiting for the series' next auction to be created:
    # [{"batch_id", "quantity", "hold_id", "from_auction_id"}, …] (credits still held).
    pending_carry_over: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
