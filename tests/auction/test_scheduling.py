"""Auctions close by themselves on time, and series create their auctions ahead, on a real
database: the close jobs (``auction.close``, ``auction.close_due``) run directly and through
real workers, once however many run; the series scheduler creates each window's auction once
and skips the windows whose supply the creator cannot hold."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auction.models import Auction
from app.auction.tasks import (
    AUCTION_QUEUE,
    close_auction_job,
    close_due,
    close_due_auctions,
    create_all_series_auctions,
)
from app.db.session import SessionMaker, create_sessionmaker
from app.worker.defer import defer_in_session
from app.worker.resources import use_sessionmaker
from app.worker.runner import run_worker
from tests.auction.helpers import (
    Json,
    Seller,
    assert_nothing_held,
    at,
    auctioneer,
    cash,
    close_by_clock,
    closed,
    create_auction,
    placed,
)
from tests.factories import Org, create_org, deposit
from tests.offsets.helpers import assert_books_clean, count_rows, credit_balances

TOKYO = ZoneInfo("Asia/Tokyo")
FUNDS = 1_000_000


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return create_sessionmaker(engine)


async def _bidder(client: httpx.AsyncClient) -> Org:
    org = await create_org(client)
    await deposit(client, org, FUNDS)
    return org


async def _due_auction(client: httpx.AsyncClient, session: AsyncSession) -> tuple[Seller, Json]:
    """An auction with two bids (all its 1,000 credits sold at 120) whose close time has passed
    with no close."""
    seller = await auctioneer(client, 10_000)
    auction = await create_auction(client, seller, 1_000)
    await placed(client, await _bidder(client), auction, 150, 600)
    await placed(client, await _bidder(client), auction, 120, 600)
    await close_by_clock(session, auction)
    return seller, auction


async def _status(session: AsyncSession, auction: Json) -> str:
    value = await session.scalar(
        text("SELECT status FROM auctions WHERE id = :id"), {"id": uuid.UUID(auction["id"])}
    )
    await session.rollback()
    return str(value)


async def _assert_settled_once(
    client: httpx.AsyncClient, session: AsyncSession, seller: Seller, auction: Json
) -> None:
    assert await _status(session, auction) == "settled"
    assert await count_rows(session, "auction_results") == 1
    assert await count_rows(session, "auction_allocations") == 2
    # Uniform at 120 for 1,000: paid once, delivered once.
    assert await cash(client, seller.org) == (120_000, 0)
    assert await credit_balances(client, seller.org) == {seller.batch_id: (9_000, 0)}
    await assert_nothing_held(session)
    await assert_books_clean(session)


async def _burst(url: str, sessionmaker: SessionMaker, name: str = "tanso") -> None:
    await run_worker(
        url,
        sessionmaker=sessionmaker,
        name=name,
        concurrency=2,
        queues=[AUCTION_QUEUE],
        wait=False,
        install_signal_handlers=False,
    )


async def _job_statuses(engine: AsyncEngine, task_name: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT status::text, count(*) FROM procrastinate_jobs"
                " WHERE task_name = :t GROUP BY status"
            ),
            {"t": task_name},
        )
        return {row[0]: row[1] for row in rows}


async def _assert_sweep_ran(engine: AsyncEngine) -> None:
    """The sweep we queued succeeded (a worker's periodic deferrer may queue one more for the
    current minute, left waiting or also run: it finds nothing due)."""
    statuses = await _job_statuses(engine, "auction.close_due")
    assert statuses.get("succeeded", 0) >= 1
    assert set(statuses) <= {"succeeded", "todo"}


class TestCloseOnTime:
    async def test_the_sweep_closes_and_settles_a_due_auction(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: SessionMaker
    ) -> None:
        seller, auction = await _due_auction(client, session)
        not_due = await create_auction(client, seller, 500)  # closes in two hours

        with use_sessionmaker(sessionmaker):
            assert await close_due_auctions() == 1
            assert await close_due_auctions() == 0  # idempotent
            assert await close_due(timestamp=0) == 0

        await _assert_settled_once_but_open(client, session, seller, auction, not_due)

    async def test_creating_an_auction_queues_its_close_at_closes_at(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)

        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT args, scheduled_at, queue_name FROM procrastinate_jobs"
                        " WHERE task_name = 'auction.close'"
                    )
                )
            ).all()
        assert len(rows) == 1
        args, scheduled_at, queue = rows[0]
        assert args == {"auction_id": auction["id"]}
        assert scheduled_at == datetime.fromisoformat(auction["closes_at"])
        assert queue == AUCTION_QUEUE

    async def test_the_one_off_job_closes_only_a_due_auction(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: SessionMaker
    ) -> None:
        seller, auction = await _due_auction(client, session)
        later = await create_auction(client, seller, 500)

        with use_sessionmaker(sessionmaker):
            assert await close_auction_job(auction_id=later["id"]) is False  # not due yet
            assert await close_auction_job(auction_id=auction["id"]) is True
            assert await close_auction_job(auction_id=auction["id"]) is False

        await _assert_settled_once_but_open(client, session, seller, auction, later)

    async def test_a_worker_runs_the_job_queued_at_creation(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        sessionmaker: SessionMaker,
        database_url: str,
        engine: AsyncEngine,
    ) -> None:
        seller = await auctioneer(client, 10_000)
        auction = await create_auction(client, seller, 1_000, closes_at=at(seconds=1.5))
        await placed(client, await _bidder(client), auction, 150, 600)
        await placed(client, await _bidder(client), auction, 120, 600)
        left = datetime.fromisoformat(auction["closes_at"]) - datetime.now(UTC)
        await asyncio.sleep(max(0.0, left.total_seconds()) + 0.2)  # until it is due

        await _burst(database_url, sessionmaker)

        assert await _job_statuses(engine, "auction.close") == {"succeeded": 1}
        await _assert_settled_once(client, session, seller, auction)

    async def test_a_worker_runs_the_sweep(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        sessionmaker: SessionMaker,
        database_url: str,
        engine: AsyncEngine,
    ) -> None:
        seller, auction = await _due_auction(client, session)
        await defer_in_session(session, close_due)
        await session.commit()

        await _burst(database_url, sessionmaker)

        await _assert_sweep_ran(engine)
        await _assert_settled_once(client, session, seller, auction)

    async def test_a_closed_auction_is_left_alone(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: SessionMaker
    ) -> None:
        seller = await auctioneer(client, 10_000)
        auction = await create_auction(client, seller, 1_000)
        await placed(client, await _bidder(client), auction, 150, 600)
        await placed(client, await _bidder(client), auction, 120, 600)
        await closed(client, seller.org, auction)  # by the endpoint, before the close time
        await close_by_clock(session, auction)

        with use_sessionmaker(sessionmaker):
            assert await close_due_auctions() == 0
            assert await close_auction_job(auction_id=auction["id"]) is False

        await _assert_settled_once(client, session, seller, auction)


@pytest.mark.concurrency
class TestExactlyOnce:
    async def test_concurrent_sweeps_and_jobs_close_once(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: SessionMaker
    ) -> None:
        seller, auction = await _due_auction(client, session)

        with use_sessionmaker(sessionmaker):
            outcomes = await asyncio.gather(
                close_due_auctions(),
                close_due_auctions(),
                close_auction_job(auction_id=auction["id"]),
                close_auction_job(auction_id=auction["id"]),
                close_due_auctions(),
            )

        assert sum(int(o) for o in outcomes) == 1
        await _assert_settled_once(client, session, seller, auction)

    async def test_two_workers_close_once(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        sessionmaker: SessionMaker,
        database_url: str,
        engine: AsyncEngine,
    ) -> None:
        seller, auction = await _due_auction(client, session)
        # The sweep (its queueing lock keeps one waiting) and three one-off closes, all due.
        await defer_in_session(session, close_due)
        for _ in range(3):
            await defer_in_session(session, close_auction_job, auction_id=auction["id"])
        await session.commit()

        await asyncio.gather(
            _burst(database_url, sessionmaker, name="a"),
            _burst(database_url, sessionmaker, name="b"),
        )

        # (The close queued at creation waits for the original close time: it will find the
        # auction settled.)
        assert await _job_statuses(engine, "auction.close") == {"succeeded": 3, "todo": 1}
        await _assert_sweep_ran(engine)
        await _assert_settled_once(client, session, seller, auction)


async def _assert_settled_once_but_open(
    client: httpx.AsyncClient,
    session: AsyncSession,
    seller: Seller,
    auction: Json,
    still_open: Json,
) -> None:
    assert await _status(session, auction) == "settled"
    assert await _status(session, still_open) == "open"
    assert await count_rows(session, "auction_results") == 1
    assert await cash(client, seller.org) == (120_000, 0)
    # 500 still held for the open auction.
    assert await credit_balances(client, seller.org) == {seller.batch_id: (8_500, 500)}
    await assert_books_clean(session)


# --- series ------------------------------------------------------------------------------

WEEKDAYS = [1, 3, 5]  # Monday, Wednesday, Friday


def series_body(seller: Seller, quantity: int = 100, **fields: object) -> Json:
    body: Json = {
        "title": "Weekly government J-Credit tender",
        "format": "uniform",
        "supply": [{"batch_id": seller.batch_id, "quantity": quantity}],
        "rules": {"min_bid_quantity": 10, "quantity_step": 10, "reserve_price": 100},
        "schedule": {
            "weekdays": WEEKDAYS,
            "opens_at": "10:00",
            "closes_at": "12:00",
            "horizon_days": 14,
        },
    }
    body.update(fields)
    return body


async def create_series(
    client: httpx.AsyncClient, seller: Seller, quantity: int = 100, **fields: object
) -> Json:
    r = await client.post(
        "/v1/auction-series",
        json=series_body(seller, quantity, **fields),
        headers=seller.org.headers,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def expected_windows(now: datetime, days: int = 14) -> list[tuple[datetime, datetime]]:
    """The (opens_at, closes_at) of the Mon/Wed/Fri 10:00–12:00 Tokyo windows from today
    (Tokyo) over ``days`` days, not yet closed."""
    today: date = now.astimezone(TOKYO).date()
    out = []
    for offset in range(days):
        day = today + timedelta(days=offset)
        if day.isoweekday() in WEEKDAYS:
            opens = datetime.combine(day, time(10), TOKYO)
            closes = datetime.combine(day, time(12), TOKYO)
            if closes > now:
                out.append((opens, closes))
    return out


async def series_auctions(session: AsyncSession, series_id: str) -> list[Auction]:
    rows = await session.scalars(
        select(Auction).where(Auction.series_id == uuid.UUID(series_id)).order_by(Auction.opens_at)
    )
    auctions = list(rows)
    session.expunge_all()  # kept loaded (a rollback would expire them)
    await session.rollback()
    return auctions


class TestSeries:
    async def test_creates_the_auctions_of_the_next_weekdays_once(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        sessionmaker: SessionMaker,
        engine: AsyncEngine,
    ) -> None:
        seller = await auctioneer(client, 10_000)
        series = await create_series(client, seller)
        assert series["schedule"] == series_body(seller)["schedule"]
        assert series["rules"]["reserve_price"] == 100  # the creator sees it
        # Creating the series queued a run of the scheduler.
        assert await _job_statuses(engine, "auction.create_series_auctions") == {"todo": 1}
        expected = expected_windows(datetime.now(UTC))
        assert len(expected) >= 5

        with use_sessionmaker(sessionmaker):
            assert await create_all_series_auctions() == len(expected)
            assert await create_all_series_auctions() == 0  # never twice

        auctions = await series_auctions(session, series["id"])
        assert [(a.opens_at, a.closes_at) for a in auctions] == expected
        assert {a.supply_quantity for a in auctions} == {100}
        assert {a.reserve_price for a in auctions} == {100}
        assert {a.created_by_organization_id for a in auctions} == {uuid.UUID(seller.org.id)}
        for a in auctions:
            day = a.opens_at.astimezone(TOKYO).date().isoformat()
            assert a.title == f"Weekly government J-Credit tender ({day})"
        # Each holds its supply from the creator, and queued its close.
        n = len(expected)
        assert await credit_balances(client, seller.org) == {
            seller.batch_id: (10_000 - 100 * n, 100 * n)
        }
        assert await _job_statuses(engine, "auction.close") == {"todo": n}
        await assert_books_clean(session)

        # Each auction is an ordinary one (shown by the auctions API).
        r = await client.get(f"/v1/auctions/{auctions[0].id}", headers=seller.org.headers)
        assert r.status_code == 200, r.text

    async def test_a_creator_without_the_credits_gets_nothing_and_others_go_on(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: SessionMaker
    ) -> None:
        poor = await auctioneer(client, 50)
        rich = await auctioneer(client, 10_000)
        lacking = await create_series(client, poor, quantity=100)
        healthy = await create_series(client, rich, quantity=100)

        with use_sessionmaker(sessionmaker):
            created = await create_all_series_auctions()

        assert await series_auctions(session, lacking["id"]) == []
        assert created == len(await series_auctions(session, healthy["id"])) > 0
        assert await credit_balances(client, poor.org) == {poor.batch_id: (50, 0)}
        await assert_books_clean(session)

    async def test_an_inactive_series_creates_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: SessionMaker
    ) -> None:
        seller = await auctioneer(client, 10_000)
        series = await create_series(client, seller, active=False)

        with use_sessionmaker(sessionmaker):
            assert await create_all_series_auctions() == 0
        assert await series_auctions(session, series["id"]) == []

    async def test_read_and_validation(self, client: httpx.AsyncClient) -> None:
        seller = await auctioneer(client, 10_000)
        series = await create_series(client, seller)
        other = await create_org(client)

        r = await client.get(f"/v1/auction-series/{series['id']}", headers=seller.org.headers)
        assert r.status_code == 200, r.text
        assert r.json() == series
        r = await client.get(f"/v1/auction-series/{series['id']}", headers=other.headers)
        assert r.status_code == 200, r.text
        assert r.json()["rules"]["reserve_price"] is None  # confidential
        r = await client.get(f"/v1/auction-series/{uuid.uuid4()}", headers=other.headers)
        assert r.status_code == 404
        assert r.json()["code"] == "auction_series_not_found"

        bad_window = series_body(seller)
        bad_window["schedule"] = {"weekdays": [1], "opens_at": "12:00", "closes_at": "10:00"}
        bad_day = series_body(seller)
        bad_day["schedule"] = {"weekdays": [0], "opens_at": "10:00", "closes_at": "12:00"}
        bad_step = series_body(seller, quantity=105)  # not a multiple of quantity_step 10
        for body in (bad_window, bad_day, bad_step):
            r = await client.post("/v1/auction-series", json=body, headers=seller.org.headers)
            assert r.status_code == 422, r.text
        r = await client.post("/v1/auction-series", json=series_body(seller), headers=other.headers)
        assert r.status_code == 403
