"""Settlement lock order, with real concurrent transactions and commits.

Before ``lock_settlement``, an order locked its own cash accounts when holding and its
counterparty's when settling: two organisations each buying on one product and selling on
another at the same moment took the same two accounts in opposite orders and one of them was
refused (PostgreSQL deadlock, 409 ``transaction_conflict``). Now every batch and then every
account a placement touches is locked up front, by id: they queue instead.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.market import service as market_service
from app.market.matching import Side
from app.market.schemas import OrderCreate
from tests.factories import ADMIN, Org, create_org, deposit
from tests.market.helpers import Market, assert_market_clean, create_product, credits, ordered
from tests.offsets.helpers import create_project, issue, new_batch, registry_org

ROUNDS = 8


async def _two_products(client: httpx.AsyncClient, **fees: int) -> tuple[Org, Org, Market, Market]:
    """X holds the credits of P2's batch, Y those of P1's; both hold cash."""
    x, y = await create_org(client), await create_org(client)
    markets = []
    for holder in (y, x):
        issued = await new_batch(client, holder, 1_000)
        r = await create_product(client, issued.batch_id, **fees)
        assert r.status_code == 201, r.text
        markets.append(Market(dict(r.json()), [holder], []))
    for org in (x, y):
        await deposit(client, org, 10_000_000)
    return x, y, markets[0], markets[1]


@pytest.mark.parametrize("fees", [{}, {"maker_fee_bps": 5, "taker_fee_bps": 20}])
async def test_crossed_buyers_and_sellers_on_two_products_do_not_deadlock(
    client: httpx.AsyncClient, session: AsyncSession, fees: dict[str, int]
) -> None:
    x, y, p1, p2 = await _two_products(client, **fees)
    for _ in range(ROUNDS):
        await ordered(client, y, p1, "sell", 1000, 2)
        await ordered(client, x, p2, "sell", 1000, 2)
        # X buys Y's credits on P1 while Y buys X's on P2: the same two organisations' cash
        # accounts, taken from opposite ends.
        results = await asyncio.gather(
            client.post(
                "/v1/orders",
                json={"product": p1.code, "side": "buy", "price": 1000, "quantity": 2},
                headers=x.headers,
            ),
            client.post(
                "/v1/orders",
                json={"product": p2.code, "side": "buy", "price": 1000, "quantity": 2},
                headers=y.headers,
            ),
        )
        assert [r.status_code for r in results] == [201, 201], [r.text for r in results]
        assert [r.json()["status"] for r in results] == ["filled", "filled"]
    assert await credits(client, x, p1.batch_id) == (2 * ROUNDS, 0)
    assert await credits(client, y, p2.batch_id) == (2 * ROUNDS, 0)
    await assert_market_clean(session)


async def test_category_sells_and_cancels_across_shared_batches(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """Two sellers hold the same two batches, whose vintage order is the reverse of their id
    order; one places category sell orders (holding oldest vintage first) while the other
    cancels its own and a third party buys: every batch is locked by id, so all succeed."""
    registry = await registry_org(client)
    s1, s2, buyer = await create_org(client), await create_org(client), await create_org(client)
    await deposit(client, buyer, 10_000_000)
    project = await create_project(client, registry, s1)
    newer = await issue(client, registry, project, s1, 100, period_end="2025-03-31")
    older = await issue(
        client, registry, project, s1, 100, period_start="2021-04-01", period_end="2022-03-31"
    )
    assert newer["id"] < older["id"]  # the older vintage was issued later: a larger id
    for batch in (newer, older):
        r = await client.post(
            "/v1/credit-transfers",
            json={"to_organization_id": s2.id, "batch_id": batch["id"], "quantity": 50},
            headers=s1.headers,
        )
        assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/products",
        json={"code": "JCR-FOREST-ANY", "name": "Forest, any vintage", "category": "forest"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    m = Market(dict(r.json()), [s1, s2], [buyer])

    for _ in range(4):
        # Each seller's 60 spans both batches (50 of the older vintage, then 10 of the newer).
        resting = await ordered(client, s2, m, "sell", 1200, 60)
        results = await asyncio.gather(
            client.post(
                "/v1/orders",
                json={"product": m.code, "side": "sell", "price": 1100, "quantity": 60},
                headers=s1.headers,
            ),
            client.delete(f"/v1/orders/{resting['id']}", headers=s2.headers),
        )
        assert [r.status_code for r in results] == [201, 200], [r.text for r in results]
        buy = await ordered(client, buyer, m, "buy", 1100, 60)
        assert [(t["batch_id"], t["quantity"]) for t in buy["trades"]] == [
            (older["id"], 50),
            (newer["id"], 10),
        ]
        # Give the credits back to s1 for the next round.
        for batch, quantity in ((older, 50), (newer, 10)):
            r = await client.post(
                "/v1/credit-transfers",
                json={"to_organization_id": s1.id, "batch_id": batch["id"], "quantity": quantity},
                headers=buyer.headers,
            )
            assert r.status_code == 201, r.text
    await assert_market_clean(session)


async def test_fills_on_two_products_do_not_queue_on_one_fee_account(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """Each product's fees go to a fee account of its own (migration 0031): while a fill on
    one product is settled and not yet committed (its fee account locked until then), a fill
    on another product, between other organisations, settles. With one fee account for all,
    the second waited for the first's commit."""
    a, b, c, d = [await create_org(client) for _ in range(4)]
    products = []
    for seller, buyer in ((a, b), (c, d)):
        issued = await new_batch(client, seller, 100)
        r = await create_product(client, issued.batch_id, maker_fee_bps=5, taker_fee_bps=20)
        assert r.status_code == 201, r.text
        products.append(Market(dict(r.json()), [seller], [buyer]))
        await deposit(client, buyer, 10_000_000)
        await ordered(client, seller, products[-1], "sell", 1000, 4)
    p1, p2 = products
    # B's buy on P1 fills against A's sell in this session's transaction, left open.
    [placed] = await market_service.place_orders(
        session,
        uuid.UUID(p1.product["id"]),
        [(uuid.UUID(b.id), OrderCreate(product=p1.code, side=Side.BUY, price=1000, quantity=2))],
    )
    assert placed.trades
    assert placed.trades[0].buyer_fee > 0
    buy = asyncio.create_task(
        client.post(
            "/v1/orders",
            json={"product": p2.code, "side": "buy", "price": 1000, "quantity": 2},
            headers=d.headers,
        )
    )
    done, _ = await asyncio.wait({buy}, timeout=10)
    await session.rollback()
    r = await buy
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "filled"
    assert done, "P2's fill waited for P1's uncommitted settlement"
    await assert_market_clean(session)
