"""Sealed-bid auctions through the API, on a real database: creation and its supply hold,
confidentiality (bids and the reserve price), bids and their cash holds, withdrawal, caps,
closed windows, idempotency and a race. The ledger and registry checkers stay clean."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auction import commitments
from tests.auction.helpers import (
    Json,
    Seller,
    at,
    auction_body,
    auctioneer,
    cash,
    close_by_clock,
    create_auction,
    place,
    placed,
    set_status,
    set_window,
)
from tests.factories import Org, create_org, deposit
from tests.offsets.helpers import (
    assert_books_clean,
    assert_problem,
    count_rows,
    credit_balances,
    holdings,
    new_batch,
)
from tests.offsets.test_concurrency import wait_for_lock_waiters

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TestCommitments:
    """Pure: the documented formats, and refusals of malformed nonces and seeds."""

    def test_formats(self) -> None:
        a, b, nonce = uuid.uuid4(), uuid.uuid4(), "ab" * 32

        def sha(line: str) -> str:
            return hashlib.sha256(line.encode()).hexdigest()

        assert commitments.bid_commitment(a, b, 7, 9, nonce) == sha(
            f"tanso-auction-bid-v1|{a}|{b}|7|9|{nonce}"
        )
        assert commitments.reserve_commitment(a, None, nonce) == sha(
            f"tanso-auction-reserve-v1|{a}|none|{nonce}"
        )
        assert commitments.seed_commitment(a, "cd" * 32, nonce) == sha(
            f"tanso-auction-seed-v1|{a}|{'cd' * 32}|{nonce}"
        )
        assert HEX64.match(commitments.new_nonce())
        assert commitments.new_nonce() != commitments.new_nonce()

    @pytest.mark.parametrize("nonce", ["", "ab" * 31, "AB" * 32, "zz" * 32])
    def test_bad_nonce(self, nonce: str) -> None:
        with pytest.raises(ValueError, match="hex"):
            commitments.bid_commitment(uuid.uuid4(), uuid.uuid4(), 1, 1, nonce)


async def funded_bidder(client: httpx.AsyncClient, amount: int = 1_000_000) -> Org:
    org = await create_org(client)
    await deposit(client, org, amount)
    return org


class TestCreate:
    async def test_supply_is_held_from_the_creator(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        auction = await create_auction(
            client, seller, 4_000, public_floor_price=1_000, reserve_price=1_500
        )
        assert auction["status"] == "open"
        assert auction["supply"] == [{"batch_id": seller.batch_id, "quantity": 4_000}]
        assert auction["supply_quantity"] == 4_000
        assert auction["reserve_price"] is None
        assert HEX64.match(auction["reserve_commitment"])
        assert HEX64.match(auction["seed_commitment"])
        assert "seed" not in auction
        assert "reserve_nonce" not in auction
        assert await credit_balances(client, seller.org) == {seller.batch_id: (6_000, 4_000)}
        held = (await holdings(client, seller.org))[seller.batch_id]
        assert (held["available"], held["held"]) == (6_000, 4_000)
        # The published commitments open to the values stored server-side.
        row = (
            await session.execute(
                text("SELECT reserve_nonce, seed, seed_nonce FROM auctions WHERE id = :id"),
                {"id": uuid.UUID(auction["id"])},
            )
        ).one()
        await session.rollback()
        auction_id = uuid.UUID(auction["id"])
        assert auction["reserve_commitment"] == commitments.reserve_commitment(
            auction_id, 1_500, row.reserve_nonce
        )
        assert auction["seed_commitment"] == commitments.seed_commitment(
            auction_id, row.seed, row.seed_nonce
        )
        assert sum(e - s + 1 for s, e in held["held_serial_ranges"]) == 4_000
        await assert_books_clean(session)

    async def test_future_window_is_scheduled(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, opens_at=at(hours=1), closes_at=at(hours=3))
        assert auction["status"] == "scheduled"
        await assert_books_clean(session)

    @pytest.mark.parametrize("scopes", [["read", "bid", "trade"], ["read", "registry"]])
    async def test_needs_the_auctioneer_scope(
        self, client: httpx.AsyncClient, session: AsyncSession, scopes: list[str]
    ) -> None:
        seller = await auctioneer(client)
        kind = "platform" if "registry" in scopes else "company"
        other = await create_org(client, kind=kind, scopes=scopes)
        r = await client.post("/v1/auctions", json=auction_body(seller), headers=other.headers)
        assert_problem(r, 403, "insufficient_scope")
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        ("fields", "code"),
        [
            ({"opens_at": at(hours=2), "closes_at": at(hours=1)}, "validation_error"),
            ({"opens_at": at(hours=-3), "closes_at": at(hours=-1)}, "invalid_auction"),
            ({"public_floor_price": 1_000, "reserve_price": 999}, "validation_error"),
            ({"quantity_step": 0}, "validation_error"),
            ({"price_tick": -5}, "validation_error"),
            ({"min_bid_quantity": 0}, "validation_error"),
            ({"quantity_step": 300}, "validation_error"),  # 1,000 is not a multiple of 300
            ({"supply": []}, "validation_error"),
            ({"format": "dutch"}, "validation_error"),
            ({"opens_at": "2026-12-01T00:00:00"}, "validation_error"),  # no time zone
        ],
    )
    async def test_validation(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        fields: dict[str, Any],
        code: str,
    ) -> None:
        seller = await auctioneer(client)
        r = await client.post(
            "/v1/auctions", json=auction_body(seller, **fields), headers=seller.org.headers
        )
        assert_problem(r, 422, code)
        assert await count_rows(session, "auctions") == 0
        assert await credit_balances(client, seller.org) == {seller.batch_id: (10_000, 0)}

    async def test_credits_not_held_are_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 500)
        r = await client.post(
            "/v1/auctions", json=auction_body(seller, 501), headers=seller.org.headers
        )
        assert_problem(r, 409, "insufficient_credits")
        someone = await create_org(client)
        theirs = await new_batch(client, someone, 1_000)
        body = auction_body(seller, 100)
        body["supply"].append({"batch_id": theirs.batch_id, "quantity": 100})
        r = await client.post("/v1/auctions", json=body, headers=seller.org.headers)
        assert_problem(r, 409, "insufficient_credits")
        assert await count_rows(session, "auctions") == 0
        assert await credit_balances(client, seller.org) == {seller.batch_id: (500, 0)}
        await assert_books_clean(session)


class TestReads:
    async def test_reserve_price_is_never_shown_before_clearing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        auction = await create_auction(client, seller, public_floor_price=100, reserve_price=900)
        path = f"/v1/auctions/{auction['id']}"

        async def views() -> list[Json]:
            out = []
            for org in (seller.org, bidder):
                r = await client.get(path, headers=org.headers)
                assert r.status_code == 200, r.text
                out.append(r.json())
                r = await client.get("/v1/auctions", headers=org.headers)
                assert r.status_code == 200, r.text
                out.extend(r.json()["data"])
            return out

        for status in ("open", "closed"):
            await set_status(session, auction, status)
            for view in await views():
                assert view["reserve_price"] is None, (status, view)
                assert view["public_floor_price"] == 100
        # Revealed once the close has published (a cancelled close too: its audit shows it).
        for status in ("cleared", "settled", "cancelled"):
            await set_status(session, auction, status)
            assert all(v["reserve_price"] == 900 for v in await views()), status
        await assert_books_clean(session)

    async def test_status_is_derived_from_the_clock(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, opens_at=at(hours=1), closes_at=at(hours=2))
        path = f"/v1/auctions/{auction['id']}"
        now = datetime.now(UTC)
        await set_window(session, auction, now - timedelta(minutes=1), now + timedelta(hours=1))
        r = await client.get(path, headers=seller.org.headers)
        assert r.json()["status"] == "open"
        await close_by_clock(session, auction)
        r = await client.get(path, headers=seller.org.headers)
        assert r.json()["status"] == "closed"
        await assert_books_clean(session)

    async def test_list_is_paginated_and_any_key_reads(self, client: httpx.AsyncClient) -> None:
        seller = await auctioneer(client)
        ids = [(await create_auction(client, seller, 100))["id"] for _ in range(3)]
        reader = await create_org(client, scopes=["read"])
        r = await client.get("/v1/auctions?limit=2", headers=reader.headers)
        assert r.status_code == 200, r.text
        first = r.json()
        assert [a["id"] for a in first["data"]] == ids[::-1][:2]
        r = await client.get(
            f"/v1/auctions?limit=2&cursor={first['next_cursor']}", headers=reader.headers
        )
        assert [a["id"] for a in r.json()["data"]] == [ids[0]]
        assert r.json()["next_cursor"] is None
        r = await client.get(f"/v1/auctions/{uuid.uuid4()}", headers=reader.headers)
        assert_problem(r, 404, "auction_not_found")
        r = await client.get("/v1/auctions")
        assert_problem(r, 401, "invalid_api_key")


class TestBids:
    async def test_cash_is_held_and_withdrawal_releases_it(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client, 100_000)
        auction = await create_auction(client, seller)
        bid = await placed(client, bidder, auction, 120, 50)
        assert bid["status"] == "active"
        assert bid["amount"] == 6_000
        assert await cash(client, bidder) == (94_000, 6_000)
        # The commitment can be recomputed from the published format and the nonce.
        expected = commitments.bid_commitment(
            uuid.UUID(auction["id"]), uuid.UUID(bid["id"]), 120, 50, bid["nonce"]
        )
        assert bid["commitment"] == expected
        line = f"tanso-auction-bid-v1|{auction['id']}|{bid['id']}|120|50|{bid['nonce']}"
        assert hashlib.sha256(line.encode()).hexdigest() == expected

        r = await client.get(f"/v1/auctions/{auction['id']}/bids", headers=bidder.headers)
        assert r.status_code == 200, r.text
        (listed,) = r.json()
        assert "nonce" not in listed
        assert {k: listed[k] for k in ("id", "price", "quantity", "commitment")} == {
            k: bid[k] for k in ("id", "price", "quantity", "commitment")
        }

        path = f"/v1/auctions/{auction['id']}/bids/{bid['id']}"
        r = await client.delete(path, headers=bidder.headers)
        assert r.status_code == 204, r.text
        assert await cash(client, bidder) == (100_000, 0)
        r = await client.get(f"/v1/auctions/{auction['id']}/bids", headers=bidder.headers)
        assert r.json()[0]["status"] == "withdrawn"
        assert_problem(await client.delete(path, headers=bidder.headers), 409, "bid_not_active")
        await assert_books_clean(session)

    async def test_bids_are_private(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await auctioneer(client)
        alice, bob = await funded_bidder(client), await funded_bidder(client)
        auction = await create_auction(client, seller)
        bid = await placed(client, alice, auction, 100, 10)
        bids_path = f"/v1/auctions/{auction['id']}/bids"
        r = await client.get(bids_path, headers=bob.headers)
        assert r.status_code == 200
        assert r.json() == []
        r = await client.get(bids_path, headers=seller.org.headers)
        assert_problem(r, 403, "insufficient_scope")
        r = await client.delete(f"{bids_path}/{bid['id']}", headers=bob.headers)
        assert_problem(r, 404, "bid_not_found")
        r = await client.delete(f"{bids_path}/{uuid.uuid4()}", headers=alice.headers)
        assert_problem(r, 404, "bid_not_found")
        for org in (seller.org, bob):
            r = await client.get(f"/v1/auctions/{auction['id']}", headers=org.headers)
            assert str(bid["id"]) not in r.text
            assert bid["commitment"] not in r.text
        assert await cash(client, alice) == (1_000_000 - 1_000, 1_000)
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        ("price", "quantity", "fragment"),
        [
            (105, 100, "price tick"),
            (100, 150, "step"),
            (100, 50, "at least 100"),
            (90, 100, "public floor"),
        ],
    )
    async def test_bid_format(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        price: int,
        quantity: int,
        fragment: str,
    ) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        auction = await create_auction(
            client,
            seller,
            price_tick=10,
            quantity_step=100,
            min_bid_quantity=100,
            public_floor_price=100,
        )
        body = assert_problem(
            await place(client, bidder, auction, price, quantity), 422, "invalid_bid"
        )
        assert any(fragment in e["msg"] for e in body["errors"]), body
        assert await cash(client, bidder) == (1_000_000, 0)
        await assert_books_clean(session)

    async def test_the_creator_cannot_bid(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client, kind="platform", scopes=["read", "bid", "auctioneer"])
        await deposit(client, org, 1_000_000)
        seller = Seller(org, await new_batch(client, org, 1_000))
        auction = await create_auction(client, seller)
        assert_problem(await place(client, org, auction, 100, 10), 403, "own_auction")
        await assert_books_clean(session)

    async def test_payload_validation(self, client: httpx.AsyncClient) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        auction = await create_auction(client, seller)
        for price, quantity in ((0, 10), (100, 0), (100, -1), ("100", 10)):
            r = await place(client, bidder, auction, price, quantity)  # type: ignore[arg-type]
            assert_problem(r, 422, "validation_error")
        r = await place(client, bidder, {"id": str(uuid.uuid4())}, 100, 10)
        assert_problem(r, 404, "auction_not_found")

    async def test_caps(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        auction = await create_auction(
            client, seller, max_bids_per_bidder=2, max_bidder_quantity=300
        )
        first = await placed(client, bidder, auction, 100, 100)
        await placed(client, bidder, auction, 90, 150)
        assert_problem(await place(client, bidder, auction, 80, 10), 409, "too_many_bids")
        r = await client.delete(
            f"/v1/auctions/{auction['id']}/bids/{first['id']}", headers=bidder.headers
        )
        assert r.status_code == 204
        body = assert_problem(
            await place(client, bidder, auction, 80, 151), 409, "bidder_quantity_exceeded"
        )
        assert body["active_quantity"] == 150
        await placed(client, bidder, auction, 80, 150)
        # Another bidder has caps of its own.
        other = await funded_bidder(client)
        await placed(client, other, auction, 100, 300)
        assert await cash(client, bidder) == (1_000_000 - 90 * 150 - 80 * 150, 25_500)
        await assert_books_clean(session)

    async def test_insufficient_balance(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client, 9_999)
        auction = await create_auction(client, seller)
        assert_problem(await place(client, bidder, auction, 100, 100), 409, "insufficient_balance")
        assert await cash(client, bidder) == (9_999, 0)
        assert await count_rows(session, "auction_bids") == 0
        await placed(client, bidder, auction, 99, 101)
        assert await cash(client, bidder) == (0, 9_999)
        await assert_books_clean(session)

    async def test_only_while_open(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        scheduled = await create_auction(
            client, seller, opens_at=at(hours=1), closes_at=at(hours=2)
        )
        assert_problem(await place(client, bidder, scheduled, 100, 10), 409, "auction_not_open")

        auction = await create_auction(client, seller)
        bid = await placed(client, bidder, auction, 100, 10)
        await close_by_clock(session, auction)
        assert_problem(await place(client, bidder, auction, 100, 10), 409, "auction_not_open")
        r = await client.delete(
            f"/v1/auctions/{auction['id']}/bids/{bid['id']}", headers=bidder.headers
        )
        assert_problem(r, 409, "auction_not_open")
        assert await cash(client, bidder) == (1_000_000 - 1_000, 1_000)  # bids bind after close

        cleared = await create_auction(client, seller)
        await set_status(session, cleared, "cancelled")
        assert_problem(await place(client, bidder, cleared, 100, 10), 409, "auction_not_open")
        await assert_books_clean(session)

    async def test_idempotent_replay_has_one_effect(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        auction = await create_auction(client, seller)
        headers = {**bidder.headers, "Idempotency-Key": "bid-0001"}
        path = f"/v1/auctions/{auction['id']}/bids"
        body = {"price": 100, "quantity": 10}
        first = await client.post(path, json=body, headers=headers)
        assert first.status_code == 201, first.text
        second = await client.post(path, json=body, headers=headers)
        assert second.status_code == 201, second.text
        assert second.headers["idempotent-replayed"] == "true"
        assert second.json() == first.json()
        assert await count_rows(session, "auction_bids") == 1
        assert await cash(client, bidder) == (999_000, 1_000)
        await assert_books_clean(session)


@pytest.mark.concurrency
class TestConcurrency:
    async def test_twenty_bids_with_cash_for_five(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller: Seller = await auctioneer(client)
        bidder = await funded_bidder(client, 5_000)
        auction = await create_auction(client, seller)
        responses = await asyncio.wait_for(
            asyncio.gather(*(place(client, bidder, auction, 100, 10) for _ in range(20))), 120
        )
        codes = Counter(r.status_code for r in responses)
        assert codes == {201: 5, 409: 15}, [r.text for r in responses]
        assert all(
            r.json()["code"] == "insufficient_balance" for r in responses if r.status_code == 409
        )
        assert await count_rows(session, "auction_bids") == 5
        assert await cash(client, bidder) == (0, 5_000)
        seqs = sorted(r.json()["submitted_seq"] for r in responses if r.status_code == 201)
        assert len(set(seqs)) == 5
        await assert_books_clean(session)

    async def test_a_bid_racing_the_close_is_either_in_or_refused(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        """The close (a later session) takes FOR UPDATE on the auction row: a bid arriving
        meanwhile waits for it, then sees the auction closed and holds nothing."""
        seller = await auctioneer(client)
        bidder = await funded_bidder(client)
        auction = await create_auction(client, seller)
        async with engine.connect() as closer:
            tx = await closer.begin()
            await closer.execute(
                text("SELECT 1 FROM auctions WHERE id = :id FOR UPDATE"),
                {"id": uuid.UUID(auction["id"])},
            )
            pending = asyncio.ensure_future(place(client, bidder, auction, 100, 10))
            await wait_for_lock_waiters(engine)
            await closer.execute(
                text("UPDATE auctions SET status = 'closed' WHERE id = :id"),
                {"id": uuid.UUID(auction["id"])},
            )
            await tx.commit()
        r = await asyncio.wait_for(pending, 60)
        assert_problem(r, 409, "auction_not_open")
        assert await cash(client, bidder) == (1_000_000, 0)
        async with AsyncSession(engine) as session:
            assert await count_rows(session, "auction_bids") == 0
            await assert_books_clean(session)
