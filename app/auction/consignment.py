"""Consigned supply: sellers put credits into an auction's tender pool before bidding opens.

An auction's supply is a set of lots (``AuctionSupply`` rows), each credits of one batch held
from one seller: the creator's own lots (made at creation), lots consigned by other
organisations holding credits (:func:`consign`), and lots carried over from an earlier
auction of the series (:mod:`app.auction.settlement`). At the close the sold quantity is drawn
from the lots pro rata to their size, unsold credits go back to each seller, and the revenue
is split between the sellers pro rata to what each sold (settlement.py).

The rules are committed before bidding: a consignment takes ``FOR UPDATE`` on the auction row
and reads the clock after getting it, and is refused (409 ``consignment_closed``) once the
auction is open. Bids take ``FOR SHARE`` on the same row, so no bid sees a supply that later
grows. Locks: auction row → batch → credit accounts (as the close takes them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import audit
from app.auction.errors import AuctionNotFound, ConsignmentClosed, InvalidConsignment
from app.auction.models import Auction, AuctionStatus, AuctionSupply
from app.auction.repository import AuctionRepository
from app.auction.schemas import ConsignmentCreate
from app.auction.service import effective_status, get_auction, get_audit
from app.core.ids import new_id
from app.core.time import utc_now
from app.offsets import service as offsets_service


async def consign(
    session: AsyncSession, seller_id: uuid.UUID, auction_id: uuid.UUID, body: ConsignmentCreate
) -> AuctionSupply:
    """Hold ``body.quantity`` credits of the seller's and add them to the auction's supply."""
    auction = await AuctionRepository(session).load(auction_id, lock="update")
    if auction is None:
        raise AuctionNotFound("No such auction.", auction_id=str(auction_id))
    status = effective_status(auction, utc_now())
    if status != AuctionStatus.scheduled:
        raise ConsignmentClosed(
            f"The auction is {status.value}: supply is final once bidding opens.",
            auction_status=status.value,
        )
    if body.quantity % auction.quantity_step:
        raise InvalidConsignment(
            f"quantity must be a multiple of the auction's quantity_step ({auction.quantity_step})",
            field="quantity",
        )
    hold_id = await offsets_service.hold_credits(
        session, seller_id, body.batch_id, body.quantity, reference=f"auction:{auction.id}:supply"
    )
    now = utc_now()
    lot = AuctionSupply(
        id=new_id(),
        auction_id=auction.id,
        batch_id=body.batch_id,
        quantity=body.quantity,
        credit_hold_id=hold_id,
        seller_organization_id=seller_id,
        created_at=now,
    )
    session.add(lot)
    auction.add_supply(body.quantity, now)
    await session.flush()
    return lot


async def own_lots(
    session: AsyncSession, seller_id: uuid.UUID, auction_id: uuid.UUID
) -> list[AuctionSupply]:
    """The caller's supply lots in an auction (none: an empty list), oldest first."""
    await get_auction(session, auction_id)
    rows = await session.scalars(
        select(AuctionSupply)
        .where(
            AuctionSupply.auction_id == auction_id,
            AuctionSupply.seller_organization_id == seller_id,
        )
        .order_by(AuctionSupply.created_at, AuctionSupply.id)
    )
    return list(rows)


@dataclass(frozen=True, slots=True)
class SellerFigures:
    seller: str  # S1, S2… by each seller's first lot (the creator's lots come first)
    offered_quantity: int
    sold_quantity: int


def sellers_of(auction: Auction) -> list[SellerFigures]:
    """Offered and sold quantity per seller, anonymised (the auction's supply loaded)."""
    lots = sorted(auction.supply, key=lambda s: (s.created_at, s.id))
    order = list(dict.fromkeys(s.seller_organization_id for s in lots))
    return [
        SellerFigures(
            seller=f"S{i}",
            offered_quantity=sum(s.quantity for s in lots if s.seller_organization_id == seller),
            sold_quantity=sum(
                s.sold_quantity or 0 for s in lots if s.seller_organization_id == seller
            ),
        )
        for i, seller in enumerate(order, start=1)
    ]


async def audit_document(session: AsyncSession, auction_id: uuid.UUID) -> audit.Document:
    """The public audit, with the offered and sold quantity per (anonymised) seller."""
    document = await get_audit(session, auction_id)
    auction = await get_auction(session, auction_id)
    document["sellers"] = [
        {
            "seller": f.seller,
            "offered_quantity": f.offered_quantity,
            "sold_quantity": f.sold_quantity,
        }
        for f in sellers_of(auction)
    ]
    return document
