"""Market data and GTD orders on a real database: OHLCV candles computed from the trades, GTD
validation and expiry (what the periodic task runs, called by hand), and the live SSE stream fed by
LISTEN/NOTIFY. Every scenario that trades or expires ends with ``assert_market_clean``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.time import utc_now
from app.db.session import create_sessionmaker
from app.db.url import libpq_url
from app.market.expiry import expire_due_orders
from app.market.stream import market_events
from app.worker.resources import use_sessionmaker
from tests.market.helpers import (
    Market,
    assert_market_clean,
    book,
    cash,
    credits,
    market,
    order,
    ordered,
)
from tests.offsets.helpers import assert_problem

Json = dict[str, Any]
DEPOSIT = 1_000_000


async def _trade(client: httpx.AsyncClient, m: Market, price: int, quantity: int) -> str:
    await ordered(client, m.sellers[0], m, "sell", price, quantity)
    buy = await ordered(client, m.buyers[0], m, "buy", price, quantity)
    assert buy["status"] == "filled", buy
    return str(buy["trades"][0]["id"])


async def _executed_at(session: AsyncSession, trade_id: str, at: datetime) -> None:
    await session.execute(
        text("UPDATE market_trades SET executed_at = :at WHERE id = :id"),
        {"at": at, "id": uuid.UUID(trade_id)},
    )
    await session.commit()


async def _candles(client: httpx.AsyncClient, m: Market, **params: Any) -> list[Json]:
    r = await client.get(f"/v1/markets/{m.code}/candles", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["product"] == m.code
    return list(body["candles"])


class TestCandles:
    async def test_ohlcv_per_interval(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        base = datetime(2026, 11, 27, 14, 58, 10, tzinfo=UTC)  # 23:58:10 JST
        # (price, quantity, seconds after base): the same second twice (id breaks the tie).
        fills = [(1000, 2, 0), (1050, 1, 20), (990, 3, 20), (1010, 4, 70), (1020, 5, 200)]
        for price, quantity, offset in fills:
            trade_id = await _trade(client, m, price, quantity)
            await _executed_at(session, trade_id, base + timedelta(seconds=offset))

        one_minute = await _candles(client, m, interval="1m")
        assert [(c["start"], c["open"], c["high"], c["low"], c["close"]) for c in one_minute] == [
            ("2026-11-27T14:58:00Z", 1000, 1050, 990, 990),
            ("2026-11-27T14:59:00Z", 1010, 1010, 1010, 1010),
            ("2026-11-27T15:01:00Z", 1020, 1020, 1020, 1020),
        ]
        first = one_minute[0]
        assert (first["volume"], first["turnover"], first["trades"]) == (
            6,
            1000 * 2 + 1050 + 990 * 3,
            3,
        )

        [five, _] = await _candles(client, m, interval="5m")
        assert five["start"] == "2026-11-27T14:55:00Z"
        assert (five["open"], five["high"], five["low"], five["close"]) == (1000, 1050, 990, 1010)
        assert five["volume"] == 10
        assert five["turnover"] == sum(p * q for p, q, _ in fills[:4])

        [hour_14, hour_15] = await _candles(client, m, interval="1h")
        assert (hour_14["start"], hour_14["close"], hour_14["volume"]) == (
            "2026-11-27T14:00:00Z",
            1010,
            10,
        )
        assert (hour_15["start"], hour_15["open"], hour_15["volume"]) == (
            "2026-11-27T15:00:00Z",
            1020,
            5,
        )

        # 1d: midnight Asia/Tokyo is 15:00Z, so the last trade starts a new day.
        [day_1, day_2] = await _candles(client, m, interval="1d")
        assert (day_1["start"], day_1["volume"]) == ("2026-11-26T15:00:00Z", 10)
        assert (day_2["start"], day_2["volume"]) == ("2026-11-27T15:00:00Z", 5)

        # limit: the latest ones; since: the first ones from the candle containing it.
        latest = await _candles(client, m, interval="1m", limit=1)
        assert [c["start"] for c in latest] == ["2026-11-27T15:01:00Z"]
        since = await _candles(client, m, interval="1m", since="2026-11-27T14:59:30Z", limit=1)
        assert [c["start"] for c in since] == ["2026-11-27T14:59:00Z"]
        await assert_market_clean(session)

    async def test_errors_and_empty(self, client: httpx.AsyncClient) -> None:
        m = await market(client, reference_price=1000)
        assert await _candles(client, m, interval="15m") == []
        r = await client.get("/v1/markets/NOPE-1/candles", params={"interval": "1m"})
        assert_problem(r, 404, "product_not_found")
        bad: list[dict[str, Any]] = [{"interval": "2m"}, {}, {"interval": "1m", "limit": 501}]
        for params in bad:
            r = await client.get(f"/v1/markets/{m.code}/candles", params=params)
            assert_problem(r, 422, "validation_error")


class TestGtdOrders:
    @pytest.mark.parametrize(
        "extra",
        [
            {"time_in_force": "gtd"},  # expires_at missing
            {"time_in_force": "gtd", "expires_at": "2020-01-01T00:00:00Z"},  # past
            {"time_in_force": "gtd", "expires_at": "2099-01-01T00:00:00"},  # no time zone
            {"expires_at": "2099-01-01T00:00:00Z"},  # gtc
            {"time_in_force": "ioc", "expires_at": "2099-01-01T00:00:00Z"},
        ],
    )
    async def test_validation(self, client: httpx.AsyncClient, extra: Json) -> None:
        m = await market(client, sellers=1, buyers=1, reference_price=1000)
        r = await order(client, m.buyers[0], m, "buy", 1000, 1, **extra)
        assert_problem(r, 422, "validation_error")
        r = await order(
            client,
            m.buyers[0],
            m,
            "buy",
            None,
            1,
            type="market",
            time_in_force="gtd",
            expires_at="2099-01-01T00:00:00Z",
        )
        assert_problem(r, 422, "validation_error")

    async def test_due_orders_expire_once_and_release_their_holds(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        m = await market(client, reference_price=1000)
        seller, buyer = m.sellers[0], m.buyers[0]
        later = (utc_now() + timedelta(hours=1)).isoformat()
        sell = await ordered(
            client, seller, m, "sell", 1100, 10, time_in_force="gtd", expires_at=later
        )
        buy = await ordered(client, buyer, m, "buy", 950, 10, time_in_force="gtd", expires_at=later)
        keep = await ordered(
            client,
            m.buyers[1],
            m,
            "buy",
            900,
            5,
            time_in_force="gtd",
            expires_at=(utc_now() + timedelta(days=1)).isoformat(),
        )
        assert (sell["time_in_force"], sell["expires_at"] is not None) == ("gtd", True)
        # A partial fill first: the rest expires.
        await ordered(client, m.sellers[1], m, "sell", 950, 4)
        assert await cash(client, buyer) == (DEPOSIT - 9_500, 5_700)
        assert await credits(client, seller, m.batch_id) == (990, 10)

        sessionmaker = create_sessionmaker(engine)
        with use_sessionmaker(sessionmaker):
            assert await expire_due_orders() == 0  # nothing due yet
            await session.execute(
                text(
                    "UPDATE market_orders SET expires_at = now() - interval '1 second'"
                    " WHERE id = ANY(:ids)"
                ),
                {"ids": [uuid.UUID(sell["id"]), uuid.UUID(buy["id"])]},
            )
            await session.commit()
            assert await expire_due_orders() == 2
            assert await expire_due_orders() == 0  # idempotent

        for o, status in ((sell, "expired"), (buy, "expired"), (keep, "open")):
            owner = seller if o is sell else buyer if o is buy else m.buyers[1]
            r = await client.get(f"/v1/orders/{o['id']}", headers=owner.headers)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == status
        r = await client.get(f"/v1/orders/{buy['id']}", headers=buyer.headers)
        assert (r.json()["filled_quantity"], r.json()["remaining_quantity"]) == (4, 0)
        assert r.json()["cancel_reason"] == "expired"
        assert await cash(client, buyer) == (DEPOSIT - 3_800, 0)
        assert await credits(client, seller, m.batch_id) == (1_000, 0)
        current = await book(client, m)
        assert current["asks"] == []
        assert [lv["price"] for lv in current["bids"]] == [900]
        # An expired order cannot be cancelled.
        r = await client.delete(f"/v1/orders/{sell['id']}", headers=seller.headers)
        assert_problem(r, 409, "order_not_open")
        await assert_market_clean(session)

    async def test_a_due_order_never_trades(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        later = (utc_now() + timedelta(hours=1)).isoformat()
        sell = await ordered(
            client, m.sellers[0], m, "sell", 1000, 5, time_in_force="gtd", expires_at=later
        )
        await session.execute(
            text("UPDATE market_orders SET expires_at = now() - interval '1 second'")
        )
        await session.commit()
        # Not yet expired by the task: the incoming order expires it and rests instead.
        buy = await ordered(client, m.buyers[0], m, "buy", 1000, 5)
        assert (buy["status"], buy["trades"]) == ("open", [])
        r = await client.get(f"/v1/orders/{sell['id']}", headers=m.sellers[0].headers)
        assert r.json()["status"] == "expired"
        assert await credits(client, m.sellers[0], m.batch_id) == (1_000, 0)
        await assert_market_clean(session)

    async def test_concurrent_runs_expire_each_order_once(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        m = await market(client, reference_price=1000)
        later = (utc_now() + timedelta(hours=1)).isoformat()
        for i in range(6):
            await ordered(
                client, m.buyers[i % 2], m, "buy", 900 + i, 1, time_in_force="gtd", expires_at=later
            )
        await session.execute(
            text("UPDATE market_orders SET expires_at = now() - interval '1 second'")
        )
        await session.commit()
        with use_sessionmaker(create_sessionmaker(engine)):
            counts = await asyncio.gather(*(expire_due_orders() for _ in range(4)))
        assert sum(counts) == 6
        assert (await book(client, m))["bids"] == []
        await assert_market_clean(session)


async def _next(events: AsyncIterator[str]) -> tuple[str, Json]:
    """The next SSE event (skipping heartbeats), within 10 s."""
    while True:
        chunk = await asyncio.wait_for(anext(events), timeout=10)
        if chunk.startswith(":"):
            continue
        name, data = chunk.strip().split("\n")
        return name.removeprefix("event: "), dict(json.loads(data.removeprefix("data: ")))


class TestStream:
    async def test_snapshot_then_committed_trades_and_levels(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        m = await market(client, reference_price=1000)
        await ordered(client, m.sellers[0], m, "sell", 1000, 10)
        product_id = uuid.UUID(str(m.product["id"]))

        async def snapshot() -> Json:
            return await book(client, m)

        dsn = libpq_url(engine.url.render_as_string(hide_password=False))
        events = market_events(dsn, product_id, snapshot, heartbeat=0.2)
        try:
            name, first = await _next(events)
            assert name == "snapshot"
            assert first["asks"] == [{"price": 1000, "quantity": 10, "orders": 1}]

            # A heartbeat comes while nothing happens.
            assert await asyncio.wait_for(anext(events), timeout=10) == ": heartbeat\n\n"

            # An order that fails (rolled back) publishes nothing; a trade that commits does.
            r = await order(client, m.buyers[0], m, "buy", 1000, 10_000)
            assert_problem(r, 409, "insufficient_balance")
            buy = await ordered(client, m.buyers[0], m, "buy", 1000, 4)
            name, trade = await _next(events)
            assert name == "trade"
            assert trade["id"] == buy["trades"][0]["id"]
            assert (trade["price"], trade["quantity"], trade["taker_side"]) == (1000, 4, "buy")
            assert await _next(events) == (
                "level",
                {"side": "buy", "price": 1000, "quantity": 0, "orders": 0},
            )
            assert await _next(events) == (
                "level",
                {"side": "sell", "price": 1000, "quantity": 6, "orders": 1},
            )
        finally:
            await events.aclose()
        # The dedicated connection is gone once the stream is closed.
        assert await _stream_connections(session) == 0
        await assert_market_clean(session)

    async def test_unknown_product_and_openapi(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/markets/NOPE-1/stream")
        assert_problem(r, 404, "product_not_found")
        spec = (await client.get("/openapi.json")).json()
        operation = spec["paths"]["/v1/markets/{product}/stream"]["get"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        assert "Server-Sent Events" in operation["summary"]


async def _stream_connections(session: AsyncSession) -> int:
    count = await session.scalar(
        text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tanso-stream'"
            " AND datname = current_database()"
        )
    )
    await session.rollback()
    return int(count or 0)


class TestStreamOverHttp:
    async def test_a_client_receives_a_trade_and_its_disconnect_closes_the_listener(
        self, app: Any, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        await ordered(client, m.sellers[0], m, "sell", 1000, 10)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.wait_for(asyncio.sleep(0.05), timeout=1)
                assert not serving.done()
            port = server.servers[0].sockets[0].getsockname()[1]
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
                http.stream("GET", f"/v1/markets/{m.code}/stream") as r,
            ):
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = r.aiter_lines()

                async def event() -> tuple[str, Json]:
                    name = ""
                    while True:
                        line = await asyncio.wait_for(anext(lines), timeout=10)
                        if line.startswith("event: "):
                            name = line.removeprefix("event: ")
                        elif line.startswith("data: "):
                            return name, dict(json.loads(line.removeprefix("data: ")))

                name, snapshot = await event()
                assert name == "snapshot"
                assert snapshot["asks"] == [{"price": 1000, "quantity": 10, "orders": 1}]
                assert await _stream_connections(session) == 1

                buy = await ordered(client, m.buyers[0], m, "buy", 1000, 3)
                name, trade = await event()
                assert (name, trade["id"]) == ("trade", buy["trades"][0]["id"])
            # The client went away: the server closes its LISTEN connection.
            for _ in range(100):
                if await _stream_connections(session) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await _stream_connections(session) == 0
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, timeout=10)
        await assert_market_clean(session)
