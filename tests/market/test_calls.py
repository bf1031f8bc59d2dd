"""Call auctions (板寄せ, ``app.market.calls``): a call product's orders collect without trading
and uncross at one price at the call; through the API on a real database, plus the pure fill
pairing and the schedule. Every API scenario ends with ``assert_market_clean``."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.time import TOKYO, utc_now
from app.db.session import create_sessionmaker
from app.market import calls
from app.market.calls import CallFill, latest_due_call, next_call_at, pair_fills, run_due_calls
from app.market.models import Product, TradingMode
from app.worker.resources import use_sessionmaker
from tests.factories import ADMIN, deposit
from tests.market.helpers import (
    Market,
    assert_market_clean,
    book,
    cash,
    create_product,
    credits,
    market,
    order,
    ordered,
)
from tests.offsets.helpers import assert_problem, count_rows

DEPOSIT = 1_000_000
CALL = {"trading_mode": "call", "call_times": ["15:00", "11:30"], "reference_price": 1000}

Json = dict[str, Any]


async def call_market(client: httpx.AsyncClient, **fields: Any) -> Market:
    return await market(client, **{**CALL, **fields})


async def run_call(client: httpx.AsyncClient, m: Market) -> Json:
    r = await client.post(f"/v1/markets/{m.code}/call", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def status_of(client: httpx.AsyncClient, m: Market, o: Json, owner: Any) -> Json:
    r = await client.get(f"/v1/orders/{o['id']}", headers=owner.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- the pure parts ------------------------------------------------------------------------


def _fills(draw_side: list[tuple[int, int]], prefix: str) -> list[CallFill]:
    return [CallFill(f"{prefix}{i}", owner, q) for i, (owner, q) in enumerate(draw_side)]


@st.composite
def two_sides(draw: st.DrawFn) -> tuple[list[CallFill], list[CallFill]]:
    """Buy and sell fills of equal totals, owners from a small set (self-crosses likely)."""
    side = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 20)), min_size=1, max_size=8)
    buys, sells = draw(side), draw(side)
    total = min(sum(q for _, q in buys), sum(q for _, q in sells))

    def cut(orders: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out, left = [], total
        for owner, q in orders:
            if left:
                out.append((owner, min(q, left)))
                left -= out[-1][1]
        return out

    return _fills(cut(buys), "b"), _fills(cut(sells), "s")


class TestPairFills:
    @settings(max_examples=300, deadline=None)
    @given(two_sides())
    def test_pairs_never_self_trade_nor_overfill(
        self, sides: tuple[list[CallFill], list[CallFill]]
    ) -> None:
        buys, sells = sides
        owner = {f.order_id: f.owner for f in (*buys, *sells)}
        pairs = pair_fills(buys, sells)
        paired: dict[Any, int] = defaultdict(int)
        for p in pairs:
            assert p.quantity > 0
            assert owner[p.buy_id] != owner[p.sell_id]
            paired[p.buy_id] += p.quantity
            paired[p.sell_id] += p.quantity
        for f in (*buys, *sells):
            assert paired[f.order_id] <= f.quantity
        assert sum(paired[b.order_id] for b in buys) == sum(paired[s.order_id] for s in sells)
        # What is left unpaired is one organisation's own buys and sells (nothing else could
        # have traded): unpaired buy and sell quantities, if any, share a single owner.
        left = {owner[f.order_id] for f in (*buys, *sells) if paired[f.order_id] < f.quantity}
        assert len(left) <= 1

    def test_swaps_a_self_cross_into_another_pair(self) -> None:
        # A buys 5 and sells 5; B buys 5 from C. Greedy leaves A's buy with only A's sell; the
        # swap makes it B←A (sell) and A←C.
        buys = [CallFill("bA", "A", 5), CallFill("bB", "B", 5)]
        sells = [CallFill("sC", "C", 5), CallFill("sA", "A", 5)]
        pairs = {(p.buy_id, p.sell_id): p.quantity for p in pair_fills(buys, sells)}
        assert pairs == {("bA", "sC"): 5, ("bB", "sA"): 5}

    def test_an_unavoidable_self_cross_does_not_trade(self) -> None:
        pairs = pair_fills([CallFill("b", "A", 5)], [CallFill("s", "A", 5)])
        assert pairs == []


def _product(times: list[str], created_at: datetime) -> Product:
    return Product(trading_mode=TradingMode.call, call_times=times, created_at=created_at)


class TestSchedule:
    def test_latest_and_next_call_in_tokyo_time(self) -> None:
        p = _product(["11:30", "15:00"], datetime(2026, 1, 1, tzinfo=UTC))
        # 2026-11-30 04:00 UTC is 13:00 in Tokyo: the 11:30 call (02:30 UTC) has come.
        now = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
        assert latest_due_call(p, now) == datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
        assert next_call_at(p, now) == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
        # 08:00 Tokyo: yesterday's 15:00 is the latest, today's 11:30 the next.
        early = datetime(2026, 11, 29, 23, 0, tzinfo=UTC)
        assert latest_due_call(p, early) == datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
        assert next_call_at(p, early) == datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
        # Exactly at a call time, that call is due.
        at = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
        assert latest_due_call(p, at) == at

    def test_no_call_before_the_product_existed(self) -> None:
        created = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # 12:00 Tokyo
        p = _product(["11:30"], created)
        assert latest_due_call(p, created + timedelta(hours=1)) is None
        assert next_call_at(p, created) == datetime(2026, 12, 1, 2, 30, tzinfo=UTC)

    def test_a_continuous_product_has_no_calls(self) -> None:
        p = Product(trading_mode=TradingMode.continuous, call_times=[], created_at=utc_now())
        assert latest_due_call(p, utc_now()) is None
        assert next_call_at(p, utc_now()) is None


# --- products ------------------------------------------------------------------------------


class TestCallProducts:
    async def test_created_with_sorted_call_times_and_the_next_call(
        self, client: httpx.AsyncClient
    ) -> None:
        m = await call_market(client, call_times=["15:00", "11:30", "15:00"])
        assert m.product["trading_mode"] == "call"
        assert m.product["call_times"] == ["11:30", "15:00"]
        next_at = datetime.fromisoformat(m.product["next_call_at"])
        assert utc_now() < next_at <= utc_now() + timedelta(days=1)
        r = await client.get("/v1/products", headers=m.buyers[0].headers)
        [listed] = r.json()
        assert (listed["trading_mode"], listed["call_times"]) == ("call", ["11:30", "15:00"])

    async def test_continuous_by_default(self, client: httpx.AsyncClient) -> None:
        m = await market(client)
        assert (m.product["trading_mode"], m.product["call_times"]) == ("continuous", [])
        assert m.product["next_call_at"] is None

    async def test_bad_schedules_are_422(self, client: httpx.AsyncClient) -> None:
        m = await market(client)
        for fields in (
            {"trading_mode": "call"},
            {"trading_mode": "call", "call_times": []},
            {"call_times": ["11:30"]},
            {"trading_mode": "call", "call_times": ["24:00"]},
            {"trading_mode": "call", "call_times": ["9:30"]},
            {"trading_mode": "call", "call_times": [1130]},
            {"trading_mode": "auction", "call_times": ["11:30"]},
            {"trading_mode": "call", "call_times": [f"{h:02}:00" for h in range(24)] + ["00:30"]},
        ):
            r = await create_product(client, m.batch_id, **fields)
            assert r.status_code == 422, (fields, r.text)


# --- collecting and uncrossing -------------------------------------------------------------


class TestCollectAndUncross:
    async def test_orders_collect_then_the_call_fills_at_one_price(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await call_market(client)
        (s0, s1), (b0, b1) = m.sellers, m.buyers
        sell0 = await ordered(client, s0, m, "sell", 1000, 8)
        sell1 = await ordered(client, s1, m, "sell", 1060, 10)
        buy0 = await ordered(client, b0, m, "buy", 1100, 10)
        buy1 = await ordered(client, b1, m, "buy", 1050, 5)
        # Crossing orders rest: nothing trades before the call.
        for o in (sell0, sell1, buy0, buy1):
            assert (o["status"], o["trades"]) == ("open", [])
        assert await count_rows(session, "market_trades") == 0
        current = await book(client, m)
        assert current["bids"] == [
            {"price": 1100, "quantity": 10, "orders": 1},
            {"price": 1050, "quantity": 5, "orders": 1},
        ]
        assert [lv["price"] for lv in current["asks"]] == [1000, 1060]
        assert await cash(client, b0) == (DEPOSIT - 11_000, 11_000)

        # Volume 10 at 1060 and at 1100 (imbalance 8 at both): closest to the reference 1000.
        r = await client.get(f"/v1/markets/{m.code}/indicative")
        assert r.status_code == 200, r.text
        ind = r.json()
        assert (ind["price"], ind["volume"], ind["demand"], ind["supply"]) == (1060, 10, 10, 18)
        assert (ind["imbalance"], ind["reference_price"]) == (-8, 1000)
        assert ind["next_call_at"] is not None

        result = await run_call(client, m)
        assert (result["price"], result["volume"], result["imbalance"]) == (1060, 10, -8)
        assert (result["trades"], result["trigger"]) == (2, "manual")

        # buy0 filled at 1060 (its improvement of 40 × 10 released), from sell0 then sell1.
        got = await status_of(client, m, buy0, b0)
        assert (got["status"], got["filled_quantity"], got["filled_amount"]) == (
            "filled",
            10,
            10_600,
        )
        assert sorted((t["price"], t["quantity"]) for t in got["trades"]) == [
            (1060, 2),
            (1060, 8),
        ]
        assert await cash(client, b0) == (DEPOSIT - 10_600, 0)
        assert await credits(client, b0, m.batch_id) == (10, 0)
        assert (await status_of(client, m, sell0, s0))["status"] == "filled"
        partly = await status_of(client, m, sell1, s1)
        assert (partly["status"], partly["remaining_quantity"]) == ("partially_filled", 8)
        assert (await status_of(client, m, buy1, b1))["status"] == "open"
        assert await cash(client, s0) == (8_480, 0)
        assert await credits(client, s1, m.batch_id) == (990, 8)
        assert await cash(client, b1) == (DEPOSIT - 5_250, 5_250)
        # The book no longer crosses; the product's last trade price is the call's.
        after = await book(client, m)
        assert [(lv["price"], lv["quantity"]) for lv in after["bids"]] == [(1050, 5)]
        assert [(lv["price"], lv["quantity"]) for lv in after["asks"]] == [(1060, 8)]
        [product] = (await client.get("/v1/products", headers=b0.headers)).json()
        assert product["last_trade_price"] == 1060
        r = await client.get(f"/v1/markets/{m.code}/indicative")
        assert (r.json()["price"], r.json()["volume"]) == (None, 0)
        await assert_market_clean(session)

    async def test_fees_the_later_order_of_a_pair_is_the_taker(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await call_market(client, maker_fee_bps=10, taker_fee_bps=20)
        seller, buyer = m.sellers[0], m.buyers[0]
        await ordered(client, seller, m, "sell", 1000, 10)
        buy = await ordered(client, buyer, m, "buy", 1000, 10)
        assert await cash(client, buyer) == (DEPOSIT - 10_020, 10_020)  # fee headroom held
        result = await run_call(client, m)
        assert (result["price"], result["volume"]) == (1000, 10)
        [trade] = (await status_of(client, m, buy, buyer))["trades"]
        assert (trade["liquidity"], trade["fee"]) == ("taker", 20)
        assert await cash(client, buyer) == (DEPOSIT - 10_020, 0)
        assert await cash(client, seller) == (9_990, 0)
        await assert_market_clean(session)

    async def test_call_only_order_kinds(self, client: httpx.AsyncClient) -> None:
        m = await call_market(client)
        buyer = m.buyers[0]
        for extra, field in (
            ({"type": "market"}, "type"),
            ({"time_in_force": "ioc"}, "time_in_force"),
            ({"time_in_force": "fok"}, "time_in_force"),
            ({"post_only": True}, "post_only"),
        ):
            price = None if extra.get("type") == "market" else 1000
            r = await order(client, buyer, m, "buy", price, 1, **extra)
            body = assert_problem(r, 422, "order_not_for_call")
            assert body["errors"][0]["loc"] == ["body", field]
        assert await cash(client, buyer) == (DEPOSIT, 0)
        # Band checks apply as in continuous trading (±10% of the reference).
        assert_problem(await order(client, buyer, m, "buy", 1101, 1), 422, "price_outside_band")
        gtd = (utc_now() + timedelta(hours=1)).isoformat()
        o = await ordered(client, buyer, m, "buy", 1000, 1, time_in_force="gtd", expires_at=gtd)
        assert o["status"] == "open"

    async def test_nothing_crosses_nothing_trades(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await call_market(client)
        await ordered(client, m.sellers[0], m, "sell", 1050, 5)
        await ordered(client, m.buyers[0], m, "buy", 950, 5)
        result = await run_call(client, m)
        assert (result["price"], result["volume"], result["trades"]) == (None, 0, 0)
        assert await count_rows(session, "market_call_runs") == 1
        await assert_market_clean(session)

    async def test_an_organisation_never_trades_with_itself(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await call_market(client)
        trader = m.sellers[0]
        await deposit(client, trader, 100_000)
        await ordered(client, trader, m, "buy", 1050, 5)
        await ordered(client, trader, m, "sell", 1000, 5)
        result = await run_call(client, m)
        assert (result["volume"], result["trades"]) == (0, 0)
        assert len((await book(client, m))["bids"]) == 1
        await assert_market_clean(session)

    async def test_a_due_gtd_order_expires_instead_of_trading(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await call_market(client)
        later = (utc_now() + timedelta(hours=1)).isoformat()
        sell = await ordered(
            client, m.sellers[0], m, "sell", 1000, 5, time_in_force="gtd", expires_at=later
        )
        await ordered(client, m.buyers[0], m, "buy", 1000, 5)
        await session.execute(
            text(
                "UPDATE market_orders SET expires_at = now() - interval '1 second'"
                " WHERE time_in_force = 'gtd'"
            )
        )
        await session.commit()
        assert (await run_call(client, m))["volume"] == 0
        assert (await status_of(client, m, sell, m.sellers[0]))["status"] == "expired"
        await assert_market_clean(session)

    async def test_rights_and_continuous_products(self, client: httpx.AsyncClient) -> None:
        m = await market(client, reference_price=1000)
        r = await client.post(f"/v1/markets/{m.code}/call", headers=ADMIN)
        assert_problem(r, 409, "not_a_call_product")
        c = await call_market(client)
        r = await client.post(f"/v1/markets/{c.code}/call", headers=c.buyers[0].headers)
        assert r.status_code == 403, r.text
        r = await client.post("/v1/markets/NOPE-1/call", headers=ADMIN)
        assert_problem(r, 404, "product_not_found")
        assert_problem(await client.get("/v1/markets/NOPE-1/indicative"), 404, "product_not_found")
        # A continuous book never crosses: its indicative volume is 0.
        r = await client.get(f"/v1/markets/{m.code}/indicative")
        assert (r.json()["volume"], r.json()["next_call_at"]) == (0, None)


# --- the schedule --------------------------------------------------------------------------


async def _crossed_call_product(client: httpx.AsyncClient) -> tuple[Market, datetime]:
    """A call product with 10 crossing at 1000, and a time just after its next call."""
    m = await call_market(client)
    await ordered(client, m.sellers[0], m, "sell", 1000, 10)
    await ordered(client, m.buyers[0], m, "buy", 1000, 10)
    return m, datetime.fromisoformat(m.product["next_call_at"]) + timedelta(seconds=30)


class TestScheduledCalls:
    async def test_a_due_call_runs_once_and_a_restart_does_not_rerun_it(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        m, after_call = await _crossed_call_product(client)
        with use_sessionmaker(create_sessionmaker(engine)):
            assert await run_due_calls(after_call - timedelta(minutes=1)) == []  # not yet due
            [run] = await run_due_calls(after_call)
            assert (run.price, run.volume, run.trades, run.trigger) == (1000, 10, 1, "scheduled")
            assert run.scheduled_at == after_call - timedelta(seconds=30)
            # New crossing orders, then the worker restarts: the recorded call does not rerun.
            await ordered(client, m.sellers[1], m, "sell", 1000, 3)
            await ordered(client, m.buyers[1], m, "buy", 1000, 3)
            assert await run_due_calls(after_call + timedelta(seconds=30)) == []
        assert await count_rows(session, "market_trades") == 1
        assert await count_rows(session, "market_call_runs") == 1
        await assert_market_clean(session)

    async def test_concurrent_runs_run_the_call_once(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        _, after_call = await _crossed_call_product(client)
        with use_sessionmaker(create_sessionmaker(engine)):
            results = await asyncio.gather(*(run_due_calls(after_call) for _ in range(4)))
        assert sorted(len(r) for r in results) == [0, 0, 0, 1]
        assert await count_rows(session, "market_trades") == 1
        assert await count_rows(session, "market_call_runs") == 1
        await assert_market_clean(session)

    async def test_the_run_is_unique_per_product_and_time(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m, after_call = await _crossed_call_product(client)
        row = {
            "p": uuid.UUID(m.product["id"]),
            "at": after_call,
        }
        insert = text(
            "INSERT INTO market_call_runs (id, product_id, scheduled_at, trigger, price, volume,"
            " surplus, trades, ran_at) VALUES (gen_random_uuid(), :p, :at, 'scheduled', NULL,"
            " 0, 0, 0, now())"
        )
        await session.execute(insert, row)
        await session.commit()
        with pytest.raises(IntegrityError, match="market_call_runs_product_id_scheduled_at_key"):
            await session.execute(insert, row)
        await session.rollback()


# --- an opening call before continuous trading ---------------------------------------------


class TestOpeningCall:
    async def test_orders_collect_until_the_opening_call_then_match_on_arrival(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(
            client,
            reference_price=1000,
            trading_mode="call_then_continuous",
            call_times=["09:00"],
        )
        (s0, trader), (b0, b1) = m.sellers, m.buyers
        await deposit(client, trader, 100_000)
        # Collecting: the trader's own orders cross and rest; "immediate" orders are refused.
        mine_buy = await ordered(client, trader, m, "buy", 1010, 3)
        mine_sell = await ordered(client, trader, m, "sell", 990, 3)
        await ordered(client, b0, m, "buy", 950, 4)
        await ordered(client, s0, m, "sell", 1050, 10)
        r = await order(client, b1, m, "buy", None, 1, type="market")
        assert_problem(r, 422, "order_not_for_call")

        # Today's opening call (Tokyo date), as the task would run it.
        today = utc_now().astimezone(TOKYO).date()
        opening = datetime.combine(today, time(9, 0), TOKYO).astimezone(UTC)
        run = await calls.run_call(session, uuid.UUID(m.product["id"]), opening, "scheduled")
        await session.commit()
        assert run is not None
        # Only the trader's own orders crossed: nothing traded, and they are cancelled so that
        # continuous matching takes an uncrossed book.
        assert (run.volume, run.trades) == (0, 0)
        for o in (mine_buy, mine_sell):
            got = await status_of(client, m, o, trader)
            assert (got["status"], got["cancel_reason"]) == ("cancelled", "self_trade")
        assert await cash(client, trader) == (100_000, 0)
        assert await credits(client, trader, m.batch_id) == (1_000, 0)

        # Continuous now: a crossing order trades on arrival, market orders are taken.
        buy = await ordered(client, b1, m, "buy", 1050, 2)
        assert (buy["status"], buy["trades"][0]["price"]) == ("filled", 1050)
        market_buy = await ordered(client, b1, m, "buy", None, 1, type="market")
        assert market_buy["status"] == "filled"
        current = await book(client, m)
        assert [(lv["price"], lv["quantity"]) for lv in current["bids"]] == [(950, 4)]
        assert [(lv["price"], lv["quantity"]) for lv in current["asks"]] == [(1050, 7)]
        await assert_market_clean(session)

    async def test_one_opening_call_time(self, client: httpx.AsyncClient) -> None:
        m = await market(client)
        for times in ([], ["09:00", "12:30"]):
            r = await create_product(
                client, m.batch_id, trading_mode="call_then_continuous", call_times=times
            )
            assert r.status_code == 422, r.text
