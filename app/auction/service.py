"""Sealed-bid auctions: creation (supply held from the creator), bids (cash held), withdrawal.

Status on read: the stored status moves scheduled → open → closed only when a job or the
close endpoint (a later session) writes it, so every read derives it from the clock as well:
a ``scheduled`` or ``open`` auction is ``open`` from ``opens_at`` and ``closed`` from
``closes_at`` (:func:`effective_status`). Later statuses (cleared, settled, cancelled) are
stored only.

Bids racing the close: placing, amending or withdrawing a bid takes ``FOR SHARE`` on the
auction row and reads the clock *after* getting it. Whatever closes the auction must take
``FOR UPDATE`` on that row, so a bid (or an amendment) is either committed before the close
reads the bids, or sees the auction closed. One bidder's bids in one auction are serialised by
an advisory lock, and, when the bidder belongs to a corporate group, the whole group's by
another one taken first, so the caps (``max_bids_per_bidder`` over the bidder's active bids,
``max_bidder_quantity`` over the bidder's and over its group's) hold under concurrency; cash
is held by the ledger, which refuses to go below zero. A bidder has one cash hold per auction,
shared by its active bids and always equal to the sum of their ``price × quantity``: placing a
bid grows it (``ledger.add_to_hold``), withdrawing one gives back that bid's part, amending
one changes it by the difference, so the close settles one hold per bidder. The group is the
organisation's ``group`` when the bid is placed, stored on the bid: the caps, the close and
the audit all use that one.

The reserve price is confidential until clearing: :func:`visible_reserve` is the only way a
read model gets it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts_service
from app.auction import audit, commitments, monitor
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
    """The reserve price, only once the close has published the results (never before, to
    anyone). A cancelled close reveals it too: its audit does, so anyone can check that the
    cancellation followed the rules (e.g. no demand at or above the reserve)."""
    return auction.reserve_price if AuctionStatus(auction.status) in PUBLISHED else None


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
        undersubscribed=auction.undersubscribed,
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
        max_bidder_share_bps=body.max_bidder_share_bps,
        max_bids_per_bidder=body.max_bids_per_bidder,
        tie_break=body.tie_break,
        undersubscribed=body.undersubscribed,
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
    # A cap given as a share becomes absolute now, against the supply the auction offers.
    auction.max_bidder_quantity = body.bidder_cap(auction.supply_quantity)
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
                seller_organization_id=organization_id,
                created_at=now,
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


def _bid_reasons(auction: Auction, bid_id: uuid.UUID, price: int, quantity: int) -> list[str]:
    """What is wrong with a bid (new or amended) under the auction's bid format."""
    reasons = validate_bid(
        rules_of(auction),
        Bid(id=str(bid_id), bidder="", price=price, quantity=quantity, submitted_seq=0),
    )
    if auction.public_floor_price is not None and price < auction.public_floor_price:
        reasons.append(f"price must be at least the public floor ({auction.public_floor_price})")
    return reasons


async def _lock_bidding(
    bids: BidRepository, auction_id: uuid.UUID, bidder_id: uuid.UUID, group: str | None
) -> None:
    """Serialise the bid changes the caps count: the group's first (so two members racing
    cannot both pass the group cap), then the bidder's (its own cap and bid count). Always in
    this order, and one group per transaction, so two transactions never wait on each other
    in a cycle."""
    if group is not None:
        await bids.lock_group(auction_id, group)
    await bids.lock_bidder(auction_id, bidder_id)


async def _check_quantity_caps(
    bids: BidRepository,
    auction: Auction,
    bidder_id: uuid.UUID,
    group: str | None,
    quantity: int,
    *,
    exclude: uuid.UUID | None = None,
) -> None:
    """``quantity`` more must fit ``max_bidder_quantity`` over the bidder's active bids and
    over those of its group (``exclude``: the bid being amended, counted as ``quantity``)."""
    cap = auction.max_bidder_quantity
    if cap is None:
        return
    _, total = await bids.active_totals(auction.id, bidder_id, exclude=exclude)
    if total + quantity > cap:
        raise BidderQuantityExceeded(
            f"Active bids may ask for at most {cap} credits in all; {total} already asked.",
            max_bidder_quantity=cap,
            active_quantity=total,
        )
    if group is None:
        return
    group_total = await bids.group_active_total(auction.id, group, exclude=exclude)
    if group_total + quantity > cap:
        # The other members' figures are not disclosed: only that the group is at its cap.
        raise BidderQuantityExceeded(
            f"The active bids of your corporate group may ask for at most {cap} credits in all.",
            max_bidder_quantity=cap,
            active_quantity=total,
            scope="group",
        )


def bidder_hold_reference(auction_id: uuid.UUID, bidder_id: uuid.UUID) -> str:
    return f"auction:{auction_id}:bidder:{bidder_id}"


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
    if any(lot.seller_organization_id == bidder_id for lot in auction.supply):
        # A seller bidding for its own credits could set the price it is paid (shill bidding).
        raise OwnAuction("An organisation that consigned credits to an auction cannot bid in it.")
    _require_open(auction)
    bid_id = new_id()
    reasons = _bid_reasons(auction, bid_id, price, quantity)
    if reasons:
        raise InvalidBid(reasons)

    # The group as it is now is captured on the bid: the caps, the close and the audit use it.
    group = (await accounts_service.require_organization(session, bidder_id)).group
    bids = BidRepository(session)
    await _lock_bidding(bids, auction.id, bidder_id, group)
    count, _ = await bids.active_totals(auction.id, bidder_id)
    if auction.max_bids_per_bidder is not None and count >= auction.max_bids_per_bidder:
        raise TooManyBids(
            f"At most {auction.max_bids_per_bidder} active bids per bidder.",
            max_bids_per_bidder=auction.max_bids_per_bidder,
        )
    await _check_quantity_caps(bids, auction, bidder_id, group, quantity)

    hold_id = await bids.bidder_hold(auction.id, bidder_id)
    if hold_id is None:
        hold_id = await ledger_service.reserve(
            session,
            bidder_id,
            ledger_service.CASH,
            price * quantity,
            reference=bidder_hold_reference(auction.id, bidder_id),
        )
    else:
        await ledger_service.add_to_hold(
            session, hold_id, price * quantity, reference=f"auction:{auction.id}:bid:{bid_id}"
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
            group=group,
            amendments=0,
            created_at=now,
            updated_at=now,
        )
    )
    await session.flush()
    await session.refresh(bid, ["submitted_seq"])
    return PlacedBid(bid=bid, nonce=nonce)


async def amend_bid(
    session: AsyncSession,
    bidder_id: uuid.UUID,
    auction_id: uuid.UUID,
    bid_id: uuid.UUID,
    price: int | None,
    quantity: int | None,
) -> PlacedBid:
    """Change an active bid's price and/or quantity while the auction is open.

    The same checks as placing it (bid format, public floor, caps with this bid's old
    quantity left out); the group stays the one captured when the bid was placed. The
    bidder's cash hold grows or shrinks by the change of ``price × quantity`` in this
    transaction, so a shortfall (409) leaves the bid and the hold as they were. The content
    changed, so the bid gets a new nonce and commitment (the audit publishes the final ones).

    Time priority (``time_priority`` ties): an amendment that only lowers the quantity keeps
    the bid's ``submitted_seq``, as an exchange keeps an order's place when its size is
    reduced; any other (a price change, a larger quantity) takes a new ``submitted_seq`` from
    the same sequence, so the bid goes behind every bid placed before it.
    """
    auction = await _lock_open_auction(session, auction_id)
    bids = BidRepository(session)
    # Unlocked read, for its group only (fixed at placement); the row is locked below.
    found = await bids.own(auction.id, bidder_id, bid_id, for_update=False)
    if found is None:  # another organisation's bid is not found either
        raise BidNotFound("No such bid.", bid_id=str(bid_id))
    group = found.group
    await _lock_bidding(bids, auction.id, bidder_id, group)
    bid = await bids.own(auction.id, bidder_id, bid_id, for_update=True)
    assert bid is not None  # bids are never deleted
    _require_open(auction)
    if bid.status != BidStatus.active:
        raise BidNotActive(f"The bid is {bid.status}.", bid_status=str(bid.status))
    new_price = bid.price if price is None else price
    new_quantity = bid.quantity if quantity is None else quantity
    reasons = _bid_reasons(auction, bid.id, new_price, new_quantity)
    if reasons:
        raise InvalidBid(reasons)
    await _check_quantity_caps(bids, auction, bidder_id, group, new_quantity, exclude=bid.id)

    # The bidder's hold grows or shrinks by the change of this bid's guarantee.
    change = new_price * new_quantity - bid.price * bid.quantity
    reference = f"auction:{auction.id}:bid:{bid.id}"
    if change > 0:
        await ledger_service.add_to_hold(session, bid.cash_hold_id, change, reference=reference)
    elif change < 0:
        await ledger_service.release(session, bid.cash_hold_id, -change, reference=reference)
    keeps_place = new_price == bid.price and new_quantity <= bid.quantity
    if not keeps_place:
        bid.submitted_seq = await bids.next_submitted_seq()
    nonce = commitments.new_nonce()
    now = utc_now()
    bid.price = new_price
    bid.quantity = new_quantity
    bid.nonce = nonce
    bid.commitment = commitments.bid_commitment(auction.id, bid.id, new_price, new_quantity, nonce)
    bid.amendments += 1
    bid.amended_at = now
    bid.updated_at = now
    await session.flush()
    return PlacedBid(bid=bid, nonce=nonce)


def bid_status(auction: Auction, bid: AuctionBid, allocated: bool) -> BidStatus:
    """The status the API shows: the stored one (``active``, ``withdrawn``) until the auction
    is cleared, then, for a bid still active at the close, ``won`` when it has an allocation
    (``allocated``) and ``lost`` otherwise. Nothing else decides a bid's outcome, so the close
    writes only the winners' allocations."""
    if bid.status == BidStatus.active and AuctionStatus(auction.status) in PUBLISHED:
        return BidStatus.won if allocated else BidStatus.lost
    return BidStatus(bid.status)


@dataclass(frozen=True, slots=True)
class OwnBid:
    bid: AuctionBid
    status: BidStatus


async def list_own_bids(
    session: AsyncSession, bidder_id: uuid.UUID, auction_id: uuid.UUID
) -> list[OwnBid]:
    auction = await get_auction(session, auction_id)
    bids = await BidRepository(session).list_own(auction_id, bidder_id)
    allocated: set[uuid.UUID] = set()
    if AuctionStatus(auction.status) in PUBLISHED:
        own = await ResultRepository(session).allocations(auction.id, bidder_id)
        allocated = {a.bid_id for a in own}
    return [OwnBid(b, bid_status(auction, b, b.id in allocated)) for b in bids]


async def withdraw_bid(
    session: AsyncSession, bidder_id: uuid.UUID, auction_id: uuid.UUID, bid_id: uuid.UUID
) -> None:
    auction = await _lock_open_auction(session, auction_id)
    bids = BidRepository(session)
    # Withdrawing only lowers the totals the caps count: the bidder's lock is enough.
    await bids.lock_bidder(auction.id, bidder_id)
    bid = await bids.own(auction.id, bidder_id, bid_id, for_update=True)
    if bid is None:  # another organisation's bid is not found either
        raise BidNotFound("No such bid.", bid_id=str(bid_id))
    _require_open(auction)
    if bid.status != BidStatus.active:
        raise BidNotActive(f"The bid is {bid.status}.", bid_status=str(bid.status))
    # Only this bid's part of the bidder's hold: the rest still guarantees its other bids.
    await ledger_service.release(
        session,
        bid.cash_hold_id,
        bid.price * bid.quantity,
        reference=f"auction:{auction.id}:bid:{bid.id}",
    )
    bid.status = BidStatus.withdrawn
    bid.updated_at = utc_now()
    await session.flush()


# --- results and audit (after the close: app.auction.settlement) -------------------------


@dataclass(frozen=True, slots=True)
class Results:
    auction: Auction
    result: AuctionResult
    own_allocations: list[AuctionAllocation]
    demand_curve: list[tuple[int, int]]  # (price, quantity bid at it or higher), highest first


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
    results = ResultRepository(session)
    own = await results.allocations(auction.id, organization_id)
    return Results(auction, result, own, await results.demand_curve(auction.id))


@dataclass(frozen=True, slots=True)
class MonitorView:
    auction: Auction
    result: AuctionResult
    report: monitor.Report


async def get_monitor(session: AsyncSession, auction_id: uuid.UUID) -> MonitorView:
    """The market monitor's figures, once the close has run (409 before)."""
    auction, result = await _cleared(session, auction_id)
    results = ResultRepository(session)
    bids = await results.cleared_bids(auction.id)
    allocations = await results.allocations(auction.id)
    report = monitor.report(
        [
            monitor.MonitorBid(
                str(b.id), str(b.bidder_organization_id), b.group, b.price, b.quantity
            )
            for b in bids
        ],
        [
            monitor.MonitorAward(str(a.bid_id), str(a.bidder_organization_id), a.quantity)
            for a in allocations
        ],
        # Uniform: the clearing price; pay-as-bid: the lowest winning price (the margin).
        reference_price=(
            result.clearing_price if result.clearing_price is not None else result.min_price
        ),
    )
    return MonitorView(auction, result, report)


async def get_audit(session: AsyncSession, auction_id: uuid.UUID) -> audit.Document:
    auction, result = await _cleared(session, auction_id)
    results = ResultRepository(session)
    bids = await results.cleared_bids(auction.id)
    allocations = await results.allocations(auction.id)
    return audit.build(auction, result, bids, allocations)
