"""Auction test helpers: an auctioneer holding credits, auctions and bids through the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import Org, create_org, deposit
from tests.offsets.helpers import Issued, new_batch

Json = dict[str, Any]


def at(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


@dataclass
class Seller:
    org: Org
    issued: Issued

    @property
    def batch_id(self) -> str:
        return self.issued.batch_id


async def auctioneer(client: httpx.AsyncClient, credits: int = 10_000) -> Seller:
    """A government organisation with the auctioneer scope, holding one batch of credits."""
    org = await create_org(client, kind="government", scopes=["read", "auctioneer"])
    return Seller(org, await new_batch(client, org, credits))


def auction_body(seller: Seller, quantity: int = 1_000, **fields: Any) -> Json:
    body: Json = {
        "title": "FY2026 government J-Credit tender",
        "format": "uniform",
        "supply": [{"batch_id": seller.batch_id, "quantity": quantity}],
        "opens_at": at(hours=-1),
        "closes_at": at(hours=2),
    }
    body.update(fields)
    return body


async def create_auction(
    client: httpx.AsyncClient, seller: Seller, quantity: int = 1_000, **fields: Any
) -> Json:
    r = await client.post(
        "/v1/auctions", json=auction_body(seller, quantity, **fields), headers=seller.org.headers
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def place(
    client: httpx.AsyncClient, bidder: Org, auction: Json, price: int, quantity: int
) -> httpx.Response:
    return await client.post(
        f"/v1/auctions/{auction['id']}/bids",
        json={"price": price, "quantity": quantity},
        headers=bidder.headers,
    )


async def placed(
    client: httpx.AsyncClient, bidder: Org, auction: Json, price: int, quantity: int
) -> Json:
    r = await place(client, bidder, auction, price, quantity)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def cash(client: httpx.AsyncClient, org: Org) -> tuple[int, int]:
    """(available, held) JPY."""
    r = await client.get("/v1/balances", headers=org.headers)
    assert r.status_code == 200, r.text
    c = r.json()["cash"]
    return int(c["available"]), int(c["held"])


async def set_window(
    session: AsyncSession, auction: Json, opens_at: datetime, closes_at: datetime
) -> None:
    await session.execute(
        text("UPDATE auctions SET opens_at = :o, closes_at = :c WHERE id = :id"),
        {"o": opens_at, "c": closes_at, "id": uuid.UUID(auction["id"])},
    )
    await session.commit()


async def close_by_clock(session: AsyncSession, auction: Json) -> None:
    """Move the window into the past (as if the close time went by with no job run)."""
    now = datetime.now(UTC)
    await set_window(session, auction, now - timedelta(hours=3), now - timedelta(seconds=1))


async def set_status(session: AsyncSession, auction: Json, status: str) -> None:
    await session.execute(
        text("UPDATE auctions SET status = :s WHERE id = :id"),
        {"s": status, "id": uuid.UUID(auction["id"])},
    )
    await session.commit()


# --- close, results, audit -------------------------------------------------------------


async def close(client: httpx.AsyncClient, org: Org, auction: Json) -> httpx.Response:
    return await client.post(f"/v1/auctions/{auction['id']}/close", headers=org.headers)


async def closed(client: httpx.AsyncClient, org: Org, auction: Json) -> Json:
    r = await close(client, org, auction)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def results(client: httpx.AsyncClient, org: Org, auction: Json) -> Json:
    r = await client.get(f"/v1/auctions/{auction['id']}/results", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def audit_document(client: httpx.AsyncClient, auction: Json) -> Json:
    """The public audit, fetched with no key."""
    r = await client.get(f"/v1/auctions/{auction['id']}/audit")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def assert_nothing_held(session: AsyncSession) -> None:
    """No active hold and no held balance left anywhere (cash or credits)."""
    holds = await session.scalar(text("SELECT count(*) FROM ledger_holds WHERE status = 'active'"))
    held = await session.scalar(
        text("SELECT count(*) FROM ledger_accounts WHERE kind = 'held' AND balance <> 0")
    )
    await session.rollback()
    assert (holds, held) == (0, 0)


FUNDS = 1_000_000


async def bidder(client: httpx.AsyncClient, funds: int = FUNDS, **fields: Any) -> Org:
    org = await create_org(client, **fields)
    await deposit(client, org, funds)
    return org


async def amend(
    client: httpx.AsyncClient, org: Org, auction: Json, bid: Json, **body: Any
) -> httpx.Response:
    return await client.patch(
        f"/v1/auctions/{auction['id']}/bids/{bid['id']}", json=body, headers=org.headers
    )


async def amended(
    client: httpx.AsyncClient, org: Org, auction: Json, bid: Json, **body: Any
) -> Json:
    r = await amend(client, org, auction, bid, **body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def own_bids(client: httpx.AsyncClient, org: Org, auction: Json) -> list[Json]:
    r = await client.get(f"/v1/auctions/{auction['id']}/bids", headers=org.headers)
    assert r.status_code == 200, r.text
    return list(r.json())
