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

from app.auction.clearing import ClearingFormat, ClearingStatus, TieBreak, Undersubscribed
from app.auction.models import AuctionStatus, BidStatus, share_cap

MAX_QUANTITY = 1_000_000_000  # credits
MAX_PRICE = 1_000_000_000  # JPY per credit; price × quantity stays within BIGINT

Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
Price = Annotated[int, Field(gt=0, le=MAX_PRICE, strict=True)]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ShareBps = Annotated[int, Field(ge=1, le=10_000, strict=True)]
BidsPerBidder = Annotated[int, Field(gt=0, le=1000, strict=True)]

UNDERSUBSCRIBED = (
    "When the eligible demand (at or above the reserve, after caps) is below the supply: "
    "`cancel` sells nothing (EU ETS), `sell_what_is_bid` sells every eligible bid in full "
    "(UK ETS, NZ) and leaves the rest unsold."
)
SHARE_BPS = (
    "The per-bidder (and per-group) cap as a share of the supply, in basis points "
    "(2500 = 25%): converted to `max_bidder_quantity` = supply × bps / 10000, rounded "
    "down to a multiple of `quantity_step`, at least one step; recomputed whenever the supply "
    "grows before bidding opens (consignments, carry-over). Give this or "
    "`max_bidder_quantity`, not both."
)


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
        default=None,
        description="Cap on the total quantity of the active bids of one bidder, and of all "
        "the members of one corporate group (organisation `group`).",
    )
    max_bidder_share_bps: ShareBps | None = Field(default=None, description=SHARE_BPS)
    max_bids_per_bidder: BidsPerBidder | None = None
    tie_break: TieBreak = TieBreak.random
    undersubscribed: Undersubscribed = Field(
        default=Undersubscribed.cancel, description=UNDERSUBSCRIBED
    )

    def bidder_cap(self, supply_quantity: int) -> int | None:
        """The absolute cap to store: as given, or converted from the share of the supply."""
        if self.max_bidder_share_bps is None:
            return self.max_bidder_quantity
        return share_cap(supply_quantity, self.max_bidder_share_bps, self.quantity_step)

    @model_validator(mode="after")
    def _consistent(self) -> AuctionCreate:
        if self.max_bidder_quantity is not None and self.max_bidder_share_bps is not None:
            raise ValueError("give max_bidder_quantity or max_bidder_share_bps, not both")
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
        description="null until the close publishes the results (settled, or cancelled): "
        "confidential before then."
    )
    reserve_commitment: str
    seed_commitment: str
    max_bidder_quantity: int | None = Field(
        description="The cap per bidder and per corporate group (converted from "
        "max_bidder_share_bps when the cap was given as a share)."
    )
    max_bidder_share_bps: int | None
    max_bids_per_bidder: int | None
    tie_break: TieBreak
    undersubscribed: Undersubscribed
    created_at: datetime


class BidCreate(Strict):
    price: Price
    quantity: Quantity


class BidUpdate(Strict):
    """An amendment: the new price and/or quantity (at least one)."""

    price: Price | None = None
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _something(self) -> BidUpdate:
        if self.price is None and self.quantity is None:
            raise ValueError("give price, quantity or both")
        return self


class BidRead(BaseModel):
    id: uuid.UUID
    auction_id: uuid.UUID
    price: int
    quantity: int
    amount: int = Field(description="price × quantity, held from the bidder's cash.")
    status: BidStatus
    commitment: str
    submitted_seq: int = Field(
        description="Arrival order, for time-priority ties; a new one when an amendment "
        "raises the price or the quantity (the bid goes to the back)."
    )
    amendments: int = Field(description="How many times the bid was amended.")
    amended_at: datetime | None
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


class DemandPointRead(BaseModel):
    price: int
    cumulative_quantity: int = Field(description="Quantity bid at this price or higher.")


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
    demand_curve: list[DemandPointRead] = Field(
        description="Anonymised demand: each distinct bid price, highest first, with the "
        "cumulative quantity bid at it or higher."
    )
    sellers: list[SellerSupply] = Field(
        description="Offered and sold quantity per seller (pro rata to what each supplied)."
    )
    consignments: list[ConsignmentRead] = Field(
        description="The caller's own supply lots, with what each sold and earned."
    )
    carried_over_quantity: int = Field(
        description="The creator's unsold credits added to the series' next auction."
    )
    carried_to_auction_id: uuid.UUID | None = Field(
        description="That auction, once it exists (null while the series has not created it)."
    )


class ConsignmentCreate(Strict):
    batch_id: uuid.UUID
    quantity: Quantity = Field(
        description="Credits to add to the supply: a multiple of the auction's quantity_step; "
        "held from the caller's credits until the close."
    )


class ConsignmentRead(BaseModel):
    """A supply lot of the caller's (consigned, the creator's own, or carried over)."""

    id: uuid.UUID
    auction_id: uuid.UUID
    batch_id: uuid.UUID
    quantity: int
    carried_from_auction_id: uuid.UUID | None = Field(
        description="The earlier auction of the series whose unsold credits these are."
    )
    sold_quantity: int | None = Field(description="Drawn pro rata at the close (null before).")
    proceeds: int | None = Field(
        description="JPY paid to the seller's available balance for this lot (null before)."
    )
    created_at: datetime


class SellerSupply(BaseModel):
    seller: str = Field(description="Anonymised: S1, S2… by each seller's first lot.")
    offered_quantity: int
    sold_quantity: int


class AuditRules(BaseModel):
    format: ClearingFormat
    supply: int
    min_bid_quantity: int
    quantity_step: int
    price_tick: int
    public_floor_price: int | None
    max_bidder_quantity: int | None = Field(description="Per bidder and per group.")
    max_bidder_share_bps: int | None = Field(
        default=None, description="The share max_bidder_quantity was converted from, if any."
    )
    max_bids_per_bidder: int | None
    tie_break: TieBreak
    undersubscribed: Undersubscribed


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
    group: str | None = Field(
        description="The bidder's corporate group when it bid, anonymised: G1, G2… by each "
        "group's first bid (null: none); the cap applies per group too."
    )
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
    sellers: list[SellerSupply] = Field(
        description="Offered and sold quantity per seller (consigned supply), anonymised."
    )


class MonitorWinner(BaseModel):
    organization_id: uuid.UUID
    quantity: int
    share_bps: int = Field(description="Of the quantity sold, in basis points.")


class MonitorConcentration(BaseModel):
    hhi_awarded_by_bidder: int | None = Field(
        description="Herfindahl-Hirschman index of the awarded quantity, 0–10000 (null: "
        "nothing sold)."
    )
    hhi_awarded_by_group: int | None = Field(
        description="The same by corporate group (a bidder without one is its own group)."
    )
    hhi_bid_by_bidder: int | None = Field(description="Of the bid quantity (null: no bid).")
    hhi_bid_by_group: int | None
    top1_share_bps: int | None = Field(description="Largest winner's share of the sold quantity.")
    top4_share_bps: int | None = Field(description="The four largest winners' share.")
    largest_winners: list[MonitorWinner] = Field(description="Up to four, largest first.")


class MonitorDispersion(BaseModel):
    """Bid prices weighted by quantity (each credit bid counts once); rounded down."""

    min_price: int
    max_price: int
    mean_price: int
    median_price: int
    std_dev: int = Field(description="Population standard deviation.")
    coefficient_of_variation_bps: int = Field(description="std_dev / mean, basis points.")
    q1_price: int
    q3_price: int
    interquartile_range: int


class AuctionMonitor(BaseModel):
    """The market monitor's view of a closed auction (platform only: it names bidders)."""

    auction_id: uuid.UUID
    clearing_status: ClearingStatus
    offered_quantity: int
    bid_quantity: int
    sold_quantity: int
    bidders: int
    groups: int = Field(description="Corporate groups bidding (a bidder without one counts).")
    winners: int
    concentration: MonitorConcentration
    dispersion: MonitorDispersion | None = Field(description="null when there was no bid.")
    reference_price: int | None = Field(
        description="The clearing price (uniform) or the lowest winning price (pay-as-bid)."
    )
    price_spread: int | None = Field(
        description="reference_price − the quantity-weighted mean bid price."
    )
    margin_share_bps: int | None = Field(
        description="Share of the bid quantity bid exactly at reference_price."
    )


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
    max_bidder_share_bps: ShareBps | None = Field(
        default=None, description="Converted against each auction's own supply."
    )
    max_bids_per_bidder: BidsPerBidder | None = None
    tie_break: TieBreak = TieBreak.random
    undersubscribed: Undersubscribed = Undersubscribed.cancel


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
    carry_over: bool = Field(
        default=True,
        description="Unsold credits of the creator's lots go to the series' next auction "
        "that has not opened yet (consigned credits go back to their sellers).",
    )

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
    carry_over: bool
    pending_carry_over_quantity: int = Field(
        description="Carried-over credits held for the next auction the series will create."
    )
    created_at: datetime
