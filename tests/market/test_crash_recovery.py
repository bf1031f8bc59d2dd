"""A server killed (SIGKILL) in the middle of a load, and a new one started on the database.

Every order is one transaction and its 201 is sent after the commit, so a crash may lose only
what was never acknowledged: each acknowledged order must be stored as acknowledged (with at
least the fills its answer listed), nothing may be stored that no client sent, and an order
in flight at the kill is either wholly there (with its holds, trades and serials) or not at
all. The book lives only in the rows, so the new server, started on the same database, must
serve the same book and match new orders against the resting ones in their time priority.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.factories import create_org, deposit
from tests.market.helpers import book_from_database, market
from tests.market.load import (
    Holdings,
    Load,
    Servers,
    assert_after_load,
    running_servers,
    stored_orders,
    stored_trades,
    trader,
    traders,
)
from tests.offsets.helpers import transfer

pytestmark = pytest.mark.concurrency

MID = 1_000
CLIENTS = 12
ORDERS_PER_CLIENT = 15
KILL_AFTER = 40  # acknowledged orders
CASH = 5_000_000
LATE_CREDITS = 500


@pytest.fixture
def servers(database_url: str, engine: AsyncEngine) -> Iterator[Servers]:
    """Server processes on the test database, stopped before its tables are emptied."""
    with running_servers(database_url) as started:
        yield started


async def _connections_gone(session: AsyncSession) -> None:
    """Wait until PostgreSQL has ended the killed server's sessions (rolling back whatever
    they had not committed), so the rows read next are final."""
    for _ in range(200):
        left = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'tanso' AND datname = current_database()"
            )
        )
        await session.rollback()
        if left == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the killed server's sessions are still there")


async def test_kill_during_load_then_restart(
    client: httpx.AsyncClient, session: AsyncSession, servers: Servers
) -> None:
    (server,) = servers.launch(1)
    m = await market(client, sellers=2, buyers=2, credits=4_000, cash=CASH, reference_price=MID)
    # Two organisations that trade only after the restart (so they cannot self-trade).
    late_buyer, late_seller = await create_org(client), await create_org(client)
    await deposit(client, late_buyer, CASH)
    r = await transfer(client, m.sellers[0], late_seller, m.batch_id, LATE_CREDITS)
    assert r.status_code == 201, r.text
    holdings = await traders(client, m, cash_each=CASH)
    await server.wait_ready()

    load = Load(milestone=KILL_AFTER)
    clients = asyncio.gather(
        *(
            trader(
                load,
                server.base_url,
                holdings[i % len(holdings)].org,
                m,
                name=f"c{i}",
                orders=ORDERS_PER_CLIENT,
                mid=MID,
                seed=2_000 + i,
            )
            for i in range(CLIENTS)
        )
    )
    waiting: list[asyncio.Future[Any]] = [asyncio.ensure_future(load.reached.wait()), clients]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    server.kill()
    await clients
    assert load.unexpected == []
    assert len(load.acked) >= KILL_AFTER
    assert load.in_flight, "the kill should have cut requests short"
    assert len(load.acked) < CLIENTS * ORDERS_PER_CLIENT
    await _connections_gone(session)

    # Acknowledged means stored as acknowledged; nothing stored that no client sent.
    stored = {o.client_order_id: o for o in await stored_orders(session, m)}
    trade_ids = {str(t.id) for t in await stored_trades(session, m)}
    assert set(load.acked) <= set(stored)
    assert set(stored) <= set(load.acked) | load.in_flight
    for client_order_id, ack in load.acked.items():
        row = stored[client_order_id]
        assert str(row.id) == ack["id"]
        assert row.sequence == ack["sequence"]
        assert row.filled_quantity >= ack["filled_quantity"]
        assert {t["id"] for t in ack["trades"]} <= trade_ids
    requested = {str(o.id) for o in stored.values() if o.cancel_reason == "requested"}
    assert load.cancelled <= requested <= load.cancelled | load.cancels_in_flight

    # A new server on the same database: the same book, and it matches against it. It first
    # takes one resting order on each side, priced outside the load's range (mid ± 15), so the
    # book is compared on both sides whatever the interleaving and the kill left resting.
    (restarted,) = await servers.start(1)
    for side, price in (("sell", MID + 20), ("buy", MID - 20)):
        body = {"product": m.code, "side": side, "price": price, "quantity": 5}
        async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as c:
            r = await c.post("/v1/orders", json=body, headers=holdings[0].org.headers)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "open"
    before = await book_from_database(session, m)
    async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as c:
        r = await c.get(f"/v1/markets/{m.code}/book", params={"depth": 100})
        assert r.json() == before
        assert before["asks"], "the load should have left sell orders resting"
        assert before["bids"], "the load should have left buy orders resting"
        for org, side, level in (
            (late_buyer, "buy", before["asks"][0]),
            (late_seller, "sell", before["bids"][0]),
        ):
            # The first order in time priority at the other side's best price: an order
            # for exactly its open quantity trades with it alone.
            (first, *_) = [
                o
                for o in await stored_orders(session, m)
                if o.status in ("open", "partially_filled")
                and o.side != side
                and o.price == level["price"]
            ]
            quantity = first.quantity - first.filled_quantity
            r = await c.post(
                "/v1/orders",
                json={
                    "product": m.code,
                    "side": side,
                    "price": level["price"],
                    "quantity": quantity,
                    "time_in_force": "ioc",
                },
                headers=org.headers,
            )
            assert r.status_code == 201, r.text
            placed = r.json()
            assert placed["status"] == "filled"
            assert [(t["price"], t["quantity"]) for t in placed["trades"]] == [
                (level["price"], quantity)
            ]
            (trade,) = [
                t for t in await stored_trades(session, m) if str(t.id) == placed["trades"][0]["id"]
            ]
            assert (trade.sell_order_id if side == "buy" else trade.buy_order_id) == first.id

    late = [Holdings(late_buyer, CASH, 0), Holdings(late_seller, 0, LATE_CREDITS)]
    await assert_after_load(client, session, m, holdings + late, [restarted.base_url])
