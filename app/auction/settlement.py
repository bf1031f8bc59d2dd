"""Closing a sealed-bid auction: clear it and settle delivery-versus-payment in one transaction.

:func:`close_auction` (the auction's creator, ``POST /v1/auctions/{id}/close``, or the close
jobs):

1. Takes ``FOR UPDATE`` on the auction row. Placing or withdrawing a bid takes ``FOR SHARE``
   on it and reads the clock after getting it (see :mod:`app.auction.service`), so a racing
   bid is either committed before the close reads the bids, or waits and then finds the
   auction settled (409 ``auction_not_open``). ``closes_at`` becomes now if still ahead.
   For an auction of a series with ``carry_over``, the series row and the series' next
   auction that has not opened yet are locked too (the carry-over's destination).
2. Clears the active bids (read straight through the driver) with
   :func:`app.auction.clearing.clear` (the rules fixed at creation, the committed seed) and
   stores the results: one allocation per winning bid (one ``INSERT … SELECT FROM unnest``).
   Bid rows are not rewritten: a bid active at the close is ``won`` exactly when it has an
   allocation, else ``lost`` (``service.bid_status``).
3. Credits: the sold quantity is drawn from the supply rows pro rata to their quantities
   (:func:`pro_rata`: floor, then the largest remainders, ties to the earlier row; rows in
   batch id order, then creation order). The winners, in clearing order (``submitted_seq``),
   are filled from the rows' draws in row order. Each row settles in one call
   (``offsets.settle_credits_many``: its deliveries summed per winner, then the rest of the
   row released to its seller), so a winner gets whole serial blocks of each batch.
4. Cash: the revenue is split between the sellers pro rata to what each sold (largest
   remainder, sums exact; :func:`pro_rata`), each bid's payment is routed to sellers in
   order (:func:`route_payments`), and every bidder's hold (its active bids share one, sized
   to their sum) is settled in ONE ``ledger.settle_holds`` call: it pays the bidder's winning
   amounts to the sellers' available JPY and releases the rest (a bidder that won nothing:
   all of it), with one ledger entry per bidder.
5. Carry-over: the creator's unsold credits (its own rows; consigned rows always go back to
   their sellers), rounded down to the series' ``quantity_step``, are held again for the
   series: added to the next auction's supply if it exists and has not opened, else recorded
   on the series (``pending_carry_over``) for the auction the series creates next
   (:mod:`app.auction.series`). ``carried_over_quantity`` and ``carried_to_auction_id`` are
   published with the results.
6. Status: ``settled`` when anything sold, else ``cancelled``.

Every step is batched: a close costs a fixed number of statements plus a few per supply row
and per carried batch, whatever the number of bids (``bench/auction_close``).

Locks, always in this order: auction row (every change of a bid first takes it, so the bids
read after it cannot change) → series row → the next auction's row → batches (ascending id:
the supply rows are in batch id order and settled in that order, and carried credits are held
again afterwards, in batch id order, under locks already held) →
their credit holds and credit accounts (under the batch lock, as every registry operation
does) → the bidders' cash holds (one ``SELECT … FOR UPDATE`` in hold id order) → every cash
account touched (one posting call, which locks its accounts in account id order).

Any error (the clearing refusing its input included) propagates and the request's single
transaction rolls back: nothing is half-settled.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import clearing
from app.auction import series as series_service
from app.auction.errors import (
    AuctionAlreadyClosed,
    AuctionNotFound,
    AuctionNotOpen,
    NotAuctionCreator,
)
from app.auction.models import (
    Auction,
    AuctionResult,
    AuctionSeries,
    AuctionStatus,
    AuctionSupply,
)
from app.auction.repository import AuctionRepository
from app.auction.service import rules_of
from app.core.ids import new_ids
from app.core.time import utc_now
from app.db.driver import fetch_rows
from app.ledger import service as ledger_service
from app.ledger.models import AccountKind
from app.offsets import service as offsets_service

FINAL = frozenset({AuctionStatus.cleared, AuctionStatus.settled, AuctionStatus.cancelled})
SETTLEMENT_KIND = "auction_settlement"


# --- pure helpers ----------------------------------------------------------------------


def pro_rata(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (non-negative, not all zero when ``total``
    is positive): each share is floor(total × w / W), then the units left go one each to the
    largest remainders, ties to the earlier weight. Shares sum to ``total`` exactly and, when
    ``total`` ≤ W, never exceed their weight."""
    whole = sum(weights)
    if total == 0:
        return [0] * len(weights)
    if whole <= 0 or total < 0:
        raise ValueError("pro_rata needs a non-negative total and a positive weight sum")
    shares = [total * w // whole for w in weights]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def route_payments(payments: Sequence[int], receipts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Which receiver each payment goes to: payments and receipts (same sum) are matched in
    order, each payment split where a receipt fills up (so at most ``len(payments) +
    len(receipts)`` pieces). Returns, per payment, ``(receiver index, amount)`` pieces."""
    if sum(payments) != sum(receipts):
        raise ValueError("payments and receipts must have the same sum")
    out: list[list[tuple[int, int]]] = []
    receiver, room = 0, receipts[0] if receipts else 0
    for payment in payments:
        pieces: list[tuple[int, int]] = []
        while payment:
            while not room:
                receiver += 1
                room = receipts[receiver]
            take = min(payment, room)
            pieces.append((receiver, take))
            payment -= take
            room -= take
        out.append(pieces)
    return out


# --- the close -------------------------------------------------------------------------


@dataclass(slots=True)
class CarryTarget:
    """Where the creator's unsold credits go: the series' next auction not yet open, or the
    series itself (pending) when that auction does not exist yet."""

    series: AuctionSeries
    auction: Auction | None
    quantity_step: int


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
    target = await _carry_target(session, auction, now)

    entered, hold_of = await _active_bids(session, auction.id)
    result = clearing.clear(rules_of(auction), entered)

    supply = sorted(auction.supply, key=lambda s: (s.batch_id, s.created_at, s.id))
    draws = pro_rata(result.sold_quantity, [s.quantity for s in supply])
    sellers = list(dict.fromkeys(s.seller_organization_id for s in supply))
    sold_by_seller = [
        sum(d for s, d in zip(supply, draws, strict=True) if s.seller_organization_id == seller)
        for seller in sellers
    ]
    proceeds_by_seller = pro_rata(result.revenue, sold_by_seller)
    for seller, proceeds in zip(sellers, proceeds_by_seller, strict=True):
        rows = [i for i, s in enumerate(supply) if s.seller_organization_id == seller]
        for i, share in zip(rows, pro_rata(proceeds, [draws[i] for i in rows]), strict=True):
            supply[i].sold_quantity = draws[i]
            supply[i].proceeds = share

    result_row = _result_row(auction, result, now)
    session.add(result_row)
    await session.flush()
    await _record_allocations(session, auction, result)
    await _deliver_credits(session, auction, supply, draws, result.allocations)
    await _settle_cash(session, auction, hold_of, result, sellers, proceeds_by_seller)
    if target is not None:
        await _carry_over(session, auction, supply, draws, target, result_row, now)

    auction.status = AuctionStatus.settled if result.sold_quantity else AuctionStatus.cancelled
    auction.updated_at = now
    await session.flush()
    return auction


async def _carry_target(
    session: AsyncSession, auction: Auction, now: datetime
) -> CarryTarget | None:
    """The locked carry-over destination of an auction of a series (None: no carry-over)."""
    if auction.series_id is None:
        return None
    series = (
        await session.execute(
            select(AuctionSeries)
            .where(AuctionSeries.id == auction.series_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    if not series.carry_over or not series.active:
        return None
    following = (
        await session.execute(
            select(Auction)
            .where(
                Auction.series_id == series.id,
                Auction.id != auction.id,
                Auction.status == AuctionStatus.scheduled,
                Auction.opens_at > now,
            )
            .order_by(Auction.opens_at, Auction.id)
            .limit(1)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    step = (
        following.quantity_step
        if following is not None
        else int(series.rules.get("quantity_step", 1))
    )
    return CarryTarget(series, following, step)


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
        carried_over_quantity=0,
    )


_ACTIVE_BIDS_SQL = (
    'SELECT id::text, bidder_organization_id::text, price, quantity, submitted_seq, "group",'
    " cash_hold_id::text FROM auction_bids WHERE auction_id = $1 AND status = 'active'"
    " ORDER BY submitted_seq"
)


async def _active_bids(
    session: AsyncSession, auction_id: uuid.UUID
) -> tuple[list[clearing.Bid], dict[str, str]]:
    """The auction's active bids in submission order, for the clearing, and each one's cash
    hold (bid id → hold id, as text). Read straight through the driver with the ids as text:
    100,000 ORM objects or SQLAlchemy rows would cost seconds. Not locked one by one: every
    change of a bid (place, amend, withdraw) first takes the auction row ``FOR SHARE``, which
    the close holds ``FOR UPDATE``."""
    rows = await fetch_rows(session, _ACTIVE_BIDS_SQL, [auction_id])
    entered = [
        clearing.Bid(
            id=bid_id, bidder=bidder, price=price, quantity=quantity, submitted_seq=seq, group=group
        )
        for bid_id, bidder, price, quantity, seq, group, _ in rows
    ]
    return entered, {row[0]: row[6] for row in rows}


_INSERT_ALLOCATIONS = text(
    "INSERT INTO auction_allocations"
    " (id, auction_id, bid_id, bidder_organization_id, quantity, price, amount, tie_selected)"
    " SELECT id, :auction_id, bid_id, bidder, quantity, price, amount, tie"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:bid_ids AS uuid[]), CAST(:bidders AS uuid[]),"
    " CAST(:quantities AS bigint[]), CAST(:prices AS bigint[]), CAST(:amounts AS bigint[]),"
    " CAST(:ties AS boolean[])) AS a(id, bid_id, bidder, quantity, price, amount, tie)"
)


async def _record_allocations(
    session: AsyncSession, auction: Auction, result: clearing.ClearingResult
) -> None:
    """One allocation row per winning bid, in one statement whatever the count. The bids
    themselves are not written: a bid still active when its auction is cleared is won
    exactly when it has an allocation (``service.bid_status``)."""
    allocations = result.allocations
    # The clearing's ids are uuid strings: the driver encodes them into uuid[] as they are.
    won = list(allocations.bid_ids)
    if won:
        await session.execute(
            _INSERT_ALLOCATIONS,
            {
                "auction_id": auction.id,
                "ids": new_ids(len(won)),
                "bid_ids": won,
                "bidders": list(allocations.bidders),
                "quantities": list(allocations.quantities),
                "prices": list(allocations.prices),
                "amounts": list(allocations.amounts),
                "ties": list(allocations.tie_selected),
            },
        )


async def _deliver_credits(
    session: AsyncSession,
    auction: Auction,
    supply: list[AuctionSupply],
    draws: list[int],
    allocations: clearing.Allocations,
) -> None:
    """Fill the winners from the rows' draws, then settle each row in one call (the rest of
    a row released to its seller; the carry-over holds the creator's part again after)."""
    deliveries: list[dict[uuid.UUID, int]] = [{} for _ in supply]
    left = list(draws)
    row = 0
    for bidder, quantity in zip(allocations.bidders, allocations.quantities, strict=True):
        winner = uuid.UUID(bidder)
        need = quantity
        while need:
            while not left[row]:
                row += 1
            take = min(need, left[row])
            deliveries[row][winner] = deliveries[row].get(winner, 0) + take
            left[row] -= take
            need -= take
    for item, delivered in zip(supply, deliveries, strict=True):
        await offsets_service.settle_credits_many(
            session,
            item.batch_id,
            item.credit_hold_id,
            list(delivered.items()),
            reference=f"auction:{auction.id}",
            release_rest=True,
        )


async def _settle_cash(
    session: AsyncSession,
    auction: Auction,
    hold_of: dict[str, str],
    result: clearing.ClearingResult,
    sellers: list[uuid.UUID],
    proceeds: list[int],
) -> None:
    """Every bidder's hold in one ``settle_holds``: its winning bids' amounts go to the
    sellers (routed in order so each seller gets exactly its proceeds, summed per seller),
    the rest is released. A bidder's active bids share one hold (``hold_of``; bids placed
    before holds were shared have one each)."""
    if not hold_of:
        return
    accounts = await ledger_service.ensure_accounts(
        session, [(s, ledger_service.CASH, AccountKind.available) for s in sellers]
    )
    destination = [accounts[(s, ledger_service.CASH, AccountKind.available)] for s in sellers]
    allocations = result.allocations
    routes = route_payments(allocations.amounts, proceeds)
    payouts: dict[str, dict[uuid.UUID, int]] = {hold: {} for hold in hold_of.values()}
    for bid_id, pieces in zip(allocations.bid_ids, routes, strict=True):
        paid = payouts[hold_of[bid_id]]
        for seller, amount in pieces:
            account = destination[seller]
            paid[account] = paid.get(account, 0) + amount
    await ledger_service.settle_holds(
        session,
        [
            ledger_service.HoldSettlement(uuid.UUID(hold), list(paid.items()), release_rest=True)
            for hold, paid in payouts.items()
        ],
        kind=SETTLEMENT_KIND,
        reference=f"auction:{auction.id}",
    )


async def _carry_over(
    session: AsyncSession,
    auction: Auction,
    supply: list[AuctionSupply],
    draws: list[int],
    target: CarryTarget,
    result_row: AuctionResult,
    now: datetime,
) -> None:
    """Hold the creator's unsold credits again for the series' next auction (or for the
    series until that auction exists), rounded down to the quantity step; the part below one
    step stays with the creator (released by the settlement)."""
    creator = auction.created_by_organization_id
    if target.auction is not None and target.series.pending_carry_over:
        # Carry-overs still waiting on the series go to the same auction first.
        await series_service.attach_pending_carry_over(session, target.series, target.auction, now)
    unsold: dict[uuid.UUID, int] = {}
    for item, drawn in zip(supply, draws, strict=True):
        if item.seller_organization_id == creator and item.quantity > drawn:
            unsold[item.batch_id] = unsold.get(item.batch_id, 0) + item.quantity - drawn
    total = sum(unsold.values())
    budget = total - total % target.quantity_step
    if not budget:
        return
    following = target.auction
    reference = (
        f"auction:{following.id}:supply"
        if following is not None
        else f"auction-series:{target.series.id}:carry-over"
    )
    pending = list(target.series.pending_carry_over)
    for batch_id in sorted(unsold):
        quantity = min(unsold[batch_id], budget)
        if not quantity:
            break
        budget -= quantity
        hold_id = await offsets_service.hold_credits(
            session, creator, batch_id, quantity, reference=reference
        )
        if following is not None:
            session.add(
                AuctionSupply(
                    auction_id=following.id,
                    batch_id=batch_id,
                    quantity=quantity,
                    credit_hold_id=hold_id,
                    seller_organization_id=creator,
                    carried_from_auction_id=auction.id,
                    created_at=now,
                )
            )
            following.add_supply(quantity, now)
        else:
            pending.append(
                {
                    "batch_id": str(batch_id),
                    "quantity": quantity,
                    "hold_id": str(hold_id),
                    "from_auction_id": str(auction.id),
                }
            )
        result_row.carried_over_quantity += quantity
    if following is not None:
        result_row.carried_to_auction_id = following.id
    else:
        target.series.pending_carry_over = pending
        target.series.updated_at = now
