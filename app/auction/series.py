"""Auction series (the tender calendar): a template and a weekly schedule, and the creation of
the upcoming auctions of each active series.

:func:`create_upcoming_auctions` (run by the periodic ``auction.create_series_auctions`` task)
creates, for each window of the series from today to ``horizon_days - 1`` days ahead (Tokyo
dates) on one of its weekdays and not yet closed, the auction through the normal
:func:`app.auction.service.create_auction` (so its supply is held from the creator's credits
then). ``UNIQUE (series_id, opens_at)`` on ``auctions`` keeps it to one auction per window,
even with several schedulers; the series row is locked ``FOR UPDATE SKIP LOCKED`` so two runs
do not work on the same series at once. A window whose auction cannot be created (the creator
lacks the credits, a batch is gone) is skipped and logged; a later run tries it again while it
is still ahead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import service as auction_service
from app.auction.errors import AuctionSeriesNotFound, InvalidAuction
from app.auction.models import Auction, AuctionResult, AuctionSeries, AuctionSupply
from app.auction.schemas import AuctionSeriesCreate, SeriesRules, SeriesSchedule, SupplyItem
from app.core.time import TOKYO, utc_now
from app.offsets.errors import BatchNotFound, InsufficientCredits

log = structlog.get_logger()


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


async def create_series(
    session: AsyncSession, organization_id: uuid.UUID, body: AuctionSeriesCreate
) -> AuctionSeries:
    now = utc_now()
    series = AuctionSeries(
        title=body.title,
        format=body.format,
        created_by_organization_id=organization_id,
        supply=[item.model_dump(mode="json") for item in body.supply],
        rules=body.rules.model_dump(mode="json"),
        weekdays=sorted(body.schedule.weekdays),
        opens_time=_clock(body.schedule.opens_at),
        closes_time=_clock(body.schedule.closes_at),
        horizon_days=body.schedule.horizon_days,
        active=body.active,
        carry_over=body.carry_over,
        pending_carry_over=[],
        created_at=now,
        updated_at=now,
    )
    session.add(series)
    await session.flush()
    return series


async def get_series(session: AsyncSession, series_id: uuid.UUID) -> AuctionSeries:
    series = await session.get(AuctionSeries, series_id)
    if series is None:
        raise AuctionSeriesNotFound("No such auction series.", series_id=str(series_id))
    return series


def template_of(series: AuctionSeries) -> AuctionSeriesCreate:
    """The series as its create body (validated again, as stored)."""
    return AuctionSeriesCreate(
        title=series.title,
        format=series.format,
        supply=[SupplyItem.model_validate(item) for item in series.supply],
        rules=SeriesRules.model_validate(series.rules),
        schedule=SeriesSchedule(
            weekdays=list(series.weekdays),
            opens_at=series.opens_time.strftime("%H:%M"),
            closes_at=series.closes_time.strftime("%H:%M"),
            horizon_days=series.horizon_days,
        ),
        active=series.active,
        carry_over=series.carry_over,
    )


@dataclass(frozen=True)
class Window:
    day: date  # the Tokyo date
    opens_at: datetime
    closes_at: datetime


def windows(series: AuctionSeries, now: datetime) -> list[Window]:
    """The series' windows from today (Tokyo) over ``horizon_days`` days not yet closed."""
    today = now.astimezone(TOKYO).date()
    out = []
    for offset in range(series.horizon_days):
        day = today + timedelta(days=offset)
        if day.isoweekday() not in series.weekdays:
            continue
        opens_at = datetime.combine(day, series.opens_time, TOKYO)
        closes_at = datetime.combine(day, series.closes_time, TOKYO)
        if closes_at > now:
            out.append(Window(day, opens_at, closes_at))
    return out


@dataclass
class SeriesRun:
    created: int = 0
    skipped: int = 0


async def create_series_auctions(
    session: AsyncSession, series: AuctionSeries, now: datetime | None = None
) -> SeriesRun:
    """Create the missing auctions of one (locked) series; each in a savepoint."""
    now = now or utc_now()
    run = SeriesRun()
    template = template_of(series)
    wanted = windows(series, now)
    if not wanted:
        return run
    existing = set(
        (
            await session.scalars(
                select(Auction.opens_at).where(
                    Auction.series_id == series.id,
                    Auction.opens_at.in_([w.opens_at for w in wanted]),
                )
            )
        ).all()
    )
    for window in wanted:
        if window.opens_at in existing:
            continue
        body = template.auction(
            f"{series.title[:186]} ({window.day.isoformat()})", window.opens_at, window.closes_at
        )
        try:
            async with session.begin_nested():
                auction = await auction_service.create_auction(
                    session, series.created_by_organization_id, body, series_id=series.id
                )
                if series.pending_carry_over and window.opens_at > now:
                    await attach_pending_carry_over(session, series, auction, now)
        except (InsufficientCredits, BatchNotFound, InvalidAuction) as exc:
            run.skipped += 1
            log.warning(
                "auction_series.window_skipped",
                series_id=str(series.id),
                day=window.day.isoformat(),
                reason=getattr(exc, "code", type(exc).__name__),
                detail=str(exc),
            )
        except IntegrityError as exc:
            if "auctions_series_id_opens_at_key" not in str(exc.orig):
                raise
            # Created meanwhile by another scheduler: nothing to do.
        else:
            run.created += 1
    return run


async def attach_pending_carry_over(
    session: AsyncSession, series: AuctionSeries, auction: Auction, now: datetime
) -> None:
    """Add the series' waiting carry-overs (credits already held) to ``auction``'s supply, an
    auction of the series not yet open, and name it on the results they came from. The series
    row is locked by the caller."""
    origins = set()
    for item in series.pending_carry_over:
        quantity = int(item["quantity"])
        session.add(
            AuctionSupply(
                auction_id=auction.id,
                batch_id=uuid.UUID(item["batch_id"]),
                quantity=quantity,
                credit_hold_id=uuid.UUID(item["hold_id"]),
                seller_organization_id=series.created_by_organization_id,
                carried_from_auction_id=uuid.UUID(item["from_auction_id"]),
                created_at=now,
            )
        )
        auction.add_supply(quantity, now)
        origins.add(uuid.UUID(item["from_auction_id"]))
    auction.updated_at = now
    await session.execute(
        update(AuctionResult)
        .where(AuctionResult.auction_id.in_(origins), AuctionResult.carried_to_auction_id.is_(None))
        .values(carried_to_auction_id=auction.id)
    )
    series.pending_carry_over = []
    series.updated_at = now
    await session.flush()
    log.info(
        "auction_series.carry_over_attached",
        series_id=str(series.id),
        auction_id=str(auction.id),
        from_auctions=sorted(str(o) for o in origins),
    )


async def lock_series(session: AsyncSession, series_id: uuid.UUID) -> AuctionSeries | None:
    """The series if active and no other transaction is working on it, locked."""
    result: AuctionSeries | None = (
        await session.execute(
            select(AuctionSeries)
            .where(AuctionSeries.id == series_id, AuctionSeries.active.is_(True))
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    return result


async def active_series_ids(session: AsyncSession) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(AuctionSeries.id).where(AuctionSeries.active.is_(True)).order_by(AuctionSeries.id)
    )
    return list(rows)
