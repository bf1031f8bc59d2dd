"""Bidding rules on a real database: what happens when undersubscribed, a bidder cap given as
a share of supply, caps across a corporate group (at bid time, at clearing, in the audit) and
bid amendments (cash, commitments, time priority, caps, races with the close)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auction import commitments
from app.auction.audit import recompute
from app.auction.models import share_cap
from app.auction.schemas import AuctionSeriesCreate
from app.auction.settlement import _active_bids
from app.auction.tasks import create_all_series_auctions
from app.db.session import create_sessionmaker
from app.worker.resources import use_sessionmaker
from tests.auction.helpers import (
    FUNDS,
    Json,
    amend,
    amended,
    assert_nothing_held,
    auction_body,
    auctioneer,
    audit_document,
    bidder,
    cash,
    close_by_clock,
    closed,
    create_auction,
    own_bids,
    place,
    placed,
    results,
)
from tests.auction.test_scheduling import create_series, series_auctions
from tests.factories import create_org
from tests.offsets.helpers import assert_books_clean, assert_problem
from tests.offsets.test_concurrency import wait_for_lock_waiters

# --- undersubscription -------------------------------------------------------------------


class TestUndersubscribed:
    async def test_sell_what_is_bid_sells_every_eligible_bid(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(
            client, seller, 1_000, undersubscribed="sell_what_is_bid", reserve_price=90
        )
        assert auction["undersubscribed"] == "sell_what_is_bid"
        a, b, c = [await bidder(client) for _ in range(3)]
        await placed(client, a, auction, 120, 300)
        await placed(client, b, auction, 100, 200)
        await placed(client, c, auction, 80, 400)  # below the reserve: never wins
        await closed(client, seller.org, auction)
        res = await results(client, a, auction)
        assert res["clearing_status"] == "partial"
        assert (res["sold_quantity"], res["unsold_quantity"]) == (500, 500)
        assert res["clearing_price"] == 100  # the lowest eligible bid
        assert await cash(client, a) == (FUNDS - 300 * 100, 0)
        assert await cash(client, c) == (FUNDS, 0)
        doc = await audit_document(client, auction)
        assert doc["rules"]["undersubscribed"] == "sell_what_is_bid"
        assert recompute(doc) == []
        # The verifier uses the published policy: under `cancel` nothing would have sold.
        doc["rules"]["undersubscribed"] = "cancel"
        assert recompute(doc) != []
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_cancel_is_the_default(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        assert auction["undersubscribed"] == "cancel"
        a = await bidder(client)
        await placed(client, a, auction, 120, 300)
        await closed(client, seller.org, auction)
        assert (await results(client, a, auction))["clearing_status"] == "cancelled"
        doc = await audit_document(client, auction)
        assert doc["rules"]["undersubscribed"] == "cancel"
        assert recompute(doc) == []
        await assert_nothing_held(session)
        await assert_books_clean(session)

    @pytest.mark.parametrize("value", ["partial", "", None, 1, "CANCEL"])
    async def test_unknown_policy_is_422(self, client: httpx.AsyncClient, value: Any) -> None:
        seller = await auctioneer(client)
        r = await client.post(
            "/v1/auctions",
            json=auction_body(seller, undersubscribed=value),
            headers=seller.org.headers,
        )
        assert_problem(r, 422, "validation_error")


# --- a cap as a share of supply ----------------------------------------------------------


class TestShareCap:
    def test_conversion(self) -> None:
        assert share_cap(1_000, 2_500, 1) == 250
        assert share_cap(1_000, 2_550, 10) == 250  # 255 rounded down to a step
        assert share_cap(1_000, 1, 100) == 100  # never below one step
        assert share_cap(1_000, 10_000, 10) == 1_000

    async def test_converted_at_creation_and_enforced(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(
            client, seller, 1_000, quantity_step=10, max_bidder_share_bps=2_550
        )
        assert (auction["max_bidder_quantity"], auction["max_bidder_share_bps"]) == (250, 2_550)
        a = await bidder(client)
        body = assert_problem(
            await place(client, a, auction, 100, 260), 409, "bidder_quantity_exceeded"
        )
        assert body["max_bidder_quantity"] == 250
        await placed(client, a, auction, 100, 250)
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        "fields",
        [
            {"max_bidder_share_bps": 2_500, "max_bidder_quantity": 100},
            {"max_bidder_share_bps": 0},
            {"max_bidder_share_bps": 10_001},
            {"max_bidder_share_bps": -5},
            {"max_bidder_share_bps": "2500"},
            {"max_bidder_share_bps": 25.0},
        ],
    )
    async def test_validation(self, client: httpx.AsyncClient, fields: Json) -> None:
        seller = await auctioneer(client)
        r = await client.post(
            "/v1/auctions", json=auction_body(seller, **fields), headers=seller.org.headers
        )
        assert_problem(r, 422, "validation_error")

    def test_series_template_carries_the_rules(self) -> None:
        body = AuctionSeriesCreate.model_validate(
            {
                "title": "Weekly",
                "format": "uniform",
                "supply": [{"batch_id": str(uuid.uuid4()), "quantity": 1_000}],
                "rules": {"max_bidder_share_bps": 1_000, "undersubscribed": "sell_what_is_bid"},
                "schedule": {"weekdays": [1], "opens_at": "10:00", "closes_at": "11:00"},
            }
        )
        start = datetime(2026, 1, 5, 1, tzinfo=UTC)
        one = body.auction("W", start, start + timedelta(hours=1))
        assert one.undersubscribed == "sell_what_is_bid"
        assert one.bidder_cap(1_000) == 100
        with pytest.raises(ValueError, match="not both"):
            AuctionSeriesCreate.model_validate(
                {
                    **body.model_dump(mode="json"),
                    "rules": {"max_bidder_share_bps": 1_000, "max_bidder_quantity": 10},
                }
            )

    async def test_series_auctions_carry_the_rules(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        seller = await auctioneer(client, 10_000)
        rules = {
            "min_bid_quantity": 10,
            "quantity_step": 10,
            "max_bidder_share_bps": 2_500,
            "undersubscribed": "sell_what_is_bid",
        }
        series = await create_series(client, seller, rules=rules)
        assert series["rules"]["max_bidder_share_bps"] == 2_500
        assert series["rules"]["undersubscribed"] == "sell_what_is_bid"
        with use_sessionmaker(create_sessionmaker(engine)):
            assert await create_all_series_auctions() > 0
        auctions = await series_auctions(session, series["id"])
        # 25% of 100 is 25: 20 in steps of 10.
        assert {(a.max_bidder_quantity, a.max_bidder_share_bps) for a in auctions} == {(20, 2_500)}
        assert {a.undersubscribed for a in auctions} == {"sell_what_is_bid"}


# --- corporate groups --------------------------------------------------------------------


class TestGroupCaps:
    async def test_members_share_the_cap_at_bid_time(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000, max_bidder_quantity=300)
        parent = await bidder(client, group="Keiretsu A")
        subsidiary = await bidder(client, group="Keiretsu A")
        loner = await bidder(client)
        await placed(client, parent, auction, 100, 200)
        body = assert_problem(
            await place(client, subsidiary, auction, 100, 150), 409, "bidder_quantity_exceeded"
        )
        assert body["scope"] == "group"
        assert body["active_quantity"] == 0  # its own figure only: the members' stay private
        await placed(client, subsidiary, auction, 100, 100)
        await placed(client, loner, auction, 100, 300)  # not in the group: a cap of its own
        assert await cash(client, subsidiary) == (FUNDS - 10_000, 10_000)
        # A withdrawal makes room for another member.
        mine = await own_bids(client, parent, auction)
        r = await client.delete(
            f"/v1/auctions/{auction['id']}/bids/{mine[0]['id']}", headers=parent.headers
        )
        assert r.status_code == 204
        await placed(client, subsidiary, auction, 90, 200)
        await assert_books_clean(session)

    async def test_the_group_is_captured_on_the_bid_and_audited(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 600, max_bidder_quantity=300)
        a1 = await bidder(client, group="Mitsu")
        a2 = await bidder(client, group="Mitsu")
        loner = await bidder(client)
        other = await bidder(client, group="Yotsu")
        await placed(client, a1, auction, 130, 200)
        await placed(client, a2, auction, 120, 100)
        await placed(client, loner, auction, 110, 300)
        await placed(client, other, auction, 100, 300)
        # A later change of the organisation's group does not move its bids.
        await session.execute(
            text("UPDATE organizations SET \"group\" = 'Elsewhere' WHERE id = :id"),
            {"id": uuid.UUID(a2.id)},
        )
        await session.commit()
        await closed(client, seller.org, auction)
        doc = await audit_document(client, auction)
        assert [(b["bidder"], b["group"]) for b in doc["bids"]] == [
            ("B1", "G1"),
            ("B2", "G1"),
            ("B3", None),
            ("B4", "G2"),
        ]
        assert "Mitsu" not in str(doc)
        assert recompute(doc) == []
        # The verifier applies the group cap from the published labels: putting the loner in
        # G1 would have cut its 300 (G1 already at its cap), so the document no longer verifies.
        doc["bids"][2]["group"] = "G1"
        problems = recompute(doc)
        assert any("allocations" in p for p in problems), problems
        await assert_books_clean(session)

    async def test_the_close_clears_with_the_captured_group(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """What the close reads for the clearing is the group captured on the bid, not the
        organisation's group now."""
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client, group="Mitsu")
        bid = await placed(client, a, auction, 100, 10)
        await session.execute(
            text("UPDATE organizations SET \"group\" = 'Other' WHERE id = :id"), {"id": a.id}
        )
        await session.commit()
        async with session.begin():
            await session.execute(text("SELECT 1"))  # the close reads inside its transaction
            (entered,), _ = await _active_bids(session, uuid.UUID(auction["id"]))
        assert (entered.id, entered.group) == (bid["id"], "Mitsu")

    async def test_an_audit_without_groups_still_verifies(self, client: httpx.AsyncClient) -> None:
        """Documents published before groups were: no ``group`` key means no group."""
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 100)
        await placed(client, await bidder(client), auction, 100, 100)
        await closed(client, seller.org, auction)
        doc = await audit_document(client, auction)
        for row in doc["bids"]:
            del row["group"]
        assert recompute(doc) == []


@pytest.mark.concurrency
class TestGroupRace:
    async def test_two_members_racing_cannot_both_pass(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        """Both members' bids wait on the group's lock (held here), then run one after the
        other: with per-bidder locks only, both would have passed the group cap."""
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000, max_bidder_quantity=300)
        members = [await bidder(client, group="Race group") for _ in range(2)]
        key = f"auction-group:{auction['id']}:Race group"
        async with engine.connect() as holder:
            tx = await holder.begin()
            await holder.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key}
            )
            pending = [asyncio.ensure_future(place(client, m, auction, 100, 200)) for m in members]
            await wait_for_lock_waiters(engine, 2)
            await tx.commit()
        responses = await asyncio.wait_for(asyncio.gather(*pending), 60)
        assert Counter(r.status_code for r in responses) == {201: 1, 409: 1}
        refused = next(r for r in responses if r.status_code == 409)
        assert refused.json()["code"] == "bidder_quantity_exceeded"
        async with AsyncSession(engine) as session:
            total = await session.scalar(
                text("SELECT sum(quantity) FROM auction_bids WHERE status = 'active'")
            )
            assert total == 200
            await assert_books_clean(session)


# --- amendments --------------------------------------------------------------------------


class TestAmend:
    async def test_price_and_quantity_up(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bid = await placed(client, a, auction, 100, 100)
        await placed(client, await bidder(client), auction, 100, 10)  # placed after it
        new = await amended(client, a, auction, bid, price=120, quantity=150)
        assert (new["id"], new["price"], new["quantity"], new["amount"]) == (
            bid["id"],
            120,
            150,
            18_000,
        )
        assert (new["amendments"], new["status"]) == (1, "active")
        assert new["amended_at"] is not None
        assert new["nonce"] != bid["nonce"]
        assert new["commitment"] == commitments.bid_commitment(
            uuid.UUID(auction["id"]), uuid.UUID(bid["id"]), 120, 150, new["nonce"]
        )
        assert new["submitted_seq"] > bid["submitted_seq"] + 1  # behind the later bid
        assert await cash(client, a) == (FUNDS - 18_000, 18_000)
        (listed,) = await own_bids(client, a, auction)
        assert {k: listed[k] for k in ("price", "quantity", "commitment", "amendments")} == {
            "price": 120,
            "quantity": 150,
            "commitment": new["commitment"],
            "amendments": 1,
        }
        await assert_books_clean(session)

    async def test_a_quantity_decrease_keeps_its_place(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bid = await placed(client, a, auction, 100, 100)
        new = await amended(client, a, auction, bid, quantity=40)
        assert (new["submitted_seq"], new["price"], new["quantity"]) == (
            bid["submitted_seq"],
            100,
            40,
        )
        again = await amended(client, a, auction, new, price=90)  # a price change: to the back
        assert again["submitted_seq"] > bid["submitted_seq"]
        assert again["amendments"] == 2
        assert await cash(client, a) == (FUNDS - 3_600, 3_600)
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        ("change", "winner"),
        [
            ({"quantity": 90}, "first"),  # kept its place: first in line at the tie
            ({"price": 110}, "second"),  # moved to the back, then back to the tied price
        ],
    )
    async def test_time_priority_follows_the_documented_rule(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        change: Json,
        winner: str,
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 100, tie_break="time_priority")
        first, second = await bidder(client), await bidder(client)
        bid = await placed(client, first, auction, 100, 100)
        await placed(client, second, auction, 100, 100)
        bid = await amended(client, first, auction, bid, **change)
        if "price" in change:
            bid = await amended(client, first, auction, bid, price=100)
        await closed(client, seller.org, auction)
        won = {
            name: sum(x["quantity"] for x in (await results(client, org, auction))["allocations"])
            for name, org in (("first", first), ("second", second))
        }
        assert won[winner] == (90 if winner == "first" else 100)
        doc = await audit_document(client, auction)
        row = next(x for x in doc["bids"] if x["bid_id"] == bid["id"])
        assert (row["commitment"], row["nonce"]) == (bid["commitment"], bid["nonce"])
        assert recompute(doc) == []
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_a_shortfall_leaves_the_bid_as_it_was(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client, 20_000)
        bid = await placed(client, a, auction, 100, 100)
        assert_problem(
            await amend(client, a, auction, bid, quantity=201), 409, "insufficient_balance"
        )
        (listed,) = await own_bids(client, a, auction)
        assert {k: listed[k] for k in ("price", "quantity", "commitment", "submitted_seq")} == {
            k: bid[k] for k in ("price", "quantity", "commitment", "submitted_seq")
        }
        assert listed["amendments"] == 0
        assert await cash(client, a) == (10_000, 10_000)
        await amended(client, a, auction, bid, quantity=200)  # exactly the funds: the old hold
        assert await cash(client, a) == (0, 20_000)
        await assert_books_clean(session)

    async def test_caps_leave_the_bid_itself_out(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, max_bidder_quantity=300)
        a = await bidder(client, group="Keiretsu B")
        b = await bidder(client, group="Keiretsu B")
        bid = await placed(client, a, auction, 100, 200)
        await amended(client, a, auction, bid, quantity=300)  # its own 200 not counted twice
        assert_problem(
            await amend(client, a, auction, bid, quantity=310), 409, "bidder_quantity_exceeded"
        )
        await amended(client, a, auction, bid, quantity=250)
        other = await placed(client, b, auction, 100, 50)
        body = assert_problem(
            await amend(client, b, auction, other, quantity=60), 409, "bidder_quantity_exceeded"
        )
        assert body["scope"] == "group"
        await assert_books_clean(session)

    async def test_not_found(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        other_auction = await create_auction(client, seller)
        a, b = await bidder(client), await bidder(client)
        bid = await placed(client, a, auction, 100, 10)
        # Another organisation's bid, an unknown id, the bid under another auction.
        assert_problem(await amend(client, b, auction, bid, price=1), 404, "bid_not_found")
        unknown = {"id": str(uuid.uuid4())}
        assert_problem(await amend(client, a, auction, unknown, price=1), 404, "bid_not_found")
        assert_problem(await amend(client, a, other_auction, bid, price=1), 404, "bid_not_found")
        gone = {"id": str(uuid.uuid4())}
        r = await amend(client, a, gone, bid, price=1)
        assert_problem(r, 404, "auction_not_found")
        assert await cash(client, a) == (FUNDS - 1_000, 1_000)
        await assert_books_clean(session)

    async def test_only_an_active_bid_while_open(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        withdrawn = await placed(client, a, auction, 100, 10)
        r = await client.delete(
            f"/v1/auctions/{auction['id']}/bids/{withdrawn['id']}", headers=a.headers
        )
        assert r.status_code == 204
        assert_problem(await amend(client, a, auction, withdrawn, price=200), 409, "bid_not_active")
        bid = await placed(client, a, auction, 100, 10)
        await close_by_clock(session, auction)
        assert_problem(await amend(client, a, auction, bid, price=200), 409, "auction_not_open")
        assert await cash(client, a) == (FUNDS - 1_000, 1_000)
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            ({}, 422, "validation_error"),
            ({"price": None, "quantity": None}, 422, "validation_error"),
            ({"price": 0}, 422, "validation_error"),
            ({"quantity": -10}, 422, "validation_error"),
            ({"price": "100"}, 422, "validation_error"),
            ({"price": 10**12}, 422, "validation_error"),
            ({"price": 100, "bidder": "me"}, 422, "validation_error"),
            ({"price": 105}, 422, "invalid_bid"),  # off the tick
            ({"quantity": 15}, 422, "invalid_bid"),  # off the step
            ({"price": 40}, 422, "invalid_bid"),  # below the public floor
        ],
    )
    async def test_validation(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        body: Json,
        status: int,
        code: str,
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(
            client, seller, price_tick=10, quantity_step=10, public_floor_price=50
        )
        a = await bidder(client)
        bid = await placed(client, a, auction, 100, 10)
        assert_problem(await amend(client, a, auction, bid, **body), status, code)
        (listed,) = await own_bids(client, a, auction)
        assert (listed["price"], listed["quantity"], listed["amendments"]) == (100, 10, 0)
        await assert_books_clean(session)

    async def test_needs_the_bid_scope(self, client: httpx.AsyncClient) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bid = await placed(client, a, auction, 100, 10)
        reader = await create_org(client, scopes=["read"])
        r = await client.patch(
            f"/v1/auctions/{auction['id']}/bids/{bid['id']}",
            json={"price": 200},
            headers=reader.headers,
        )
        assert_problem(r, 403, "insufficient_scope")


@pytest.mark.concurrency
class TestAmendIdempotency:
    async def test_a_replayed_amendment_applies_once_and_returns_the_same_nonce(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bid = await placed(client, a, auction, 100, 100)
        url = f"/v1/auctions/{auction['id']}/bids/{bid['id']}"
        headers = {**a.headers, "Idempotency-Key": "amend-1"}
        first = await client.patch(url, json={"quantity": 150}, headers=headers)
        again = await client.patch(url, json={"quantity": 150}, headers=headers)
        assert (first.status_code, again.status_code) == (200, 200)
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json() == first.json()
        assert first.json()["amendments"] == 1
        (listed,) = await own_bids(client, a, auction)
        assert (listed["amendments"], listed["quantity"]) == (1, 150)
        assert await cash(client, a) == (FUNDS - 15_000, 15_000)
        other = await client.patch(url, json={"quantity": 160}, headers=headers)
        assert_problem(other, 422, "idempotency_key_reused")
        await assert_books_clean(session)


class TestAmendRace:
    async def test_an_amendment_racing_the_close_is_refused_and_changes_nothing(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bid = await placed(client, a, auction, 100, 10)
        async with engine.connect() as closer:
            tx = await closer.begin()
            await closer.execute(
                text("SELECT 1 FROM auctions WHERE id = :id FOR UPDATE"),
                {"id": uuid.UUID(auction["id"])},
            )
            pending = asyncio.ensure_future(amend(client, a, auction, bid, price=200))
            await wait_for_lock_waiters(engine)
            await closer.execute(
                text("UPDATE auctions SET status = 'closed' WHERE id = :id"),
                {"id": uuid.UUID(auction["id"])},
            )
            await tx.commit()
        r = await asyncio.wait_for(pending, 60)
        assert_problem(r, 409, "auction_not_open")
        (listed,) = await own_bids(client, a, auction)
        assert (listed["price"], listed["commitment"]) == (100, bid["commitment"])
        assert await cash(client, a) == (FUNDS - 1_000, 1_000)
        async with AsyncSession(engine) as session:
            await assert_books_clean(session)

    async def test_amendments_racing_the_close_are_either_in_or_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        orgs = [await bidder(client) for _ in range(6)]
        bids = [await placed(client, org, auction, 100, 100) for org in orgs]

        async def change(i: int) -> httpx.Response:
            await asyncio.sleep(0.01 * i)
            return await amend(client, orgs[i], auction, bids[i], price=110 + 10 * i)

        async def close_soon() -> httpx.Response:
            await asyncio.sleep(0.03)
            return await client.post(
                f"/v1/auctions/{auction['id']}/close", headers=seller.org.headers
            )

        closing, *changes = await asyncio.wait_for(
            asyncio.gather(close_soon(), *(change(i) for i in range(len(orgs)))), 120
        )
        assert closing.status_code == 200, closing.text
        assert {r.status_code for r in changes} <= {200, 409}, [r.text for r in changes]
        doc = await audit_document(client, auction)
        published = {x["bid_id"]: (x["price"], x["commitment"]) for x in doc["bids"]}
        for i, r in enumerate(changes):
            final = r.json() if r.status_code == 200 else bids[i]
            if r.status_code == 409:
                assert r.json()["code"] == "auction_not_open"
            assert published[bids[i]["id"]] == (final["price"], final["commitment"])
        assert recompute(doc) == []
        await assert_nothing_held(session)
        await assert_books_clean(session)
