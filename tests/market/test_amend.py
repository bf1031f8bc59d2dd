"""Amending orders through the API (``PATCH /v1/orders/{id}``, ``app.market.amend``): a reduced
quantity keeps its time priority, any other change loses it and may trade at once; holds
follow. Every scenario ends with ``assert_market_clean``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import Org, deposit
from tests.market.helpers import (
    Market,
    assert_market_clean,
    book,
    cash,
    credits,
    market,
    ordered,
)
from tests.offsets.helpers import assert_problem, count_rows

DEPOSIT = 1_000_000
Json = dict[str, Any]


async def amend(client: httpx.AsyncClient, org: Org, o: Json, **body: Any) -> httpx.Response:
    return await client.patch(f"/v1/orders/{o['id']}", json=body, headers=org.headers)


async def amended(client: httpx.AsyncClient, org: Org, o: Json, **body: Any) -> Json:
    r = await amend(client, org, o, **body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def fetch(client: httpx.AsyncClient, org: Org, o: Json) -> Json:
    r = await client.get(f"/v1/orders/{o['id']}", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


class TestPriority:
    async def test_a_reduction_keeps_time_priority_and_releases_cash(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        (b0, b1), seller = m.buyers, m.sellers[0]
        first = await ordered(client, b0, m, "buy", 1000, 10)
        second = await ordered(client, b1, m, "buy", 1000, 10)
        got = await amended(client, b0, first, quantity=6)
        assert (got["quantity"], got["remaining_quantity"]) == (6, 6)
        assert got["sequence"] == first["sequence"]
        assert await cash(client, b0) == (DEPOSIT - 6_000, 6_000)
        # First in the queue still: a sell of 8 fills it (6) before the second (2).
        await ordered(client, seller, m, "sell", 1000, 8)
        assert (await fetch(client, b0, first))["status"] == "filled"
        assert (await fetch(client, b1, second))["filled_quantity"] == 2
        await assert_market_clean(session)

    async def test_an_increase_loses_priority_and_holds_more(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        (b0, b1), seller = m.buyers, m.sellers[0]
        first = await ordered(client, b0, m, "buy", 1000, 10)
        second = await ordered(client, b1, m, "buy", 1000, 10)
        got = await amended(client, b0, first, quantity=12)
        assert got["sequence"] > second["sequence"]
        assert (got["quantity"], got["status"]) == (12, "open")
        assert await cash(client, b0) == (DEPOSIT - 12_000, 12_000)
        await ordered(client, seller, m, "sell", 1000, 10)
        assert (await fetch(client, b1, second))["status"] == "filled"
        assert (await fetch(client, b0, first))["filled_quantity"] == 0
        assert (await book(client, m))["bids"] == [{"price": 1000, "quantity": 12, "orders": 1}]
        await assert_market_clean(session)

    async def test_the_same_values_change_nothing(self, client: httpx.AsyncClient) -> None:
        m = await market(client, reference_price=1000)
        o = await ordered(client, m.buyers[0], m, "buy", 1000, 10)
        got = await amended(client, m.buyers[0], o, quantity=10, price=1000)
        assert (got["sequence"], got["updated_at"]) == (o["sequence"], o["updated_at"])


class TestPriceChanges:
    async def test_a_price_change_that_crosses_trades_at_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        buyer, seller = m.buyers[0], m.sellers[0]
        await ordered(client, seller, m, "sell", 1000, 4)
        o = await ordered(client, buyer, m, "buy", 950, 10)
        assert await cash(client, buyer) == (DEPOSIT - 9_500, 9_500)
        got = await amended(client, buyer, o, price=1050)
        # 4 at the resting 1000 (the improvement released), 6 rest at 1050.
        assert (got["status"], got["filled_quantity"], got["price"]) == (
            "partially_filled",
            4,
            1050,
        )
        [trade] = got["trades"]
        assert (trade["price"], trade["quantity"], trade["liquidity"]) == (1000, 4, "taker")
        assert await cash(client, buyer) == (DEPOSIT - 4_000 - 6_300, 6_300)
        assert await credits(client, buyer, m.batch_id) == (4, 0)
        assert await cash(client, seller) == (4_000, 0)
        assert (await book(client, m))["bids"] == [{"price": 1050, "quantity": 6, "orders": 1}]
        await assert_market_clean(session)

    async def test_a_sell_reduction_and_a_price_change(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        seller = m.sellers[0]
        o = await ordered(client, seller, m, "sell", 1050, 10)
        assert await credits(client, seller, m.batch_id) == (990, 10)
        got = await amended(client, seller, o, quantity=7, price=1020)
        assert (got["quantity"], got["price"]) == (7, 1020)
        assert await credits(client, seller, m.batch_id) == (993, 7)
        # It trades at its new price with a buyer.
        await ordered(client, m.buyers[0], m, "buy", 1020, 7)
        assert (await fetch(client, seller, o))["status"] == "filled"
        assert await credits(client, seller, m.batch_id) == (993, 0)
        await assert_market_clean(session)

    async def test_a_post_only_order_that_would_cross_is_refused_unchanged(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        buyer = m.buyers[0]
        await ordered(client, m.sellers[0], m, "sell", 1000, 5)
        o = await ordered(client, buyer, m, "buy", 950, 5, post_only=True)
        assert_problem(await amend(client, buyer, o, price=1000), 409, "order_rejected")
        got = await fetch(client, buyer, o)
        assert (got["price"], got["sequence"], got["status"]) == (950, o["sequence"], "open")
        assert await cash(client, buyer) == (DEPOSIT - 4_750, 4_750)
        await assert_market_clean(session)

    async def test_crossing_its_own_order_cancels_the_amended_one(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        trader = m.sellers[0]
        await deposit(client, trader, 100_000)
        await ordered(client, trader, m, "sell", 1000, 5)
        o = await ordered(client, trader, m, "buy", 950, 5)
        got = await amended(client, trader, o, price=1000)
        assert (got["status"], got["cancel_reason"], got["trades"]) == (
            "cancelled",
            "self_trade",
            [],
        )
        assert await cash(client, trader) == (100_000, 0)
        await assert_market_clean(session)


class TestRefusals:
    async def test_holds_shortfall_and_bounds(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000, cash=20_000)
        buyer, seller = m.buyers[0], m.sellers[0]
        o = await ordered(client, buyer, m, "buy", 1000, 10)
        # 25 × 1000 is more than the buyer has: nothing changes.
        assert_problem(await amend(client, buyer, o, quantity=25), 409, "insufficient_balance")
        got = await fetch(client, buyer, o)
        assert (got["quantity"], got["sequence"]) == (10, o["sequence"])
        assert await cash(client, buyer) == (10_000, 10_000)
        # Out of the band (±10% of 1000), as on placing.
        body = assert_problem(await amend(client, buyer, o, price=1101), 422, "price_outside_band")
        assert body["errors"][0]["loc"] == ["body", "price"]
        # A sell cannot grow.
        s = await ordered(client, seller, m, "sell", 1050, 5)
        assert_problem(
            await amend(client, seller, s, quantity=6), 409, "amend_increase_not_supported"
        )
        assert await credits(client, seller, m.batch_id) == (995, 5)
        await assert_market_clean(session)

    async def test_not_below_what_is_filled(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        buyer = m.buyers[0]
        o = await ordered(client, buyer, m, "buy", 1000, 10)
        await ordered(client, m.sellers[0], m, "sell", 1000, 4)
        for quantity in (4, 3):
            r = await amend(client, buyer, o, quantity=quantity)
            assert_problem(r, 409, "amend_below_filled")
        got = await amended(client, buyer, o, quantity=5)
        assert (got["remaining_quantity"], got["status"]) == (1, "partially_filled")
        assert await cash(client, buyer) == (DEPOSIT - 4_000 - 1_000, 1_000)
        await assert_market_clean(session)

    async def test_bad_input_others_orders_and_closed_orders(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        (b0, b1) = m.buyers
        o = await ordered(client, b0, m, "buy", 1000, 10)
        for body in (
            {},
            {"quantity": 0},
            {"quantity": -1},
            {"price": "1000"},
            {"price": 1.5},
            {"quantity": 10**10},
            {"side": "sell"},
        ):
            r = await amend(client, b0, o, **body)
            assert r.status_code == 422, (body, r.text)
        assert_problem(await amend(client, b1, o, quantity=5), 404, "order_not_found")
        r = await client.patch(
            "/v1/orders/00000000-0000-7000-8000-000000000000",
            json={"quantity": 1},
            headers=b0.headers,
        )
        assert_problem(r, 404, "order_not_found")
        r = await client.delete(f"/v1/orders/{o['id']}", headers=b0.headers)
        assert r.status_code == 200, r.text
        assert_problem(await amend(client, b0, o, quantity=5), 409, "order_not_open")
        await assert_market_clean(session)

    async def test_an_amend_racing_a_cancel(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        buyer = m.buyers[0]
        orders = [await ordered(client, buyer, m, "buy", 990, 5) for _ in range(5)]
        jobs = []
        for o in orders:
            jobs.append(amend(client, buyer, o, quantity=8, price=995))
            jobs.append(client.delete(f"/v1/orders/{o['id']}", headers=buyer.headers))
        results = await asyncio.gather(*jobs)
        assert {r.status_code for r in results} <= {200, 409}
        for o in orders:
            assert (await fetch(client, buyer, o))["status"] == "cancelled"
        assert await cash(client, buyer) == (DEPOSIT, 0)
        await assert_market_clean(session)


class TestCallProducts:
    async def test_an_amend_never_trades_before_the_call(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m: Market = await market(
            client, reference_price=1000, trading_mode="call", call_times=["15:00"]
        )
        buyer = m.buyers[0]
        await ordered(client, m.sellers[0], m, "sell", 1000, 5)
        o = await ordered(client, buyer, m, "buy", 950, 5)
        got = await amended(client, buyer, o, price=1050)
        assert (got["status"], got["trades"], got["price"]) == ("open", [], 1050)
        assert got["sequence"] > o["sequence"]
        assert await count_rows(session, "market_trades") == 0
        assert await cash(client, buyer) == (DEPOSIT - 5_250, 5_250)
        await assert_market_clean(session)
