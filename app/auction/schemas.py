from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from app.auction.clearing import ClearingFormat, ClearingStatus, TieBreak
from app.auction.models import AuctionStatus, BidStatus

MAX_QUANTITY = 1_000_000_000  # credits
MAX_PRICE = 1_000_000_000  # JPY per credit; price × quantity stays within BIGINT

Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
Price = Annotated[int, Field(gt=0, le=MAX_PRICE, strict=True)]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SupplyItem(Strict):
    batch_id: uuid.UUID
    quantity: Quantity


class AuctionCreate(Strict):
    title: Text200
    format: ClearingFormat
    supply: list[SupplyItem] = Field(min_length=1, max_length=100)
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    min_bid_quantity: Quantity = 1
    quantity_step: Quantity = 1
    price_tick: Price = 1
    public_floor_price: Price | None = Field(
        default=None, description="Published minimum price (JPY per t-CO2e)."
    )
    reserve_price: Price | None = Field(
        default=None,
        description="Confidential minimum price: only its commitment is shown until clearing.",
    )
    max_bidder_quantity: Quantity | None = Field(
        default=None, description="Cap on the total quantity of one bidder's active bids."
    )
    max_bids_per_bidder: Annotated[int, Field(gt=0, le=1000, strict=True)] | None = None
    tie_break: TieBreak = TieBreak.random

    @model_validator(mode="after")
    def _consistent(self) -> AuctionCreate:
        if self.closes_at <= self.opens_at:
            raise ValueError("closes_at must be after opens_at")
        if (
            self.reserve_price is not None
            and self.public_floor_price is not None
            and self.reserve_price < self.public_floor_price
        ):
            raise ValueError("reserve_price cannot be below public_floor_price")
        if len({s.batch_id for s in self.supply}) != len(self.supply):
            raise ValueError("each batch may appear once in supply")
        total = sum(s.quantity for s in self.supply)
        if total % self.quantity_step:
            raise ValueError("the total supply must be a multiple of quantity_step")
        if self.max_bidder_quantity is not None and self.max_bidder_quantity < self.quantity_step:
            raise ValueError("max_bidder_quantity must be at least quantity_step")
        return self


class SupplyRead(BaseModel):
    batch_id: uuid.UUID
    quantity: int


class AuctionRead(BaseModel):
    id: uuid.UUID
    title: str
    format: ClearingFormat
    status: AuctionStatus = Field(
        description="Derived from the clock for scheduled → open → closed when no job has "
        "moved it yet."
    )
    created_by_organization_id: uuid.UUID
    opens_at: datetime
    closes_at: datetime
    supply: list[SupplyRead]
    supply_quantity: int
    min_bid_quantity: int
    quantity_step: int
    price_tick: int
    public_floor_price: int | None
    reserve_price: int | None = Field(
        description="null until the auction is cleared (confidential before then)."
    )
    reserve_commitment: str
    seed_commitment: str
    max_bidder_quantity: int | None
    max_bids_per_bidder: int | None
    tie_break: TieBreak
    created_at: datetime


class BidCreate(Strict):
    price: Price
    quantity: Quantity


class BidRead(BaseModel):
    id: uuid.UUID
    auction_id: uuid.UUID
    price: int
    quantity: int
    amount: int = Field(description="price × quantity, held from the bidder's cash.")
    status: BidStatus
    commitment: str
    submitted_seq: int
    created_at: datetime


class BidCreated(BidRead):
    nonce: str = Field(
        description="The commitment's nonce, returned once: keep it to verify the commitment."
    )


class CoverRatio(BaseModel):
    numerator: int
    denominator: int
    permille: int = Field(description="bid quantity × 1000 / offered quantity, rounded down.")


class AllocationRead(BaseModel):
    bid_id: uuid.UUID
    quantity: int
    price: int = Field(description="Paid per credit: the clearing price, or the bid's own.")
    amount: int = Field(description="price × quantity, paid to the seller at settlement.")
    tie_selected: bool = Field(
        description="Won at a marginal price level that tied bids had to share."
    )


class AuctionResults(BaseModel):
    auction_id: uuid.UUID
    status: AuctionStatus
    clearing_status: ClearingStatus
    clearing_price: int | None = Field(description="Uniform-price auctions only.")
    average_price: int | None = Field(description="Volume-weighted, rounded down.")
    median_price: int | None
    min_winning_price: int | None
    max_winning_price: int | None
    offered_quantity: int
    bid_quantity: int
    sold_quantity: int
    unsold_quantity: int
    cover_ratio: CoverRatio
    bidders: int
    winners: int
    revenue: int
    cleared_at: datetime
    allocations: list[AllocationRead] = Field(description="The caller's own allocations only.")


class AuditRules(BaseModel):
    format: ClearingFormat
    supply: int
    min_bid_quantity: int
    quantity_step: int
    price_tick: int
    public_floor_price: int | None
    max_bidder_quantity: int | None
    max_bids_per_bidder: int | None
    tie_break: TieBreak
    undersubscribed: str


class AuditReserve(BaseModel):
    price: int | None = Field(description="The revealed confidential reserve (null: none).")
    nonce: str
    commitment: str = Field(description="As published at creation.")


class AuditSeed(BaseModel):
    seed: str = Field(description="The revealed tie-break seed (64 hex digits).")
    nonce: str
    commitment: str = Field(description="As published at creation.")


class AuditBid(BaseModel):
    bidder: str = Field(description="Anonymised: B1, B2… by each bidder's first bid.")
    bid_id: uuid.UUID
    price: int
    quantity: int
    submitted_seq: int
    nonce: str
    commitment: str
    allocated: int
    allocation_price: int | None
    tie_selected: bool


class AuditResults(BaseModel):
    status: ClearingStatus
    clearing_price: int | None
    average_price: int | None
    median_price: int | None
    min_winning_price: int | None
    max_winning_price: int | None
    offered_quantity: int
    bid_quantity: int
    sold_quantity: int
    unsold_quantity: int
    cover_ratio: CoverRatio
    bidders: int
    winners: int
    revenue: int


class AuditDocument(BaseModel):
    """Everything needed to recompute the result (``tanso auction verify``)."""

    version: str
    auction_id: uuid.UUID
    status: AuctionStatus
    rules: AuditRules
    reserve: AuditReserve
    seed: AuditSeed
    bids: list[AuditBid]
    results: AuditResults


# --- auction series (the tender calendar) ------------------------------------------------

ClockTime = Annotated[
    str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", strict=True)
]
Weekday = Annotated[int, Field(ge=1, le=7, strict=True)]


class SeriesRules(Strict):
    """The rules every auction of the series is created with (as in ``AuctionCreate``)."""

    min_bid_quantity: Quantity = 1
    quantity_step: Quantity = 1
    price_tick: Price = 1
    public_floor_price: Price | None = None
    reserve_price: Price | None = Field(
        default=None, description="Confidential: shown to the series' creator only."
    )
    max_bidder_quantity: Quantity | None = None
    max_bids_per_bidder: Annotated[int, Field(gt=0, le=1000, strict=True)] | None = None
    tie_break: TieBreak = TieBreak.random


class SeriesSchedule(Strict):
    weekdays: list[Weekday] = Field(
        min_length=1, max_length=7, description="ISO weekdays: 1 = Monday … 7 = Sunday."
    )
    opens_at: ClockTime = Field(description='Daily window opening, "HH:MM" in Asia/Tokyo.')
    closes_at: ClockTime = Field(description='Daily window close, "HH:MM" in Asia/Tokyo.')
    horizon_days: Annotated[int, Field(ge=1, le=90, strict=True)] = Field(
        default=14,
        description="Auctions are created for the windows of today and the next "
        "horizon_days - 1 days (Tokyo dates).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SeriesSchedule:
        if len(set(self.weekdays)) != len(self.weekdays):
            raise ValueError("each weekday may appear once")
        if self.closes_at <= self.opens_at:
            raise ValueError("closes_at must be after opens_at (the same day)")
        return self


class AuctionSeriesCreate(Strict):
    title: Text200
    format: ClearingFormat
    supply: list[SupplyItem] = Field(min_length=1, max_length=100)
    rules: SeriesRules = Field(default_factory=SeriesRules)
    schedule: SeriesSchedule
    active: bool = True

    def auction(self, title: str, opens_at: datetime, closes_at: datetime) -> AuctionCreate:
        """The body of one auction of the series, for the window ``opens_at``–``closes_at``."""
        return AuctionCreate(
            title=title,
            format=self.format,
            supply=self.supply,
            opens_at=opens_at,
            closes_at=closes_at,
            **self.rules.model_dump(),
        )

    @model_validator(mode="after")
    def _consistent(self) -> AuctionSeriesCreate:
        # The same checks as a single auction's (supply vs step, reserve vs floor, …).
        sample = datetime(2026, 1, 1, tzinfo=UTC)
        try:
            self.auction(self.title, sample, sample + timedelta(hours=1))
        except ValidationError as exc:
            raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from None
        return self


class AuctionSeriesRead(BaseModel):
    id: uuid.UUID
    title: str
    format: ClearingFormat
    created_by_organization_id: uuid.UUID
    supply: list[SupplyRead]
    rules: SeriesRules
    schedule: SeriesSchedule
    active: bool
    created_at: datetime
