"""Closing a sealed-bid auction: clear it and settle delivery-versus-payment in one transaction.

:func:`close_auction` (the auction's creator, ``POST /v1/auctions/{id}/close``):

1. Takes ``FOR UPDATE`` on the auction row. Placing or withdrawing a bid takes ``FOR SHARE``
   on it and reads the clock after getting it (see :mod:`app.auction.service`), so a racing
   bid is either committed before the close reads the bids, or waits and then finds the
   auction settled (409 ``auction_not_open``). ``closes_at`` becomes now if still ahead.
2. Clears the active bids with :func:`app.auction.clearing.clear` (the rules fixed at
   creation, the committed seed) and stores the results and one allocation per winning bid;
   each active bid becomes ``won`` or ``lost``.
3. Credits: the supply rows are taken in batch id order and the winners in clearing order
   (``submitted_seq``); each winner is filled from the first supply row with credits left
   (``offsets.settle_credits``, so it gets whole serial blocks from that batch), moving to the
   next row when one runs out. Whatever is left of a supply row goes back to the creator
   (``offsets.release_credits``).
4. Cash: each winning bid's hold pays ``amount`` (uniform: clearing price × quantity;
   pay-as-bid: own price × quantity) to the creator's available JPY account and the rest of the
   hold is released; every losing bid's hold is released in full.
5. Status: ``settled`` when anything sold, else ``cancelled`` (everything released).

Locks, always in this order: auction row → bid rows → batches (ascending id: the supply rows
are in batch id order and filled in that order) → their credit accounts (under the batch lock,
as every registry operation does) → every cash account touched, locked up front in one
statement in account id order, so later postings only re-take locks already held.

Any error (the clearing refusing its input included) propagates and the request's single
transaction rolls back: nothing is half-settled.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import clearing
from app.auction.errors import (
    AuctionAlreadyClosed,
    AuctionNotFound,
    AuctionNotOpen,
    NotAuctionCreator,
)
from app.auction.models import (
    Auction,
    AuctionAllocation,
    AuctionBid,
    AuctionResult,
    AuctionStatus,
    BidStatus,
)
from app.auction.repository import AuctionRepository, active_bids
from app.auction.service import rules_of
from app.core.time import utc_now
from app.ledger import service as ledger_service
from app.ledger.models import AccountKind
from app.offsets import service as offsets_service

FINAL = frozenset({AuctionStatus.cleared, AuctionStatus.settled, AuctionStatus.cancelled})


def clearing_bid(bid: AuctionBid) -> clearing.Bid:
    return clearing.Bid(
        id=str(bid.id),
        bidder=str(bid.bidder_organization_id),
        price=bid.price,
        quantity=bid.quantity,
        submitted_seq=bid.submitted_seq,
    )


async def close_auction(
    session: AsyncSession, organization_id: uuid.UUID, auction_id: uuid.UUID
) -> Auction:
    auction = await AuctionRepository(session).load(auction_id, lock="update")
    if auction is None:
        raise AuctionNotFound("No such auction.", auction_id=str(auction_id))
    if auction.created_by_organization_id != organization_id:
        raise NotAuctionCreator("Only the auction's creator may close it.")
    if AuctionStatus(auction.status) in FINAL:
        raise AuctionAlreadyClosed(
            f"The auction is already {auction.status}.", auction_status=str(auction.status)
        )
    now = utc_now()
    if now <= auction.opens_at:
        raise AuctionNotOpen(
            "The auction has not opened yet: it cannot be closed before it opens.",
            auction_status=AuctionStatus.scheduled.value,
        )
    if now < auction.closes_at:
        auction.closes_at = now

    bids = await active_bids(session, auction.id)
    result = clearing.clear(rules_of(auction), [clearing_bid(b) for b in bids])
    awards = result.allocations.by_bid_id()

    session.add(_result_row(auction, result, now))
    for bid in bids:
        award = awards.get(str(bid.id))
        bid.status = BidStatus.won if award is not None else BidStatus.lost
        bid.updated_at = now
        if award is not None:
            session.add(
                AuctionAllocation(
                    auction_id=auction.id,
                    bid_id=bid.id,
                    bidder_organization_id=bid.bidder_organization_id,
                    quantity=award.quantity,
                    price=award.price,
                    amount=award.amount,
                    tie_selected=award.tie_selected,
                )
            )
    await session.flush()

    await _deliver_credits(session, auction, result.allocations)
    await _settle_cash(session, auction, bids, awards)

    auction.status = AuctionStatus.settled if result.sold_quantity else AuctionStatus.cancelled
    auction.updated_at = now
    await session.flush()
    return auction


def _result_row(auction: Auction, result: clearing.ClearingResult, now: datetime) -> AuctionResult:
    numerator, denominator = result.cover_ratio
    return AuctionResult(
        auction_id=auction.id,
        status=result.status,
        clearing_price=result.clearing_price,
        average_price=result.average_price,
        median_price=result.median_price,
        min_price=result.min_price,
        max_price=result.max_price,
        offered_quantity=result.supply,
        bid_quantity=result.bid_quantity,
        eligible_quantity=result.eligible_quantity,
        sold_quantity=result.sold_quantity,
        unsold_quantity=result.unsold_quantity,
        cover_ratio_numerator=numerator,
        cover_ratio_denominator=denominator,
        cover_ratio_permille=result.cover_ratio_permille,
        bidders=result.bidders,
        winners=result.winners,
        revenue=result.revenue,
        cleared_at=now,
    )


async def _deliver_credits(
    session: AsyncSession, auction: Auction, allocations: clearing.Allocations
) -> None:
    supply = sorted(auction.supply, key=lambda s: s.batch_id)
    left = [s.quantity for s in supply]
    row = 0
    for award in allocations:
        need = award.quantity
        while need:
            while not left[row]:
                row += 1
            take = min(need, left[row])
            await offsets_service.settle_credits(
                session,
                supply[row].batch_id,
                supply[row].credit_hold_id,
                uuid.UUID(award.bidder),
                take,
                reference=f"auction:{auction.id}:bid:{award.bid_id}",
            )
            left[row] -= take
            need -= take
    for item, remaining in zip(supply, left, strict=True):
        if remaining:
            await offsets_service.release_credits(
                session, item.batch_id, item.credit_hold_id, remaining
            )


async def _settle_cash(
    session: AsyncSession,
    auction: Auction,
    bids: list[AuctionBid],
    awards: dict[str, clearing.Allocation],
) -> None:
    if not bids:
        return
    seller = await ledger_service.account_id(
        session, auction.created_by_organization_id, ledger_service.CASH, AccountKind.available
    )
    accounts = {seller}
    for org in {b.bidder_organization_id for b in bids}:
        for kind in (AccountKind.available, AccountKind.held):
            accounts.add(await ledger_service.account_id(session, org, ledger_service.CASH, kind))
    await session.execute(
        text("SELECT id FROM ledger_accounts WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
        {"ids": sorted(accounts)},
    )
    for bid in bids:
        held = bid.price * bid.quantity
        award = awards.get(str(bid.id))
        paid = 0 if award is None else award.amount
        reference = f"auction:{auction.id}:bid:{bid.id}"
        if paid:
            await ledger_service.settle_hold(
                session,
                bid.cash_hold_id,
                seller,
                paid,
                kind="auction_settlement",
                reference=reference,
            )
        if held > paid:
            await ledger_service.release(session, bid.cash_hold_id, reference=reference)
