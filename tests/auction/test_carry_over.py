"""Carry-over: the unsold credits of the creator's lots go to the series' next auction that has
not opened yet (or wait on the series until it creates one); consigned credits go back to
their sellers. Real commits; holds stay consistent and the checkers stay clean."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import series as series_service
from app.auction import service as auction_service
from app.auction.models import Auction, AuctionSeries, AuctionSupply
from tests.auction.helpers import (
    Json,
    Seller,
    assert_nothing_held,
    auctioneer,
    closed,
    placed,
    results,
    set_window,
)
from tests.factories import create_org, deposit
from tests.offsets.helpers import assert_books_clean, credit_balances, new_batch

STEP = 10


def series_body(seller: Seller, quantity: int, **fields: object) -> Json:
    body: Json = {
        "title": "Weekly government J-Credit tender",
        "format": "uniform",
        "supply": [{"batch_id": seller.batch_id, "quantity": quantity}],
        "rules": {
            "min_bid_quantity": STEP,
            "quantity_step": STEP,
            "undersubscribed": "sell_what_is_bid",
        },
        "schedule": {
            "weekdays": [1, 2, 3, 4, 5, 6, 7],
            "opens_at": "10:00",
            "closes_at": "12:00",
            "horizon_days": 3,
        },
    }
    body.update(fields)
    return body


async def new_series(
    client: httpx.AsyncClient, seller: Seller, quantity: int = 100, **fields: object
) -> Json:
    r = await client.post(
        "/v1/auction-series",
        json=series_body(seller, quantity, **fields),
        headers=seller.org.headers,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def series_auction(
    session: AsyncSession, seller: Seller, series: Json, opens_in: timedelta
) -> Json:
    """An auction of the series (its template), created directly while still scheduled,
    opening in ``opens_in`` (at least a minute: ``open_now`` opens it earlier)."""
    row = await session.get(AuctionSeries, uuid.UUID(series["id"]))
    assert row is not None
    opens_at = datetime.now(UTC) + max(opens_in, timedelta(minutes=1))
    body = series_service.template_of(row).auction(
        f"{series['title']} {opens_in}", opens_at, opens_at + timedelta(hours=2)
    )
    auction = await auction_service.create_auction(
        session, uuid.UUID(seller.org.id), body, series_id=row.id
    )
    await session.commit()
    out = {"id": str(auction.id)}
    session.expunge_all()
    return out


async def open_now(session: AsyncSession, auction: Json) -> None:
    now = datetime.now(UTC)
    await set_window(session, auction, now - timedelta(minutes=5), now + timedelta(hours=1))


async def lots(session: AsyncSession, auction: Json) -> list[tuple[int, str | None, str]]:
    """(quantity, carried from, seller) of each lot: its own lots first, then carried ones."""
    rows = (
        await session.execute(
            select(
                AuctionSupply.quantity,
                AuctionSupply.carried_from_auction_id,
                AuctionSupply.seller_organization_id,
            )
            .where(AuctionSupply.auction_id == uuid.UUID(auction["id"]))
            .order_by(
                AuctionSupply.carried_from_auction_id.is_not(None),
                AuctionSupply.created_at,
                AuctionSupply.id,
            )
        )
    ).all()
    await session.rollback()
    return [(int(q), None if f is None else str(f), str(s)) for q, f, s in rows]


async def supply_quantity(session: AsyncSession, auction: Json) -> int:
    value = await session.scalar(
        select(Auction.supply_quantity).where(Auction.id == uuid.UUID(auction["id"]))
    )
    await session.rollback()
    return int(value or 0)


class TestToTheNextAuction:
    async def test_unsold_credits_grow_the_next_auctions_supply(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        series = await new_series(client, seller, 100)
        first = await series_auction(session, seller, series, timedelta(0))
        second = await series_auction(session, seller, series, timedelta(hours=5))
        await open_now(session, first)
        buyer = await create_org(client)
        await deposit(client, buyer, 1_000_000)
        await placed(client, buyer, first, 100, 30)

        await closed(client, seller.org, first)
        published = await results(client, seller.org, first)
        assert (published["sold_quantity"], published["unsold_quantity"]) == (30, 70)
        assert published["carried_over_quantity"] == 70
        assert published["carried_to_auction_id"] == second["id"]
        assert await supply_quantity(session, second) == 170
        assert await lots(session, second) == [
            (100, None, seller.org.id),
            (70, first["id"], seller.org.id),
        ]
        # Held: the second auction's own 100 and the carried 70; sold 30 went to the buyer.
        assert (await credit_balances(client, seller.org))[seller.batch_id] == (
            10_000 - 30 - 170,
            170,
        )
        await assert_books_clean(session)

        # The carried lot sells in the next auction like any other lot (pro rata).
        await open_now(session, second)
        await placed(client, buyer, second, 100, 170)
        await closed(client, seller.org, second)
        again = await results(client, seller.org, second)
        assert (again["sold_quantity"], again["carried_over_quantity"]) == (170, 0)
        assert sorted(c["sold_quantity"] for c in again["consignments"]) == [70, 100]
        assert (await credit_balances(client, buyer))[seller.batch_id] == (200, 0)
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_consigned_credits_go_back_and_the_carry_is_rounded_to_the_step(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        series = await new_series(client, seller, 100)
        first = await series_auction(session, seller, series, timedelta(hours=1))
        second = await series_auction(session, seller, series, timedelta(hours=5))
        municipality = await create_org(client, kind="municipality")
        forest = await new_batch(client, municipality, 500)
        r = await client.post(
            f"/v1/auctions/{first['id']}/consignments",
            json={"batch_id": forest.batch_id, "quantity": 30},
            headers=municipality.headers,
        )
        assert r.status_code == 201, r.text
        await open_now(session, first)
        buyer = await create_org(client)
        await deposit(client, buyer, 1_000_000)
        await placed(client, buyer, first, 100, 70)

        await closed(client, seller.org, first)
        # 70 of 130 drawn pro rata: 54 from the creator's 100, 16 from the consigned 30.
        published = await results(client, municipality, first)
        assert published["consignments"][0]["sold_quantity"] == 16
        assert published["sellers"] == [
            {"seller": "S1", "offered_quantity": 100, "sold_quantity": 54},
            {"seller": "S2", "offered_quantity": 30, "sold_quantity": 16},
        ]
        # The creator's 46 unsold: 40 carried (4 steps), 6 back; the consignor's 14 back.
        assert published["carried_over_quantity"] == 40
        assert (await credit_balances(client, municipality))[forest.batch_id] == (484, 0)
        assert await supply_quantity(session, second) == 140
        assert (await credit_balances(client, seller.org))[seller.batch_id] == (
            10_000 - 54 - 140,
            140,
        )
        await assert_books_clean(session)


class TestPendingOnTheSeries:
    async def test_waits_for_the_next_auction_the_series_creates(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        series = await new_series(client, seller, 100)
        first = await series_auction(session, seller, series, timedelta(0))
        await open_now(session, first)

        closing = await closed(client, seller.org, first)  # no bids: nothing sold
        assert closing["status"] == "cancelled"
        published = await results(client, seller.org, first)
        assert (published["carried_over_quantity"], published["carried_to_auction_id"]) == (
            100,
            None,
        )
        got = await client.get(f"/v1/auction-series/{series['id']}", headers=seller.org.headers)
        assert got.json()["pending_carry_over_quantity"] == 100
        assert (await credit_balances(client, seller.org))[seller.batch_id] == (9_900, 100)
        await assert_books_clean(session)

        row = (
            await session.execute(
                select(AuctionSeries)
                .where(AuctionSeries.id == uuid.UUID(series["id"]))
                .with_for_update()
            )
        ).scalar_one()
        run = await series_service.create_series_auctions(session, row)
        await session.commit()
        assert run.created >= 2
        created = (
            await session.execute(
                text(
                    "SELECT id, supply_quantity FROM auctions WHERE series_id = :s AND id <> :f"
                    " AND opens_at > now() ORDER BY opens_at"
                ),
                {"s": uuid.UUID(series["id"]), "f": uuid.UUID(first["id"])},
            )
        ).all()
        await session.rollback()
        receiving = {"id": str(created[0].id)}
        assert created[0].supply_quantity == 200
        assert all(later.supply_quantity == 100 for later in created[1:])
        assert await lots(session, receiving) == [
            (100, None, seller.org.id),
            (100, first["id"], seller.org.id),
        ]
        published = await results(client, seller.org, first)
        assert published["carried_to_auction_id"] == receiving["id"]
        got = await client.get(f"/v1/auction-series/{series['id']}", headers=seller.org.headers)
        assert got.json()["pending_carry_over_quantity"] == 0
        await assert_books_clean(session)

    async def test_no_carry_when_the_series_says_so(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        series = await new_series(client, seller, 100, carry_over=False)
        assert series["carry_over"] is False
        first = await series_auction(session, seller, series, timedelta(0))
        second = await series_auction(session, seller, series, timedelta(hours=5))
        await open_now(session, first)
        await closed(client, seller.org, first)
        published = await results(client, seller.org, first)
        assert (published["carried_over_quantity"], published["carried_to_auction_id"]) == (
            0,
            None,
        )
        assert await supply_quantity(session, second) == 100
        assert (await credit_balances(client, seller.org))[seller.batch_id] == (9_900, 100)
        await assert_books_clean(session)
