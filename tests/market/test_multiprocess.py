"""Two real server processes, many concurrent clients, one product.

Each server is its own uvicorn process with its own connection pool, so the only thing that
serialises their orders on the product is PostgreSQL: the product's advisory lock and the
book rebuilt from the rows under it. 16 clients (two per organisation, each organisation
trading both sides) send 160 orders (GTC, IOC, FOK, post-only, a few market orders)
and cancels, alternating between the two servers. Afterwards everything must add up
(``assert_after_load``), and the stored orders and cancels, replayed in commit order through
the pure ``OrderBook``, must give exactly the stored trades, outcomes and book.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.market.helpers import market
from tests.market.load import (
    Load,
    Servers,
    assert_after_load,
    running_servers,
    stored_orders,
    trader,
    traders,
)

pytestmark = pytest.mark.concurrency

MID = 1_000
CLIENTS = 16
ORDERS_PER_CLIENT = 10


@pytest.fixture
def servers(database_url: str, engine: AsyncEngine) -> Iterator[Servers]:
    """Server processes on the test database, stopped before its tables are emptied."""
    with running_servers(database_url) as started:
        yield started


async def test_two_servers_many_clients_one_book(
    client: httpx.AsyncClient, session: AsyncSession, servers: Servers
) -> None:
    m = await market(
        client, sellers=4, buyers=4, credits=4_000, cash=5_000_000, reference_price=MID
    )
    holdings = await traders(client, m, cash_each=5_000_000)
    first, second = await servers.start(2)
    assert first.process is not None
    assert second.process is not None
    assert first.process.pid != second.process.pid

    load = Load()
    await asyncio.gather(
        *(
            trader(
                load,
                (first, second)[i % 2].base_url,
                holdings[i % len(holdings)].org,
                m,
                name=f"c{i}",
                orders=ORDERS_PER_CLIENT,
                mid=MID,
                seed=1_000 + i,
            )
            for i in range(CLIENTS)
        )
    )

    # Close with one resting order on each side, priced outside the load's range (mid ± 15),
    # so the book is compared on both sides whatever the interleaving left resting.
    for side, price, server in (("sell", MID + 20, first), ("buy", MID - 20, second)):
        client_order_id = f"closing-{side}"
        body = {"product": m.code, "side": side, "type": "limit", "price": price, "quantity": 5}
        body["client_order_id"] = client_order_id
        headers = holdings[0].org.headers
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as c:
            r = await c.post("/v1/orders", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "open"
        load.acked[client_order_id] = r.json()
        load.statuses["POST 201"] += 1

    assert load.unexpected == []
    assert load.in_flight == set()
    assert load.cancels_in_flight == set()
    assert load.statuses["POST 201"] == len(load.acked) > CLIENTS * ORDERS_PER_CLIENT * 0.8
    assert load.cancelled, "the load should have cancelled some orders"
    replayed = await assert_after_load(
        client, session, m, holdings, [first.base_url, second.base_url]
    )
    # Acknowledged means stored, and nothing is stored that was not acknowledged.
    stored = {o.client_order_id: o for o in await stored_orders(session, m)}
    assert set(stored) == set(load.acked)
    for client_order_id, ack in load.acked.items():
        assert str(stored[client_order_id].id) == ack["id"]
    requested = {str(o.id) for o in stored.values() if o.cancel_reason == "requested"}
    assert requested == load.cancelled
    # The load did what it is for: trades, self-trade prevention, IOC/FOK and resting orders.
    reasons = {o.cancel_reason for o in replayed.outcomes.values()}
    assert {"ioc", "fok", "requested"} <= reasons
    assert len(replayed.trades) > 50
    assert replayed.book.bids
    assert replayed.book.asks
