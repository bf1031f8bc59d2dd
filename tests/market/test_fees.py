"""Maker and taker fees: the buyer pays its fee on top (its hold covers the largest fee), the
seller's is deducted from its proceeds, both go to the platform's fee account in the fill's
own ledger entries; fees are rounded down to the yen. Real database; every scenario ends with
``assert_market_clean`` (which also checks that the fee account holds exactly the trades' fees).
"""

from __future__ import annotations

import httpx
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.market.models import Product
from app.market.service import buy_hold, fee
from tests.factories import create_org
from tests.market.helpers import assert_market_clean, cash, create_product, market, ordered
from tests.offsets.helpers import assert_problem, new_batch

DEPOSIT = 1_000_000


async def _fee_account(session: AsyncSession) -> int:
    """What the platform's fee accounts hold (one per product that charged a fee)."""
    balance = await session.scalar(
        text("SELECT sum(balance) FROM ledger_accounts WHERE kind = 'fees' AND asset = 'JPY'")
    )
    await session.rollback()
    return int(balance or 0)


class TestFees:
    async def test_taker_buy_pays_on_top_maker_sell_out_of_proceeds(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, maker_fee_bps=10, taker_fee_bps=30)
        assert (m.product["maker_fee_bps"], m.product["taker_fee_bps"]) == (10, 30)
        seller, buyer = m.sellers[0], m.buyers[0]
        await ordered(client, seller, m, "sell", 1003, 100)
        buy = await ordered(client, buyer, m, "buy", 1010, 100)
        [trade] = buy["trades"]
        # 100,300 × 30 bps = 300.9 → 300 (buyer, taker); × 10 bps = 100.3 → 100 (seller, maker).
        assert (trade["amount"], trade["fee"], trade["liquidity"]) == (100_300, 300, "taker")
        assert await cash(client, buyer) == (DEPOSIT - 100_300 - 300, 0)
        assert await cash(client, seller) == (100_300 - 100, 0)
        assert await _fee_account(session) == 400
        r = await client.get("/v1/trades", headers=seller.headers)
        [mine] = r.json()["data"]
        assert (mine["fee"], mine["side"], mine["liquidity"]) == (100, "sell", "maker")

        # One balanced entry each: the trade (buyer's hold → seller) and the two fees.
        rows = (
            await session.execute(
                text(
                    "SELECT e.kind, sum(p.amount) AS net, count(*) AS legs FROM ledger_entries e"
                    " JOIN ledger_postings p ON p.entry_id = e.id"
                    " WHERE e.reference = :r GROUP BY e.id, e.kind ORDER BY e.kind"
                ),
                {"r": f"trade:{trade['id']}"},
            )
        ).all()
        await session.rollback()
        assert sorted((kind, net) for kind, net, _ in rows) == sorted(
            [("trade", 0), ("trade_fee", 0), ("trade_fee", 0), ("settle", 0), ("release", 0)]
        )
        await assert_market_clean(session)

    async def test_resting_buy_holds_the_largest_fee_and_pays_the_maker_fee(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, maker_fee_bps=10, taker_fee_bps=30)
        seller, buyer = m.sellers[0], m.buyers[0]
        buy = await ordered(client, buyer, m, "buy", 1000, 10)
        # 10,000 plus the larger (taker) fee: 30.
        assert await cash(client, buyer) == (DEPOSIT - 10_030, 10_030)

        sell = await ordered(client, seller, m, "sell", 999, 4)
        [trade] = sell["trades"]
        assert (trade["price"], trade["fee"], trade["liquidity"]) == (1000, 12, "taker")
        # The buyer, maker, paid 4,000 + 4; it now holds 6,000 + 18 for its 6 open.
        assert await cash(client, buyer) == (DEPOSIT - 4_004 - 6_018, 6_018)
        assert await cash(client, seller) == (4_000 - 12, 0)
        r = await client.get(f"/v1/orders/{buy['id']}", headers=buyer.headers)
        [mine] = r.json()["trades"]
        assert (mine["fee"], mine["liquidity"]) == (4, "maker")

        r = await client.delete(f"/v1/orders/{buy['id']}", headers=buyer.headers)
        assert r.status_code == 200, r.text
        assert await cash(client, buyer) == (DEPOSIT - 4_004, 0)
        assert await _fee_account(session) == 16
        await assert_market_clean(session)

    async def test_the_fee_must_be_covered_and_tiny_fills_round_to_zero(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, cash=10_000, maker_fee_bps=0, taker_fee_bps=100)
        seller, buyer = m.sellers[0], m.buyers[0]
        # 10 × 1000 = 10,000 plus 100 of fee: more than the buyer has.
        r = await client.post(
            "/v1/orders",
            json={"product": m.code, "side": "buy", "price": 1000, "quantity": 10},
            headers=buyer.headers,
        )
        assert_problem(r, 409, "insufficient_balance")
        assert await cash(client, buyer) == (10_000, 0)

        # 1 × 99 at 100 bps = 0.99 → 0: a fill too small for a yen of fee pays none.
        await ordered(client, seller, m, "sell", 99, 1)
        buy = await ordered(client, buyer, m, "buy", 99, 1)
        assert buy["trades"][0]["fee"] == 0
        assert await cash(client, buyer) == (10_000 - 99, 0)
        await assert_market_clean(session)

    async def test_market_buy_with_fees(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        m = await market(client, reference_price=1000, maker_fee_bps=20, taker_fee_bps=50)
        seller, buyer = m.sellers[0], m.buyers[0]
        await ordered(client, seller, m, "sell", 990, 3)
        await ordered(client, m.sellers[1], m, "sell", 1000, 5)
        buy = await ordered(client, buyer, m, "buy", None, 6, type="market")
        assert buy["status"] == "filled"
        fees = [(t["price"], t["quantity"], t["fee"]) for t in buy["trades"]]
        assert fees == [(990, 3, 14), (1000, 3, 15)]  # 2970 × 0.5% = 14.85 → 14; 3000 → 15
        assert await cash(client, buyer) == (DEPOSIT - 2_970 - 3_000 - 29, 0)
        assert await cash(client, seller) == (2_970 - 5, 0)  # 2970 × 0.2% = 5.94 → 5
        assert await _fee_account(session) == 29 + 5 + 6
        await assert_market_clean(session)

    async def test_fee_bounds(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        issued = await new_batch(client, org, 10)
        for bad in (
            {"maker_fee_bps": -1},
            {"taker_fee_bps": 1001},
            {"maker_fee_bps": "10"},
            {"taker_fee_bps": 1.5},
            {"maker_fee_bps": None},
        ):
            r = await create_product(client, issued.batch_id, **bad)
            assert r.status_code == 422, (bad, r.text)
        r = await create_product(client, issued.batch_id, maker_fee_bps=1000, taker_fee_bps=0)
        assert r.status_code == 201, r.text


def _product(maker: int, taker: int) -> Product:
    return Product(maker_fee_bps=maker, taker_fee_bps=taker)


@given(
    limit=st.integers(min_value=1, max_value=10**6),
    fills=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=1000),  # quantity
            st.integers(min_value=0, max_value=10**6),  # price below the limit by this much
            st.booleans(),  # the buyer is the taker
        ),
        min_size=1,
        max_size=8,
    ),
    rest=st.integers(min_value=0, max_value=1000),
    maker=st.integers(min_value=0, max_value=1000),
    taker=st.integers(min_value=0, max_value=1000),
)
def test_a_buy_hold_always_covers_its_fills(
    limit: int, fills: list[tuple[int, int, bool]], rest: int, maker: int, taker: int
) -> None:
    """Whatever its fills (prices at or under the limit, as maker or taker), what a buy order
    pays and what ``_settle`` releases after each fill never exceed its hold, and the hold
    left always equals ``buy_hold`` of its open quantity."""
    product = _product(maker, taker)
    open_quantity = sum(q for q, _, _ in fills) + rest
    remaining = buy_hold(product, limit, open_quantity)
    for quantity, below, as_taker in fills:
        price = max(1, limit - below)
        amount = price * quantity
        paid = amount + fee(amount, taker if as_taker else maker)
        release = (
            buy_hold(product, limit, open_quantity)
            - paid
            - buy_hold(product, limit, open_quantity - quantity)
        )
        assert release >= 0
        remaining -= paid + release
        open_quantity -= quantity
        assert remaining == buy_hold(product, limit, open_quantity) >= 0


@given(amount=st.integers(min_value=0, max_value=10**15), bps=st.integers(0, 1000))
def test_fee_rounds_down(amount: int, bps: int) -> None:
    charged = fee(amount, bps)
    assert 0 <= charged * 10_000 <= amount * bps < (charged + 1) * 10_000
