"""The continuous order book through the API, on a real database: orders hold cash or credits,
match at the resting price, settle every fill in the same transaction, and release what an
order no longer needs. Every scenario ends with ``assert_market_clean``."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.factories import Org, create_org, deposit
from tests.market.helpers import (
    assert_market_clean,
    book,
    book_from_database,
    cash,
    create_product,
    credits,
    market,
    order,
    ordered,
)
from tests.offsets.helpers import assert_problem, count_rows

DEPOSIT = 1_000_000


class TestProducts:
    async def test_admin_creates_and_any_key_lists(self, client: httpx.AsyncClient) -> None:
        m = await market(client, reference_price=1000)
        assert m.product["band_bps"] == 1000
        assert m.product["reference_price"] == 1000
        r = await client.get("/v1/products", headers=m.buyers[0].headers)
        assert r.status_code == 200, r.text
        assert [p["code"] for p in r.json()] == [m.code]

    async def test_product_needs_a_batch(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await create_product(client, None), 422, "invalid_product")
        assert "category products" in body["detail"]

    async def test_duplicate_code_and_rights(self, client: httpx.AsyncClient) -> None:
        m = await market(client)
        r = await create_product(client, m.batch_id, code=m.code)
        assert_problem(r, 409, "product_code_taken")
        r = await client.post(
            "/v1/products",
            json={"code": "JCR-X", "name": "x", "batch_id": m.batch_id},
            headers=m.buyers[0].headers,
        )
        assert r.status_code == 403, r.text


class TestMatching:
    async def test_buy_crossing_a_resting_sell_fills_at_the_resting_price(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        seller, buyer = m.sellers[0], m.buyers[0]
        sell = await ordered(client, seller, m, "sell", 1000, 10)
        assert sell["status"] == "open"
        assert await credits(client, seller, m.batch_id) == (990, 10)

        buy = await ordered(client, buyer, m, "buy", 1200, 10)
        assert buy["status"] == "filled"
        assert buy["remaining_quantity"] == 0
        assert buy["average_price"] == 1000
        [trade] = buy["trades"]
        assert (trade["price"], trade["quantity"], trade["side"]) == (1000, 10, "buy")
        assert trade["liquidity"] == "taker"
        assert sum(e - s + 1 for s, e in trade["serial_ranges"]) == 10

        # The buyer paid the fill price, not its limit: the improvement was released.
        assert await cash(client, buyer) == (DEPOSIT - 10_000, 0)
        assert await cash(client, seller) == (10_000, 0)
        assert await credits(client, buyer, m.batch_id) == (10, 0)
        assert await credits(client, seller, m.batch_id) == (990, 0)
        r = await client.get(f"/v1/orders/{sell['id']}", headers=seller.headers)
        assert r.json()["status"] == "filled"
        assert r.json()["trades"][0]["liquidity"] == "maker"
        assert await book(client, m) == {"product": m.code, "bids": [], "asks": []}
        await assert_market_clean(session)

    async def test_partial_fills_across_levels(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        s1, s2 = m.sellers
        buyer = m.buyers[0]
        await ordered(client, s1, m, "sell", 1000, 5)
        await ordered(client, s2, m, "sell", 1010, 5)
        await ordered(client, s1, m, "sell", 1020, 5)

        buy = await ordered(client, buyer, m, "buy", 1015, 12)
        assert buy["status"] == "partially_filled"
        assert (buy["filled_quantity"], buy["remaining_quantity"]) == (10, 2)
        assert [(t["price"], t["quantity"]) for t in buy["trades"]] == [(1000, 5), (1010, 5)]
        assert buy["filled_amount"] == 10_050
        assert await cash(client, buyer) == (DEPOSIT - 10_050 - 2 * 1015, 2 * 1015)
        assert await book(client, m) == {
            "product": m.code,
            "bids": [{"price": 1015, "quantity": 2, "orders": 1}],
            "asks": [{"price": 1020, "quantity": 5, "orders": 1}],
        }
        # A sell into the resting bid trades at the bid (the maker's price).
        sell = await ordered(client, s2, m, "sell", 1005, 3)
        assert [(t["price"], t["quantity"]) for t in sell["trades"]] == [(1015, 2)]
        assert (sell["status"], sell["remaining_quantity"]) == ("partially_filled", 1)
        assert await cash(client, buyer) == (DEPOSIT - 10_050 - 2 * 1015, 0)
        assert await book(client, m) == await book_from_database(session, m)
        await assert_market_clean(session)

    async def test_ioc_and_fok(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        m = await market(client)
        seller, buyer = m.sellers[0], m.buyers[0]
        await ordered(client, seller, m, "sell", 1000, 5)

        fok = await ordered(client, buyer, m, "buy", 1000, 8, time_in_force="fok")
        assert (fok["status"], fok["cancel_reason"], fok["trades"]) == ("cancelled", "fok", [])
        assert await cash(client, buyer) == (DEPOSIT, 0)

        ioc = await ordered(client, buyer, m, "buy", 1000, 8, time_in_force="ioc")
        assert (ioc["status"], ioc["cancel_reason"]) == ("cancelled", "ioc")
        assert (ioc["filled_quantity"], ioc["remaining_quantity"]) == (5, 0)
        assert await cash(client, buyer) == (DEPOSIT - 5_000, 0)

        await ordered(client, seller, m, "sell", 1000, 5)
        fok = await ordered(client, buyer, m, "buy", 1000, 5, time_in_force="fok")
        assert fok["status"] == "filled"
        ioc = await ordered(client, buyer, m, "buy", 900, 5, time_in_force="ioc")
        assert (ioc["status"], ioc["filled_quantity"]) == ("cancelled", 0)
        assert await book(client, m) == {"product": m.code, "bids": [], "asks": []}
        await assert_market_clean(session)

    async def test_self_trade_prevention_cancels_the_incoming_remainder(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        s1, s2 = m.sellers
        await deposit(client, s1, DEPOSIT)
        await ordered(client, s2, m, "sell", 1000, 5)
        own = await ordered(client, s1, m, "sell", 1010, 5)

        buy = await ordered(client, s1, m, "buy", 1020, 10)
        assert (buy["status"], buy["cancel_reason"]) == ("cancelled", "self_trade")
        assert [(t["price"], t["quantity"]) for t in buy["trades"]] == [(1000, 5)]
        r = await client.get(f"/v1/orders/{own['id']}", headers=s1.headers)
        assert (r.json()["status"], r.json()["remaining_quantity"]) == ("open", 5)
        assert await cash(client, s1) == (DEPOSIT - 5_000, 0)
        await assert_market_clean(session)

    async def test_post_only_that_would_cross_is_rejected(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        await ordered(client, m.sellers[0], m, "sell", 1000, 5)
        r = await order(client, m.buyers[0], m, "buy", 1000, 5, post_only=True)
        assert_problem(r, 409, "order_rejected")
        assert await cash(client, m.buyers[0]) == (DEPOSIT, 0)
        resting = await ordered(client, m.buyers[0], m, "buy", 999, 5, post_only=True)
        assert resting["status"] == "open"
        await assert_market_clean(session)


class TestMarketOrders:
    async def test_market_order_needs_a_reference_price(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        await ordered(client, m.sellers[0], m, "sell", 1000, 5)
        r = await order(client, m.buyers[0], m, "buy", None, 5, type="market")
        assert_problem(r, 409, "no_reference_price")
        assert await count_rows(session, "market_trades") == 0
        await assert_market_clean(session)

    async def test_market_buy_within_the_band_and_limit_band(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000)
        seller, buyer = m.sellers[0], m.buyers[0]
        r = await order(client, seller, m, "sell", 1101, 5)
        body = assert_problem(r, 422, "price_outside_band")
        assert (body["band_low"], body["band_high"]) == (900, 1100)
        await ordered(client, seller, m, "sell", 1050, 5)
        await ordered(client, seller, m, "sell", 1100, 5)

        buy = await ordered(client, buyer, m, "buy", None, 7, type="market")
        assert buy["status"] == "filled"
        assert [(t["price"], t["quantity"]) for t in buy["trades"]] == [(1050, 5), (1100, 2)]
        assert await cash(client, buyer) == (DEPOSIT - 5 * 1050 - 2 * 1100, 0)
        # The band now centres on the last trade (1100): 990–1210.
        sell = await ordered(client, m.sellers[1], m, "sell", None, 10, type="market")
        assert (sell["status"], sell["cancel_reason"], sell["trades"]) == (
            "cancelled",
            "market",
            [],
        )
        await assert_market_clean(session)


class TestHoldsAndErrors:
    async def test_cancel_releases_holds(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        seller, buyer = m.sellers[0], m.buyers[0]
        bid = await ordered(client, buyer, m, "buy", 900, 10)
        ask = await ordered(client, seller, m, "sell", 1100, 10)
        assert await cash(client, buyer) == (DEPOSIT - 9_000, 9_000)
        assert await credits(client, seller, m.batch_id) == (990, 10)

        r = await client.delete(f"/v1/orders/{bid['id']}", headers=m.buyers[1].headers)
        assert_problem(r, 404, "order_not_found")
        r = await client.get(f"/v1/orders/{bid['id']}", headers=m.buyers[1].headers)
        assert_problem(r, 404, "order_not_found")

        r = await client.delete(f"/v1/orders/{bid['id']}", headers=buyer.headers)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["cancel_reason"]) == ("cancelled", "requested")
        assert await cash(client, buyer) == (DEPOSIT, 0)
        r = await client.delete(f"/v1/orders/{bid['id']}", headers=buyer.headers)
        assert_problem(r, 409, "order_not_open")

        # A partly filled sell: cancelling releases only the unfilled credits.
        await ordered(client, buyer, m, "buy", 1100, 4)
        r = await client.delete(f"/v1/orders/{ask['id']}", headers=seller.headers)
        assert r.status_code == 200, r.text
        assert (r.json()["filled_quantity"], r.json()["remaining_quantity"]) == (4, 0)
        assert await credits(client, seller, m.batch_id) == (996, 0)
        assert await book(client, m) == {"product": m.code, "bids": [], "asks": []}
        await assert_market_clean(session)

    async def test_insufficient_cash_writes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, cash=5_000)
        holds = await count_rows(session, "ledger_holds")
        r = await order(client, m.buyers[0], m, "buy", 1000, 6)
        assert_problem(r, 409, "insufficient_balance")
        assert await count_rows(session, "market_orders") == 0
        assert await count_rows(session, "ledger_holds") == holds
        assert await cash(client, m.buyers[0]) == (5_000, 0)
        await assert_market_clean(session)

    async def test_selling_credits_not_held(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        r = await order(client, m.buyers[0], m, "sell", 1000, 1)
        assert_problem(r, 409, "insufficient_credits")
        r = await order(client, m.sellers[0], m, "sell", 1000, 1_001)
        assert_problem(r, 409, "insufficient_credits")
        assert await count_rows(session, "market_orders") == 0
        await assert_market_clean(session)

    @pytest.mark.parametrize(
        "fields",
        [
            {"price": 1000, "quantity": 0},
            {"price": 1000, "quantity": -1},
            {"price": 1000, "quantity": 1.5},
            {"price": 1000, "quantity": "10"},
            {"price": 0, "quantity": 1},
            {"price": -5, "quantity": 1},
            {"price": 10.5, "quantity": 1},
            {"price": "1000", "quantity": 1},
            {"quantity": 1},
            {"price": 1000, "quantity": 1, "type": "market"},
            {"price": 1000, "quantity": 1, "time_in_force": "gtd"},
            {"price": 1000, "quantity": 1, "time_in_force": "ioc", "post_only": True},
        ],
    )
    async def test_invalid_orders_are_422(
        self, client: httpx.AsyncClient, session: AsyncSession, fields: dict[str, Any]
    ) -> None:
        m = await market(client, sellers=1, buyers=1)
        r = await client.post(
            "/v1/orders",
            json={"product": m.code, "side": "buy", **fields},
            headers=m.buyers[0].headers,
        )
        assert_problem(r, 422, "validation_error")
        assert await count_rows(session, "market_orders") == 0

    async def test_unknown_product_and_scopes(self, client: httpx.AsyncClient) -> None:
        m = await market(client, sellers=1, buyers=1)
        r = await client.post(
            "/v1/orders",
            json={"product": "JCR-NONE", "side": "buy", "price": 1, "quantity": 1},
            headers=m.buyers[0].headers,
        )
        assert_problem(r, 404, "product_not_found")
        reader = await create_org(client, scopes=["read"])
        r = await order(client, reader, m, "buy", 1000, 1)
        assert r.status_code == 403, r.text
        r = await client.get("/v1/markets/JCR-NONE/book")
        assert_problem(r, 404, "product_not_found")

    async def test_duplicate_client_order_id(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        b1, b2 = m.buyers
        await ordered(client, b1, m, "buy", 900, 1, client_order_id="abc-1")
        r = await order(client, b1, m, "buy", 900, 1, client_order_id="abc-1")
        assert_problem(r, 409, "duplicate_client_order_id")
        await ordered(client, b2, m, "buy", 900, 1, client_order_id="abc-1")
        assert await cash(client, b1) == (DEPOSIT - 900, 900)
        await assert_market_clean(session)

    async def test_listings_and_the_public_tape(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client)
        seller, buyer = m.sellers[0], m.buyers[0]
        await ordered(client, seller, m, "sell", 1000, 3)
        await ordered(client, buyer, m, "buy", 1000, 2)
        await ordered(client, buyer, m, "buy", 990, 1)

        r = await client.get("/v1/orders", headers=buyer.headers)
        assert [o["price"] for o in r.json()["data"]] == [990, 1000]
        r = await client.get("/v1/trades", headers=seller.headers)
        [fill] = r.json()["data"]
        assert (fill["side"], fill["quantity"], fill["fee"]) == ("sell", 2, 0)
        r = await client.get("/v1/trades", headers=m.buyers[1].headers)
        assert r.json()["data"] == []
        r = await client.get(f"/v1/markets/{m.code}/trades")
        [tape] = r.json()["data"]
        assert set(tape) == {"id", "price", "quantity", "taker_side", "executed_at"}
        assert await book(client, m, depth=1) == {
            "product": m.code,
            "bids": [{"price": 990, "quantity": 1, "orders": 1}],
            "asks": [{"price": 1000, "quantity": 1, "orders": 1}],
        }
        await assert_market_clean(session)


class TestConcurrency:
    async def test_concurrent_crossing_orders(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, sellers=4, buyers=4, credits=100, cash=200_000)
        rng = random.Random(7)
        traders = [(o, "sell") for o in m.sellers] + [(o, "buy") for o in m.buyers]
        owners: list[Org] = []
        jobs = []
        for _ in range(20):
            org, side = rng.choice(traders)
            price = rng.randint(990, 1010)
            quantity = rng.randint(1, 15)
            tif = rng.choice(["gtc", "gtc", "ioc"])
            owners.append(org)
            jobs.append(order(client, org, m, side, price, quantity, time_in_force=tif))
        results = await asyncio.gather(*jobs)
        assert all(r.status_code == 201 for r in results), [r.text for r in results]

        offered = sum(r.json()["quantity"] for r in results if r.json()["side"] == "sell")
        wanted = sum(r.json()["quantity"] for r in results if r.json()["side"] == "buy")
        r = await client.get(f"/v1/markets/{m.code}/trades", params={"limit": 500})
        traded = sum(t["quantity"] for t in r.json()["data"])
        assert 0 < traded <= min(offered, wanted)
        for org, result in zip(owners, results, strict=True):
            r = await client.get(f"/v1/orders/{result.json()['id']}", headers=org.headers)
            final = r.json()
            assert final["filled_quantity"] <= final["quantity"]
            assert sum(t["quantity"] for t in final["trades"]) == final["filled_quantity"]
        for org in m.buyers + m.sellers:
            available, held = await cash(client, org)
            assert available >= 0
            assert held >= 0
        assert await book(client, m) == await book_from_database(session, m)
        await assert_market_clean(session)


async def test_an_order_for_a_product_gone_from_the_database_is_a_404(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Product codes are remembered per process (``product_id_and_mode``); a remembered id no
    longer in the database (only a test's TRUNCATE does that) is a 404, and forgotten."""
    m = await market(client, sellers=1, buyers=1)
    body = {"product": m.code, "side": "buy", "price": 1_000, "quantity": 1}
    assert (
        await client.post("/v1/orders", json=body, headers=m.buyers[0].headers)
    ).status_code == 201
    async with engine.begin() as conn:  # the product row goes, its code stays remembered
        await conn.execute(text("DELETE FROM market_orders"))
        await conn.execute(text("DELETE FROM market_products"))
    r = await client.post("/v1/orders", json=body, headers=m.buyers[0].headers)
    assert_problem(r, 404, "product_not_found")
    r = await client.post("/v1/orders", json=body, headers=m.buyers[0].headers)
    assert_problem(r, 404, "product_not_found")  # read again: still none
