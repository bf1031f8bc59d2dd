from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.accounts.dependencies import (
    AUTH_ERRORS,
    AdminDep,
    AnyKeyDep,
    AuctioneerDep,
    BidderDep,
    TraderDep,
)
from app.auction import consignment, settlement
from app.auction import series as series_service
from app.auction import service as auction_service
from app.auction.errors import (
    AuctionAlreadyClosed,
    AuctionNotCleared,
    AuctionNotFound,
    AuctionNotOpen,
    AuctionSeriesNotFound,
    BidderQuantityExceeded,
    BidNotActive,
    BidNotFound,
    ConsignmentClosed,
    InvalidAuction,
    InvalidBid,
    InvalidConsignment,
    NotAuctionCreator,
    OwnAuction,
    TooManyBids,
)
from app.auction.models import Auction, AuctionBid, AuctionSeries, AuctionSupply, BidStatus
from app.auction.schemas import (
    AllocationRead,
    AuctionCreate,
    AuctionMonitor,
    AuctionRead,
    AuctionResults,
    AuctionSeriesCreate,
    AuctionSeriesRead,
    AuditDocument,
    BidCreate,
    BidCreated,
    BidRead,
    BidUpdate,
    ConsignmentCreate,
    ConsignmentRead,
    CoverRatio,
    DemandPointRead,
    MonitorConcentration,
    MonitorDispersion,
    MonitorWinner,
    SellerSupply,
    SupplyRead,
)
from app.auction.tasks import create_series_auctions
from app.core.errors import problem_responses
from app.core.pagination import Page, PageDep
from app.db.session import SessionDep
from app.ledger.errors import InsufficientBalance
from app.offsets.errors import BatchNotFound, InsufficientCredits
from app.worker.defer import defer_in_session

auctions = APIRouter(prefix="/auctions", tags=["auctions"])
series = APIRouter(prefix="/auction-series", tags=["auction series"])


def auction_read(a: Auction) -> AuctionRead:
    return AuctionRead(
        id=a.id,
        title=a.title,
        format=a.format,
        status=auction_service.effective_status(a),
        created_by_organization_id=a.created_by_organization_id,
        opens_at=a.opens_at,
        closes_at=a.closes_at,
        supply=[SupplyRead(batch_id=s.batch_id, quantity=s.quantity) for s in a.supply],
        supply_quantity=a.supply_quantity,
        min_bid_quantity=a.min_bid_quantity,
        quantity_step=a.quantity_step,
        price_tick=a.price_tick,
        public_floor_price=a.public_floor_price,
        reserve_price=auction_service.visible_reserve(a),
        reserve_commitment=a.reserve_commitment,
        seed_commitment=a.seed_commitment,
        max_bidder_quantity=a.max_bidder_quantity,
        max_bidder_share_bps=a.max_bidder_share_bps,
        max_bids_per_bidder=a.max_bids_per_bidder,
        tie_break=a.tie_break,
        undersubscribed=a.undersubscribed,
        created_at=a.created_at,
    )


def bid_read(b: AuctionBid, status: BidStatus | None = None) -> BidRead:
    """``status``: the bid's outcome once cleared (``service.bid_status``); a bid just placed
    or amended shows its stored status."""
    return BidRead(
        id=b.id,
        auction_id=b.auction_id,
        price=b.price,
        quantity=b.quantity,
        amount=b.price * b.quantity,
        status=b.status if status is None else status,
        commitment=b.commitment,
        submitted_seq=b.submitted_seq,
        amendments=b.amendments,
        amended_at=b.amended_at,
        created_at=b.created_at,
    )


@auctions.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AuctionRead,
    responses=problem_responses(*AUTH_ERRORS, InvalidAuction, BatchNotFound, InsufficientCredits),
    summary="Create a sealed-bid auction; its supply is held from the creator's credits",
)
async def create_auction(
    body: AuctionCreate, session: SessionDep, principal: AuctioneerDep
) -> AuctionRead:
    auction = await auction_service.create_auction(session, principal.organization_id, body)
    return auction_read(auction)


@auctions.get(
    "",
    response_model=Page[AuctionRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="List auctions, newest first (the reserve price is never shown before clearing)",
)
async def list_auctions(session: SessionDep, _: AnyKeyDep, page: PageDep) -> Page[AuctionRead]:
    result = await auction_service.list_auctions(session, page)
    return Page(data=[auction_read(a) for a in result.data], next_cursor=result.next_cursor)


@auctions.get(
    "/{auction_id}",
    response_model=AuctionRead,
    responses=problem_responses(*AUTH_ERRORS, AuctionNotFound),
    summary="One auction (the reserve price is never shown before clearing)",
)
async def get_auction(auction_id: uuid.UUID, session: SessionDep, _: AnyKeyDep) -> AuctionRead:
    return auction_read(await auction_service.get_auction(session, auction_id))


@auctions.post(
    "/{auction_id}/bids",
    status_code=status.HTTP_201_CREATED,
    response_model=BidCreated,
    responses=problem_responses(
        *AUTH_ERRORS,
        OwnAuction,
        AuctionNotFound,
        AuctionNotOpen,
        TooManyBids,
        BidderQuantityExceeded,
        InsufficientBalance,
        InvalidBid,
    ),
    summary="Place a sealed bid while the auction is open; cash for price × quantity is held",
)
async def place_bid(
    auction_id: uuid.UUID, body: BidCreate, session: SessionDep, principal: BidderDep
) -> BidCreated:
    placed = await auction_service.place_bid(
        session, principal.organization_id, auction_id, body.price, body.quantity
    )
    return BidCreated(**bid_read(placed.bid).model_dump(), nonce=placed.nonce)


@auctions.get(
    "/{auction_id}/bids",
    response_model=list[BidRead],
    responses=problem_responses(*AUTH_ERRORS, AuctionNotFound),
    summary="The caller's own bids in an auction, in submission order",
)
async def list_bids(
    auction_id: uuid.UUID, session: SessionDep, principal: BidderDep
) -> list[BidRead]:
    bids = await auction_service.list_own_bids(session, principal.organization_id, auction_id)
    return [bid_read(own.bid, own.status) for own in bids]


@auctions.patch(
    "/{auction_id}/bids/{bid_id}",
    response_model=BidCreated,
    responses=problem_responses(
        *AUTH_ERRORS,
        AuctionNotFound,
        BidNotFound,
        AuctionNotOpen,
        BidNotActive,
        BidderQuantityExceeded,
        InsufficientBalance,
        InvalidBid,
    ),
    summary="Amend one of the caller's active bids while the auction is open",
    description="Change the price and/or the quantity: the same checks as a new bid, the cash "
    "hold adjusted, a new commitment and nonce. Only lowering the quantity keeps the bid's "
    "place (`submitted_seq`) for time-priority ties; any other change moves it to the back.",
)
async def amend_bid(
    auction_id: uuid.UUID,
    bid_id: uuid.UUID,
    body: BidUpdate,
    session: SessionDep,
    principal: BidderDep,
) -> BidCreated:
    amended = await auction_service.amend_bid(
        session, principal.organization_id, auction_id, bid_id, body.price, body.quantity
    )
    return BidCreated(**bid_read(amended.bid).model_dump(), nonce=amended.nonce)


@auctions.delete(
    "/{auction_id}/bids/{bid_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(
        *AUTH_ERRORS, AuctionNotFound, BidNotFound, AuctionNotOpen, BidNotActive
    ),
    summary="Withdraw one of the caller's bids while the auction is open; its cash is released",
)
async def withdraw_bid(
    auction_id: uuid.UUID, bid_id: uuid.UUID, session: SessionDep, principal: BidderDep
) -> Response:
    await auction_service.withdraw_bid(session, principal.organization_id, auction_id, bid_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auctions.post(
    "/{auction_id}/close",
    response_model=AuctionRead,
    responses=problem_responses(
        *AUTH_ERRORS, NotAuctionCreator, AuctionNotFound, AuctionNotOpen, AuctionAlreadyClosed
    ),
    summary="Close the auction now, clear it and settle delivery-versus-payment (its creator)",
)
async def close_auction(
    auction_id: uuid.UUID, session: SessionDep, principal: AuctioneerDep
) -> AuctionRead:
    auction = await settlement.close_auction(session, principal.organization_id, auction_id)
    return auction_read(auction)


@auctions.get(
    "/{auction_id}/results",
    response_model=AuctionResults,
    responses=problem_responses(*AUTH_ERRORS, AuctionNotFound, AuctionNotCleared),
    summary="The published results, with the caller's own allocations only",
)
async def get_results(
    auction_id: uuid.UUID, session: SessionDep, principal: AnyKeyDep
) -> AuctionResults:
    found = await auction_service.get_results(session, principal.organization_id, auction_id)
    r = found.result
    return AuctionResults(
        auction_id=found.auction.id,
        status=auction_service.effective_status(found.auction),
        clearing_status=r.status,
        clearing_price=r.clearing_price,
        average_price=r.average_price,
        median_price=r.median_price,
        min_winning_price=r.min_price,
        max_winning_price=r.max_price,
        offered_quantity=r.offered_quantity,
        bid_quantity=r.bid_quantity,
        sold_quantity=r.sold_quantity,
        unsold_quantity=r.unsold_quantity,
        cover_ratio=CoverRatio(
            numerator=r.cover_ratio_numerator,
            denominator=r.cover_ratio_denominator,
            permille=r.cover_ratio_permille,
        ),
        bidders=r.bidders,
        winners=r.winners,
        revenue=r.revenue,
        cleared_at=r.cleared_at,
        allocations=[
            AllocationRead(
                bid_id=a.bid_id,
                quantity=a.quantity,
                price=a.price,
                amount=a.amount,
                tie_selected=a.tie_selected,
            )
            for a in found.own_allocations
        ],
        demand_curve=[
            DemandPointRead(price=price, cumulative_quantity=cumulative)
            for price, cumulative in found.demand_curve
        ],
        sellers=[
            SellerSupply.model_validate(s, from_attributes=True)
            for s in consignment.sellers_of(found.auction)
        ],
        consignments=[
            consignment_read(lot)
            for lot in found.auction.supply
            if lot.seller_organization_id == principal.organization_id
        ],
        carried_over_quantity=r.carried_over_quantity,
        carried_to_auction_id=r.carried_to_auction_id,
    )


def consignment_read(lot: AuctionSupply) -> ConsignmentRead:
    return ConsignmentRead.model_validate(lot, from_attributes=True)


@auctions.post(
    "/{auction_id}/consignments",
    status_code=status.HTTP_201_CREATED,
    response_model=ConsignmentRead,
    responses=problem_responses(
        *AUTH_ERRORS,
        AuctionNotFound,
        ConsignmentClosed,
        InvalidConsignment,
        BatchNotFound,
        InsufficientCredits,
    ),
    summary="Consign credits into the auction's supply before bidding opens (held until the close)",
    description="The credits are held from the caller's; at the close the sold quantity is "
    "drawn from every lot pro rata to its size, unsold credits come back, and the revenue is "
    "split pro rata to what each seller sold, paid into its available JPY.",
)
async def consign(
    auction_id: uuid.UUID, body: ConsignmentCreate, session: SessionDep, principal: TraderDep
) -> ConsignmentRead:
    lot = await consignment.consign(session, principal.organization_id, auction_id, body)
    return consignment_read(lot)


@auctions.get(
    "/{auction_id}/consignments",
    response_model=list[ConsignmentRead],
    responses=problem_responses(*AUTH_ERRORS, AuctionNotFound),
    summary="The caller's own supply lots in an auction, with what each sold and earned",
)
async def list_consignments(
    auction_id: uuid.UUID, session: SessionDep, principal: AnyKeyDep
) -> list[ConsignmentRead]:
    lots = await consignment.own_lots(session, principal.organization_id, auction_id)
    return [consignment_read(lot) for lot in lots]


@auctions.get(
    "/{auction_id}/audit",
    response_model=AuditDocument,
    responses=problem_responses(AuctionNotFound, AuctionNotCleared),
    summary="The public audit: revealed reserve and seed, rules, anonymised bids, results",
)
async def get_audit(auction_id: uuid.UUID, session: SessionDep) -> AuditDocument:
    return AuditDocument.model_validate(await consignment.audit_document(session, auction_id))


@auctions.get(
    "/{auction_id}/monitor",
    response_model=AuctionMonitor,
    responses=problem_responses(*AUTH_ERRORS, AuctionNotFound, AuctionNotCleared),
    summary="The market monitor's view after the close: concentration, bid dispersion "
    "(platform only: it names the largest winners)",
)
async def get_monitor(auction_id: uuid.UUID, session: SessionDep, _: AdminDep) -> AuctionMonitor:
    view = await auction_service.get_monitor(session, auction_id)
    r, c, d = view.report, view.report.concentration, view.report.dispersion
    return AuctionMonitor(
        auction_id=view.auction.id,
        clearing_status=view.result.status,
        offered_quantity=view.result.offered_quantity,
        bid_quantity=r.bid_quantity,
        sold_quantity=r.sold_quantity,
        bidders=r.bidders,
        groups=r.groups,
        winners=r.winners,
        concentration=MonitorConcentration(
            hhi_awarded_by_bidder=c.hhi_awarded_by_bidder,
            hhi_awarded_by_group=c.hhi_awarded_by_group,
            hhi_bid_by_bidder=c.hhi_bid_by_bidder,
            hhi_bid_by_group=c.hhi_bid_by_group,
            top1_share_bps=c.top1_share_bps,
            top4_share_bps=c.top4_share_bps,
            largest_winners=[
                MonitorWinner(
                    organization_id=uuid.UUID(w.bidder), quantity=w.quantity, share_bps=w.share_bps
                )
                for w in c.largest_winners
            ],
        ),
        dispersion=None if d is None else MonitorDispersion.model_validate(d, from_attributes=True),
        reference_price=r.reference_price,
        price_spread=r.price_spread,
        margin_share_bps=r.margin_share_bps,
    )


# --- auction series (the tender calendar) ------------------------------------------------


def series_read(s: AuctionSeries, viewer: uuid.UUID) -> AuctionSeriesRead:
    template = series_service.template_of(s)
    if viewer != s.created_by_organization_id:
        template.rules.reserve_price = None  # confidential, as on the auctions
    return AuctionSeriesRead(
        id=s.id,
        title=s.title,
        format=s.format,
        created_by_organization_id=s.created_by_organization_id,
        supply=[SupplyRead(batch_id=i.batch_id, quantity=i.quantity) for i in template.supply],
        rules=template.rules,
        schedule=template.schedule,
        active=s.active,
        carry_over=s.carry_over,
        pending_carry_over_quantity=sum(int(i["quantity"]) for i in s.pending_carry_over),
        created_at=s.created_at,
    )


@series.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AuctionSeriesRead,
    responses=problem_responses(*AUTH_ERRORS),
    summary="Create an auction series: a template and a weekly calendar of auctions",
    description="Its auctions are created ahead (``schedule.horizon_days``) by a job, each "
    "holding its supply from the creator's credits then; a window for which the creator "
    "lacks the credits is skipped.",
)
async def create_series(
    body: AuctionSeriesCreate, session: SessionDep, principal: AuctioneerDep
) -> AuctionSeriesRead:
    created = await series_service.create_series(session, principal.organization_id, body)
    if created.active:
        # Create its first auctions soon rather than at the next tick.
        await defer_in_session(session, create_series_auctions)
    return series_read(created, principal.organization_id)


@series.get(
    "/{series_id}",
    response_model=AuctionSeriesRead,
    responses=problem_responses(*AUTH_ERRORS, AuctionSeriesNotFound),
    summary="One auction series (its reserve price is shown to its creator only)",
)
async def get_series(
    series_id: uuid.UUID, session: SessionDep, principal: AnyKeyDep
) -> AuctionSeriesRead:
    found = await series_service.get_series(session, series_id)
    return series_read(found, principal.organization_id)


router = APIRouter()
router.include_router(auctions)
router.include_router(series)
