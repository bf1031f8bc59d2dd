"""Sealed-bid auctions: creation (supply held from the creator), bids (cash held), withdrawal.

Status on read: the stored status moves scheduled → open → closed only when a job or the
close endpoint (a later session) writes it, so every read derives it from the clock as well:
a ``scheduled`` or ``open`` auction is ``open`` from ``opens_at`` and ``closed`` from
``closes_at`` (:func:`effective_status`). Later statuses (cleared, settled, cancelled) are
stored only.

Bids racing the close: placing or withdrawing a bid takes ``FOR SHARE`` on the auction row and
reads the clock *after* getting it. Whatever closes the auction must take ``FOR UPDATE`` on
that row, so a bid is either committed before the close reads the bids, or sees the auction
closed. One bidder's bids in one auction are serialised by an advisory lock, so the caps
(``max_bids_per_bidder``, ``max_bidder_quantity``, both over the bidder's active bids) hold
under concurrency; cash is held by the ledger, which refuses to go below zero.

The reserve price is confidential until clearing: :func:`visible_reserve` is the only way a
read model gets it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import audit, commitments
from app.auction.clearing import AuctionRules, Bid, validate_bid
from app.auction.errors import (
    AuctionNotCleared,
    AuctionNotFound,
    AuctionNotOpen,
    BidderQuantityExceeded,
    BidNotActive,
    BidNotFound,
    InvalidAuction,
    InvalidBid,
    OwnAuction,
    TooManyBids,
)
from app.auction.models import (
    Auction,
    AuctionAllocation,
    AuctionBid,
    AuctionResult,
    AuctionStatus,
    AuctionSupply,
    BidStatus,
)
from app.auction.repository import AuctionRepository, BidRepository, ResultRepository
from app.auction.schemas import AuctionCreate
from app.core.ids import new_id
from app.core.pagination import Page, PageParams
from app.core.time import utc_now
from app.ledger import service as ledger_service
from app.offsets import service as offsets_service

REVEALED = frozenset({AuctionStatus.cleared, AuctionStatus.settled})
# Results and the audit exist once the close has run (a cancelled close publishes them too).
PUBLISHED = frozenset({AuctionStatus.cleared, AuctionStatus.settled, AuctionStatus.cancelled})


def effective_status(auction: Auction, now: datetime | None = None) -> AuctionStatus:
    """The status, with scheduled → open → closed derived from the clock."""
    status = AuctionStatus(auction.status)
    if status not in (AuctionStatus.scheduled, AuctionStatus.open):
        return status
    now = now or utc_now()
    if now >= auction.closes_at:
        return AuctionStatus.closed
    if now >= auction.opens_at:
        return AuctionStatus.open
    return AuctionStatus.scheduled


def visible_reserve(auction: Auction) -> int | None:
    """The reserve price, only once the auction is cleared (never before, to anyone)."""
    return auction.reserve_price if AuctionStatus(auction.status) in REVEALED else None


def rules_of(auction: Auction) -> AuctionRules:
    return AuctionRules(
        format=auction.format,
        supply=auction.supply_quantity,
        reserve_price=auction.reserve_price,
        min_bid_quantity=auction.min_bid_quantity,
        quantity_step=auction.quantity_step,
        price_tick=auction.price_tick,
        max_bidder_quantity=auction.max_bidder_quantity,
        tie_break=auction.tie_break,
        seed=bytes.fromhex(auction.seed),
    )


# --- auctions --------------------------------------------------------------------------


async def create_auction(
    session: AsyncSession,
    organization_id: uuid.UUID,
    body: AuctionCreate,
    *,
    series_id: uuid.UUID | None = None,
) -> Auction:
    """Create the auction, hold its supply from the creator's credits, and queue its close
    (``auction.close`` at ``closes_at``, in this transaction; the every-minute
    ``auction.close_due`` sweep closes it too if that job is lost)."""
    # Imported here: the tasks module imports this one.
    from app.auction.tasks import schedule_close

    now = utc_now()
    if body.closes_at <= now:
        raise InvalidAuction("closes_at must be in the future", field="closes_at")
    auction_id = new_id()
    reserve_nonce, seed, seed_nonce = (
        commitments.new_nonce(),
        commitments.new_seed(),
        commitments.new_nonce(),
    )
    auction = Auction(
        id=auction_id,
        title=body.title,
        format=body.format,
        status=AuctionStatus.open if body.opens_at <= now else AuctionStatus.scheduled,
        created_by_organization_id=organization_id,
        opens_at=body.opens_at,
        closes_at=body.closes_at,
        supply_quantity=sum(s.quantity for s in body.supply),
        min_bid_quantity=body.min_bid_quantity,
        quantity_step=body.quantity_step,
        price_tick=body.price_tick,
        public_floor_price=body.public_floor_price,
        reserve_price=body.reserve_price,
        max_bidder_quantity=body.max_bidder_quantity,
        max_bids_per_bidder=body.max_bids_per_bidder,
        tie_break=body.tie_break,
        reserve_commitment=commitments.reserve_commitment(
            auction_id, body.reserve_price, reserve_nonce
        ),
        reserve_nonce=reserve_nonce,
        seed_commitment=commitments.seed_commitment(auction_id, seed, seed_nonce),
        seed=seed,
        seed_nonce=seed_nonce,
        series_id=series_id,
        created_at=now,
        updated_at=now,
    )
    rules_of(auction)  # the clearing accepts these rules (raises on a bug, not on input)
    supply = []
    # Batches are locked in id order, so two creations never deadlock.
    for item in sorted(body.supply, key=lambda s: s.batch_id):
        hold_id = await offsets_service.hold_credits(
            session,
            organization_id,
            item.batch_id,
            item.quantity,
            reference=f"auction:{auction_id}:supply",
        )
        supply.append(
            AuctionSupply(
                auction_id=auction_id,
                batch_id=item.batch_id,
                quantity=item.quantity,
                credit_hold_id=hold_id,
            )
        )
    auction.supply = supply
    AuctionRepository(session).add(auction)
    await session.flush()
    await schedule_close(session, auction)
    return auction


async def get_auction(session: AsyncSession, auction_id: uuid.UUID) -> Auction:
    auction = await AuctionRepository(session).load(auction_id)
    if auction is None:
        raise AuctionNotFound("No such auction.", auction_id=str(auction_id))
    return auction


async def list_auctions(session: AsyncSession, params: PageParams) -> Page[Auction]:
    return await AuctionRepository(session).list_page(params)


# --- bids ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlacedBid:
    bid: AuctionBid
    nonce: str


async def _lock_open_auction(session: AsyncSession, auction_id: uuid.UUID) -> Auction:
    auction = await AuctionRepository(session).load(auction_id, lock="share")
    if auction is None:
        raise AuctionNotFound("No such auction.", auction_id=str(auction_id))
    return auction


def _require_open(auction: Auction) -> None:
    # The clock is read under the row lock: see the module docstring.
    status = effective_status(auction, utc_now())
    if status != AuctionStatus.open:
        raise AuctionNotOpen(
            f"The auction is {status.value}: bids are taken only while it is open.",
            auction_status=status.value,
        )


async def place_bid(
    session: AsyncSession,
    bidder_id: uuid.UUID,
    auction_id: uuid.UUID,
    price: int,
    quantity: int,
) -> PlacedBid:
    auction = await _lock_open_auction(session, auction_id)
    if auction.created_by_organization_id == bidder_id:
        raise OwnAuction("An auction's creator cannot bid in it.")
    _require_open(auction)
    bid_id = new_id()
    reasons = validate_bid(
        rules_of(auction),
        Bid(id=str(bid_id), bidder=str(bidder_id), price=price, quantity=quantity, submitted_seq=0),
    )
    if auction.public_floor_price is not None and price < auction.public_floor_price:
        reasons.append(f"price must be at least the public floor ({auction.public_floor_price})")
    if reasons:
        raise InvalidBid(reasons)

    bids = BidRepository(session)
    await bids.lock_bidder(auction.id, bidder_id)
    count, total = await bids.active_totals(auction.id, bidder_id)
    if auction.max_bids_per_bidder is not None and count >= auction.max_bids_per_bidder:
        raise TooManyBids(
            f"At most {auction.max_bids_per_bidder} active bids per bidder.",
            max_bids_per_bidder=auction.max_bids_per_bidder,
        )
    if auction.max_bidder_quantity is not None and total + quantity > auction.max_bidder_quantity:
        raise BidderQuantityExceeded(
            f"Active bids may ask for at most {auction.max_bidder_quantity} credits in all;"
            f" {total} already asked.",
            max_bidder_quantity=auction.max_bidder_quantity,
            active_quantity=total,
        )

    hold_id = await ledger_service.reserve(
        session,
        bidder_id,
        ledger_service.CASH,
        price * quantity,
        reference=f"auction:{auction.id}:bid:{bid_id}",
    )
    nonce = commitments.new_nonce()
    now = utc_now()
    bid = bids.add(
        AuctionBid(
            id=bid_id,
            auction_id=auction.id,
            bidder_organization_id=bidder_id,
            price=price,
            quantity=quantity,
            status=BidStatus.active,
            cash_hold_id=hold_id,
            commitment=commitments.bid_commitment(auction.id, bid_id, price, quantity, nonce),
            nonce=nonce,
            created_at=now,
            updated_at=now,
        )
    )
    await session.flush()
    await session.refresh(bid, ["submitted_seq"])
    return PlacedBid(bid=bid, nonce=nonce)


async def list_own_bids(
    session: AsyncSession, bidder_id: uuid.UUID, auction_id: uuid.UUID
) -> list[AuctionBid]:
    await get_auction(session, auction_id)
    return await BidRepository(session).list_own(auction_id, bidder_id)


async def withdraw_bid(
    session: AsyncSession, bidder_id: uuid.UUID, auction_id: uuid.UUID, bid_id: uuid.UUID
) -> None:
    auction = await _lock_open_auction(session, auction_id)
    bids = BidRepository(session)
    await bids.lock_bidder(auction.id, bidder_id)
    bid = await bids.own(auction.id, bidder_id, bid_id, for_update=True)
    if bid is None:  # another organisation's bid is not found either
        raise BidNotFound("No such bid.", bid_id=str(bid_id))
    _require_open(auction)
    if bid.status != BidStatus.active:
        raise BidNotActive(f"The bid is {bid.status}.", bid_status=str(bid.status))
    await ledger_service.release(session, bid.cash_hold_id)
    bid.status = BidStatus.withdrawn
    bid.updated_at = utc_now()
    await session.flush()


# --- results and audit (after the close: app.auction.settlement) -------------------------


@dataclass(frozen=True, slots=True)
class Results:
    auction: Auction
    result: AuctionResult
    own_allocations: list[AuctionAllocation]


async def _cleared(session: AsyncSession, auction_id: uuid.UUID) -> tuple[Auction, AuctionResult]:
    auction = await get_auction(session, auction_id)
    result = await ResultRepository(session).result(auction.id)
    if result is None or AuctionStatus(auction.status) not in PUBLISHED:
        status = effective_status(auction)
        raise AuctionNotCleared(
            f"The auction is {status.value}: results are published once it is settled.",
            auction_status=status.value,
        )
    return auction, result


async def get_results(
    session: AsyncSession, organization_id: uuid.UUID, auction_id: uuid.UUID
) -> Results:
    auction, result = await _cleared(session, auction_id)
    own = await ResultRepository(session).allocations(auction.id, organization_id)
    return Results(auction, result, own)


async def get_audit(session: AsyncSession, auction_id: uuid.UUID) -> audit.Document:
    auction, result = await _cleared(session, auction_id)
    results = ResultRepository(session)
    bids = await results.cleared_bids(auction.id)
    allocations = await results.allocations(auction.id)
    return audit.build(auction, result, bids, allocations)
