"""Auction jobs: closing auctions on time, and creating the auctions of each series.

- ``auction.close`` (one-off, queued by :func:`app.auction.service.create_auction` in the
  creating transaction, scheduled at ``closes_at``): close that auction if it is due.
- ``auction.close_due`` (every minute): close every auction whose ``closes_at`` has passed and
  that is still ``scheduled``/``open``; catches whatever the one-off jobs missed (a job lost, a
  worker down at the time, an auction whose window was moved).
- ``auction.create_series_auctions`` (every 15 minutes, and once when a series is created):
  create the upcoming auctions of every active series (:mod:`app.auction.series`).

A close runs :func:`app.auction.settlement.close_auction` (the same as the endpoint) for the
auction's creator, in its own transaction, on the auction row taken ``FOR UPDATE SKIP LOCKED``
where it is still due: a row another worker (or the endpoint) is closing is skipped, and once
that commits the row is no longer due. So each auction is closed exactly once however many
workers run these, and a run after a restart picks up whatever is still due (the state is the
auction rows). An auction whose close fails is logged and left for the next run.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import series as series_service
from app.auction import settlement
from app.auction.models import Auction, AuctionStatus
from app.core.time import utc_now
from app.worker.app import job_app
from app.worker.defer import defer_in_session
from app.worker.resources import job_session

log = structlog.get_logger()

AUCTION_QUEUE = "auctions"
DUE = (AuctionStatus.scheduled, AuctionStatus.open)


async def _lock_due(
    session: AsyncSession,
    now: datetime,
    *,
    auction_id: uuid.UUID | None = None,
    exclude: frozenset[uuid.UUID] = frozenset(),
) -> Auction | None:
    """A due auction (``auction_id``'s, or the one due first), locked; None if there is none
    that no other transaction holds."""
    stmt = select(Auction).where(Auction.status.in_(DUE), Auction.closes_at <= now)
    if auction_id is not None:
        stmt = stmt.where(Auction.id == auction_id)
    if exclude:
        stmt = stmt.where(Auction.id.not_in(list(exclude)))
    result: Auction | None = (
        await session.execute(
            stmt.order_by(Auction.closes_at, Auction.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    return result


async def close_one(session: AsyncSession, auction: Auction) -> Auction:
    """Close a locked, due auction for its creator (the system acts for it)."""
    closed = await settlement.close_auction(session, auction.created_by_organization_id, auction.id)
    log.info("auction.closed_on_time", auction_id=str(auction.id), status=str(closed.status))
    return closed


async def close_due_auctions(now: datetime | None = None) -> int:
    """Close every auction due at ``now`` (default: the clock), one transaction each; return
    how many this call closed."""
    closed = 0
    failed: set[uuid.UUID] = set()
    while True:
        current: uuid.UUID | None = None
        try:
            async with job_session() as session:
                auction = await _lock_due(session, now or utc_now(), exclude=frozenset(failed))
                if auction is None:
                    return closed
                current = auction.id
                await close_one(session, auction)
        except Exception:
            if current is None:
                raise
            failed.add(current)
            log.exception("auction.close_failed", auction_id=str(current))
        else:
            closed += 1


async def schedule_close(session: AsyncSession, auction: Auction) -> None:
    """Queue ``auction.close`` for ``auction`` at its ``closes_at``, in ``session``'s
    transaction (the job exists only if the auction does)."""
    await defer_in_session(
        session, close_auction_job, schedule_at=auction.closes_at, auction_id=str(auction.id)
    )


@job_app.task(name="auction.close", queue=AUCTION_QUEUE)
async def close_auction_job(auction_id: str) -> bool:
    """Close the auction if it is due and not being closed elsewhere; True if this job did."""
    async with job_session() as session:
        auction = await _lock_due(session, utc_now(), auction_id=uuid.UUID(auction_id))
        if auction is None:
            # Closed already, being closed by someone else, or moved later (the every-minute
            # sweep closes it when due).
            return False
        await close_one(session, auction)
    return True


@job_app.periodic(cron="* * * * *", periodic_id="every-minute")
@job_app.task(
    name="auction.close_due",
    queue=AUCTION_QUEUE,
    queueing_lock="auction.close_due",
    lock="auction.close_due",
)
async def close_due(timestamp: int | None = None) -> int:
    """Every minute: close the auctions whose ``closes_at`` has passed."""
    closed = await close_due_auctions()
    if closed:
        log.info("auction.close_due_finished", closed=closed, tick=timestamp)
    return closed


async def create_all_series_auctions() -> int:
    """Create the missing auctions of every active series (one transaction per series);
    return how many were created."""
    async with job_session() as session:
        ids = await series_service.active_series_ids(session)
    created = 0
    for series_id in ids:
        try:
            async with job_session() as session:
                series = await series_service.lock_series(session, series_id)
                if series is None:
                    continue  # deactivated, or another run is on it
                run = await series_service.create_series_auctions(session, series)
        except Exception:
            log.exception("auction_series.run_failed", series_id=str(series_id))
            continue
        created += run.created
        if run.created or run.skipped:
            log.info(
                "auction_series.auctions_created",
                series_id=str(series_id),
                created=run.created,
                skipped=run.skipped,
            )
    return created


@job_app.periodic(cron="*/15 * * * *", periodic_id="every-15-minutes")
@job_app.task(
    name="auction.create_series_auctions",
    queue=AUCTION_QUEUE,
    queueing_lock="auction.create_series_auctions",
    lock="auction.create_series_auctions",
)
async def create_series_auctions(timestamp: int | None = None) -> int:
    """Every 15 minutes: create the upcoming auctions of every active series."""
    return await create_all_series_auctions()
