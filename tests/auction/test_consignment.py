"""Consigned supply (a tender pool): sellers add credits to an auction before bidding opens;
at the close the sold quantity is drawn from every lot pro rata, unsold credits go back to
each seller, and the revenue is split pro rata to what each sold. Real commits; the ledger and
registry checkers stay clean."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.auction.helpers import (
    Json,
    Seller,
    assert_nothing_held,
    at,
    auctioneer,
    audit_document,
    cash,
    closed,
    create_auction,
    place,
    placed,
    results,
    set_window,
)
from tests.factories import Org, create_org, deposit
from tests.offsets.helpers import (
    assert_books_clean,
    assert_problem,
    credit_balances,
    holdings,
    new_batch,
    transfer,
)


async def consignor(client: httpx.AsyncClient, credits: int = 5_000) -> tuple[Org, str]:
    """A municipality selling forest credits (scope ``trade``), and its batch."""
    org = await create_org(client, kind="municipality")
    issued = await new_batch(client, org, credits)
    return org, issued.batch_id


async def consign(
    client: httpx.AsyncClient, org: Org, auction: Json, batch_id: str, quantity: int
) -> httpx.Response:
    return await client.post(
        f"/v1/auctions/{auction['id']}/consignments",
        json={"batch_id": batch_id, "quantity": quantity},
        headers=org.headers,
    )


async def scheduled_auction(
    client: httpx.AsyncClient, quantity: int = 600, **fields: object
) -> tuple[Json, Seller]:
    seller = await auctioneer(client, 10_000)
    fields = {"undersubscribed": "sell_what_is_bid", **fields}
    auction = await create_auction(
        client, seller, quantity, opens_at=at(hours=1), closes_at=at(hours=2), **fields
    )
    return auction, seller


async def open_now(session: AsyncSession, auction: Json) -> None:
    now = datetime.now(UTC)
    await set_window(session, auction, now - timedelta(minutes=5), now + timedelta(hours=1))


class TestConsign:
    async def test_holds_the_credits_and_grows_the_supply(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        auction, _ = await scheduled_auction(client)
        org, batch_id = await consignor(client)

        r = await consign(client, org, auction, batch_id, 400)
        assert r.status_code == 201, r.text
        lot = r.json()
        assert (lot["batch_id"], lot["quantity"]) == (batch_id, 400)
        assert (lot["sold_quantity"], lot["proceeds"], lot["carried_from_auction_id"]) == (
            None,
            None,
            None,
        )
        assert (await credit_balances(client, org))[batch_id] == (4_600, 400)
        got = (await client.get(f"/v1/auctions/{auction['id']}", headers=org.headers)).json()
        assert got["supply_quantity"] == 1_000
        assert sorted(s["quantity"] for s in got["supply"]) == [400, 600]

        mine = await client.get(f"/v1/auctions/{auction['id']}/consignments", headers=org.headers)
        assert mine.status_code == 200
        assert [x["id"] for x in mine.json()] == [lot["id"]]
        stranger = await create_org(client)
        theirs = await client.get(
            f"/v1/auctions/{auction['id']}/consignments", headers=stranger.headers
        )
        assert theirs.json() == []
        await assert_books_clean(session)

    async def test_a_share_cap_grows_with_the_consigned_supply(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """The cap given as a share applies to the supply that is sold, consignments included:
        25% of 600 t is 150 t at creation, of 1,000 t after a 400 t consignment, 250 t."""
        auction, _ = await scheduled_auction(
            client, 600, quantity_step=10, max_bidder_share_bps=2_500
        )
        assert auction["max_bidder_quantity"] == 150
        org, batch_id = await consignor(client)
        assert (await consign(client, org, auction, batch_id, 400)).status_code == 201
        got = (await client.get(f"/v1/auctions/{auction['id']}", headers=org.headers)).json()
        assert (got["supply_quantity"], got["max_bidder_quantity"]) == (1_000, 250)
        assert got["max_bidder_share_bps"] == 2_500

        await open_now(session, auction)
        a = await create_org(client)
        await deposit(client, a, 1_000_000)
        refused = await place(client, a, auction, 100, 260)
        assert_problem(refused, 409, "bidder_quantity_exceeded")
        await placed(client, a, auction, 100, 250)
        await assert_books_clean(session)

    async def test_a_consignor_cannot_bid_in_the_auction(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        auction, _ = await scheduled_auction(client)
        org, batch_id = await consignor(client)
        assert (await consign(client, org, auction, batch_id, 400)).status_code == 201
        await deposit(client, org, 1_000_000)
        await open_now(session, auction)
        assert_problem(await place(client, org, auction, 100, 10), 403, "own_auction")
        assert (await cash(client, org)) == (1_000_000, 0)
        await assert_books_clean(session)

    async def test_a_replayed_consignment_holds_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        auction, _ = await scheduled_auction(client)
        org, batch_id = await consignor(client)
        headers = {**org.headers, "Idempotency-Key": "consign-1"}
        body = {"batch_id": batch_id, "quantity": 400}
        url = f"/v1/auctions/{auction['id']}/consignments"
        first = await client.post(url, json=body, headers=headers)
        again = await client.post(url, json=body, headers=headers)
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert (await credit_balances(client, org))[batch_id] == (4_600, 400)
        await assert_books_clean(session)

    async def test_refused_once_bidding_opens(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        auction, _ = await scheduled_auction(client)
        org, batch_id = await consignor(client)
        await open_now(session, auction)

        r = await consign(client, org, auction, batch_id, 100)
        assert_problem(r, 409, "consignment_closed")
        assert (await credit_balances(client, org))[batch_id] == (5_000, 0)

    @pytest.mark.parametrize(
        ("quantity", "status", "code"),
        [
            (150, 422, "invalid_consignment"),  # not a multiple of the step (100)
            (6_000, 409, "insufficient_credits"),
            (0, 422, "validation_error"),
            (-100, 422, "validation_error"),
            ("100", 422, "validation_error"),
            (10**12, 422, "validation_error"),
        ],
    )
    async def test_bad_quantities(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        quantity: object,
        status: int,
        code: str,
    ) -> None:
        auction, _ = await scheduled_auction(client, quantity_step=100)
        org, batch_id = await consignor(client)
        r = await client.post(
            f"/v1/auctions/{auction['id']}/consignments",
            json={"batch_id": batch_id, "quantity": quantity},
            headers=org.headers,
        )
        assert_problem(r, status, code)
        assert (await credit_balances(client, org))[batch_id] == (5_000, 0)
        await assert_books_clean(session)

    async def test_unknown_auction_batch_and_scope(self, client: httpx.AsyncClient) -> None:
        auction, _ = await scheduled_auction(client)
        org, batch_id = await consignor(client)
        missing = {"id": str(uuid.uuid4())}
        assert_problem(await consign(client, org, missing, batch_id, 100), 404, "auction_not_found")
        assert_problem(
            await consign(client, org, auction, str(uuid.uuid4()), 100), 404, "batch_not_found"
        )
        reader = await create_org(client, scopes=["read"])
        r = await consign(client, reader, auction, batch_id, 100)
        assert r.status_code == 403, r.text
        # Someone else's credits: the caller holds none of that batch.
        thief = await create_org(client)
        assert_problem(
            await consign(client, thief, auction, batch_id, 100), 409, "insufficient_credits"
        )


class TestProRataSettlement:
    async def test_draws_supply_and_splits_revenue_pro_rata(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        auction, seller = await scheduled_auction(client, 600)
        org, batch_id = await consignor(client)
        lot = (await consign(client, org, auction, batch_id, 400)).json()
        await open_now(session, auction)
        bidder = await create_org(client)
        await deposit(client, bidder, 1_000_000)
        await placed(client, bidder, auction, 101, 300)
        await placed(client, bidder, auction, 100, 200)

        settled = await closed(client, seller.org, auction)
        assert settled["status"] == "settled"
        # 500 of 1,000 sold at a uniform 100: 300 from the creator's 600, 200 from the 400.
        published = await results(client, org, auction)
        assert (published["sold_quantity"], published["revenue"]) == (500, 50_000)
        assert published["sellers"] == [
            {"seller": "S1", "offered_quantity": 600, "sold_quantity": 300},
            {"seller": "S2", "offered_quantity": 400, "sold_quantity": 200},
        ]
        assert [
            (c["id"], c["sold_quantity"], c["proceeds"]) for c in published["consignments"]
        ] == [(lot["id"], 200, 20_000)]
        assert (published["carried_over_quantity"], published["carried_to_auction_id"]) == (0, None)
        assert await cash(client, org) == (20_000, 0)
        assert await cash(client, seller.org) == (30_000, 0)
        # Unsold credits went back to each seller; the bidder holds what it won.
        assert (await credit_balances(client, org))[batch_id] == (4_800, 0)
        won = await holdings(client, bidder)
        assert sorted(h["available"] for h in won.values()) == [200, 300]
        assert await cash(client, bidder) == (1_000_000 - 50_000, 0)
        mine = await client.get(f"/v1/auctions/{auction['id']}/consignments", headers=org.headers)
        assert [(x["sold_quantity"], x["proceeds"]) for x in mine.json()] == [(200, 20_000)]
        audit = await audit_document(client, auction)
        assert audit["results"]["sold_quantity"] == 500
        assert audit["sellers"] == published["sellers"]  # anonymised in the public audit too
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_two_consignors_same_batch_rounding_is_exact(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """Three lots of one batch (two consignors bought from the same issuer): 7 of 9 sold
        at 7 per credit; every figure adds up exactly."""
        auction, seller = await scheduled_auction(client, 3)
        issuer = await create_org(client)
        issued = await new_batch(client, issuer, 100)
        a, b = await create_org(client), await create_org(client)
        for org in (a, b):
            r = await transfer(client, issuer, org, issued.batch_id, 10)
            assert r.status_code == 201, r.text
            assert (await consign(client, org, auction, issued.batch_id, 3)).status_code == 201
        await open_now(session, auction)
        bidder = await create_org(client)
        await deposit(client, bidder, 1_000)
        await placed(client, bidder, auction, 7, 7)
        await closed(client, seller.org, auction)

        published = await results(client, a, auction)
        sold = [s["sold_quantity"] for s in published["sellers"]]
        assert sum(sold) == 7
        assert sorted(sold) == [2, 2, 3]
        proceeds = [
            (await results(client, org, auction))["consignments"][0]["proceeds"] for org in (a, b)
        ]
        creator = (await results(client, seller.org, auction))["consignments"][0]
        assert sum(proceeds) + creator["proceeds"] == 49
        assert (await cash(client, a))[0] + (await cash(client, b))[0] == sum(proceeds)
        await assert_nothing_held(session)
        await assert_books_clean(session)
