"""Every query on the auction tables."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.auction.models import Auction, AuctionAllocation, AuctionBid, AuctionResult, BidStatus
from app.core.pagination import Page, PageParams
from app.core.repository import Repository


class AuctionRepository(Repository[Auction]):
    model = Auction

    async def load(self, auction_id: uuid.UUID, *, lock: str | None = None) -> Auction | None:
        """The auction with its supply. ``lock``: ``"update"`` or ``"share"`` (a row lock,
        with the locked row replacing any stale copy in the session)."""
        stmt: Select[Any] = (
            select(Auction).where(Auction.id == auction_id).options(selectinload(Auction.supply))
        )
        if lock is not None:
            stmt = stmt.with_for_update(read=lock == "share").execution_options(
                populate_existing=True
            )
        result: Auction | None = (await self.session.execute(stmt)).scalar_one_or_none()
        return result

    async def list_page(self, params: PageParams) -> Page[Auction]:
        return await self.page(select(Auction).options(selectinload(Auction.supply)), params)


class BidRepository(Repository[AuctionBid]):
    model = AuctionBid

    async def lock_bidder(self, auction_id: uuid.UUID, bidder_id: uuid.UUID) -> None:
        """Serialise one bidder's bid changes in one auction (caps count its active bids)."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"auction-bidder:{auction_id}:{bidder_id}"},
        )

    async def lock_group(self, auction_id: uuid.UUID, group: str) -> None:
        """Serialise the bid changes of all the members of one corporate group in one auction
        (the cap counts the group's active bids)."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"auction-group:{auction_id}:{group}"},
        )

    async def active_totals(
        self, auction_id: uuid.UUID, bidder_id: uuid.UUID, *, exclude: uuid.UUID | None = None
    ) -> tuple[int, int]:
        """(number of bids, total quantity) of the bidder's active bids, but ``exclude``."""
        stmt = select(func.count(), func.coalesce(func.sum(AuctionBid.quantity), 0)).where(
            AuctionBid.auction_id == auction_id,
            AuctionBid.bidder_organization_id == bidder_id,
            AuctionBid.status == BidStatus.active,
        )
        if exclude is not None:
            stmt = stmt.where(AuctionBid.id != exclude)
        row = (await self.session.execute(stmt)).one()
        return int(row[0]), int(row[1])

    async def bidder_hold(self, auction_id: uuid.UUID, bidder_id: uuid.UUID) -> uuid.UUID | None:
        """The cash hold the bidder's active bids share (None: it has none). Bids placed before
        holds were shared (migration 0014) each have their own: the latest bid's is taken."""
        hold: uuid.UUID | None = await self.session.scalar(
            select(AuctionBid.cash_hold_id)
            .where(
                AuctionBid.auction_id == auction_id,
                AuctionBid.bidder_organization_id == bidder_id,
                AuctionBid.status == BidStatus.active,
            )
            .order_by(AuctionBid.submitted_seq.desc())
            .limit(1)
        )
        return hold

    async def group_active_total(
        self, auction_id: uuid.UUID, group: str, *, exclude: uuid.UUID | None = None
    ) -> int:
        """The total quantity of the active bids placed under ``group``, but ``exclude``."""
        stmt = select(func.coalesce(func.sum(AuctionBid.quantity), 0)).where(
            AuctionBid.auction_id == auction_id,
            AuctionBid.group == group,
            AuctionBid.status == BidStatus.active,
        )
        if exclude is not None:
            stmt = stmt.where(AuctionBid.id != exclude)
        return int((await self.session.execute(stmt)).scalar_one())

    async def next_submitted_seq(self) -> int:
        """A fresh arrival number from the identity sequence (an amended bid's new place)."""
        seq = await self.session.scalar(
            text("SELECT nextval(pg_get_serial_sequence('auction_bids', 'submitted_seq'))")
        )
        return int(seq)

    async def own(
        self, auction_id: uuid.UUID, bidder_id: uuid.UUID, bid_id: uuid.UUID, *, for_update: bool
    ) -> AuctionBid | None:
        stmt: Select[Any] = select(AuctionBid).where(
            AuctionBid.id == bid_id,
            AuctionBid.auction_id == auction_id,
            AuctionBid.bidder_organization_id == bidder_id,
        )
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        result: AuctionBid | None = (await self.session.execute(stmt)).scalar_one_or_none()
        return result

    async def list_own(self, auction_id: uuid.UUID, bidder_id: uuid.UUID) -> list[AuctionBid]:
        rows = await self.session.scalars(
            select(AuctionBid)
            .where(
                AuctionBid.auction_id == auction_id,
                AuctionBid.bidder_organization_id == bidder_id,
            )
            .order_by(AuctionBid.submitted_seq)
        )
        return list(rows)


class ResultRepository:
    """The stored results and allocations of cleared auctions."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def result(self, auction_id: uuid.UUID) -> AuctionResult | None:
        return await self.session.get(AuctionResult, auction_id)

    async def allocations(
        self, auction_id: uuid.UUID, bidder_id: uuid.UUID | None = None
    ) -> list[AuctionAllocation]:
        stmt = select(AuctionAllocation).where(AuctionAllocation.auction_id == auction_id)
        if bidder_id is not None:
            stmt = stmt.where(AuctionAllocation.bidder_organization_id == bidder_id)
        rows = await self.session.scalars(stmt.order_by(AuctionAllocation.id))
        return list(rows)

    async def demand_curve(self, auction_id: uuid.UUID) -> list[tuple[int, int]]:
        """The anonymised demand of a cleared auction: each distinct bid price, highest first,
        with the quantity bid at that price or higher (every bid that took part, valid or not:
        the same set the audit publishes)."""
        per_level = (
            select(AuctionBid.price, func.sum(AuctionBid.quantity).label("quantity"))
            .where(
                AuctionBid.auction_id == auction_id,
                AuctionBid.status == BidStatus.active,  # of a cleared auction: took part
            )
            .group_by(AuctionBid.price)
            .subquery()
        )
        rows = await self.session.execute(
            select(
                per_level.c.price,
                func.sum(per_level.c.quantity).over(order_by=per_level.c.price.desc()),
            ).order_by(per_level.c.price.desc())
        )
        return [(int(price), int(cumulative)) for price, cumulative in rows.all()]

    async def cleared_bids(self, auction_id: uuid.UUID) -> list[AuctionBid]:
        """The bids that took part in the clearing (won or lost: the auction's bids still
        active when it closed), in submission order."""
        rows = await self.session.scalars(
            select(AuctionBid)
            .where(AuctionBid.auction_id == auction_id, AuctionBid.status == BidStatus.active)
            .order_by(AuctionBid.submitted_seq)
        )
        return list(rows)
