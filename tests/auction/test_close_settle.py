"""Closing a sealed-bid auction through the API, on a real database: clearing, delivery-versus-
payment settlement (cash to the seller, serial blocks to the winners, every hold released), the
published results (each caller sees only its own allocations), the public audit and its
offline recomputation (``audit.recompute`` and ``tanso auction verify``), and bids racing the
close. The ledger and registry checkers stay clean."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from app.auction.audit import recompute
from app.cli import app as cli
from tests.auction.helpers import (
    Json,
    Seller,
    assert_nothing_held,
    at,
    auctioneer,
    audit_document,
    cash,
    close,
    close_by_clock,
    closed,
    create_auction,
    place,
    placed,
    results,
)
from tests.factories import Org, create_org, deposit
from tests.offsets.helpers import (
    assert_books_clean,
    assert_problem,
    credit_balances,
    holdings,
    new_batch,
)

FUNDS = 1_000_000


async def bidders(client: httpx.AsyncClient, count: int) -> list[Org]:
    orgs = []
    for _ in range(count):
        org = await create_org(client)
        await deposit(client, org, FUNDS)
        orgs.append(org)
    return orgs


def size(ranges: list[list[int]]) -> int:
    return sum(end - start + 1 for start, end in ranges)


async def received(client: httpx.AsyncClient, org: Org) -> dict[str, tuple[int, list[list[int]]]]:
    """batch id -> (available credits, serial ranges) of a winner."""
    out = {}
    for batch_id, h in (await holdings(client, org)).items():
        assert h["held"] == 0
        assert size(h["serial_ranges"]) == h["available"]
        out[batch_id] = (int(h["available"]), h["serial_ranges"])
    return out


def disjoint(*range_lists: list[list[int]]) -> bool:
    serials = [(s, e) for ranges in range_lists for s, e in ranges]
    serials.sort()
    return all(a[1] < b[0] for a, b in itertools.pairwise(serials))


class TestUniform:
    async def test_random_tie_settles_delivery_versus_payment(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        auction = await create_auction(client, seller, 1_000, reserve_price=100)
        a, b, c, d = await bidders(client, 4)
        bid_a = await placed(client, a, auction, 150, 300)
        bid_b = await placed(client, b, auction, 120, 400)
        bid_c = await placed(client, c, auction, 120, 400)  # tied with B at the margin
        bid_d = await placed(client, d, auction, 100, 500)  # loses
        bid_a2 = await placed(client, a, auction, 90, 200)  # below the reserve: loses

        settled = await closed(client, seller.org, auction)
        assert settled["status"] == "settled"
        assert settled["reserve_price"] == 100  # revealed once cleared

        # Uniform: everyone pays 120; B and C share the 700 left at 120 in the seeded order.
        mine = {org.id: (await results(client, org, auction))["allocations"] for org in (a, b, c)}
        assert mine[a.id] == [
            {"bid_id": bid_a["id"], "quantity": 300, "price": 120, "amount": 36_000}
            | {"tie_selected": False}
        ]
        got_b, got_c = mine[b.id][0], mine[c.id][0]
        assert (got_b["bid_id"], got_c["bid_id"]) == (bid_b["id"], bid_c["id"])
        assert sorted([got_b["quantity"], got_c["quantity"]]) == [300, 400]
        assert got_b["tie_selected"]
        assert got_c["tie_selected"]
        published = await results(client, d, auction)
        assert published["allocations"] == []
        assert published["status"] == "settled"
        assert published["clearing_status"] == "cleared"
        assert published["clearing_price"] == 120
        assert (published["min_winning_price"], published["max_winning_price"]) == (120, 120)
        assert (published["offered_quantity"], published["sold_quantity"]) == (1_000, 1_000)
        assert published["bid_quantity"] == 1_800
        assert published["cover_ratio"] == {"numerator": 9, "denominator": 5, "permille": 1_800}
        assert (published["bidders"], published["winners"]) == (4, 3)
        assert published["revenue"] == 120_000
        # Anonymised demand: each price level with what was bid at it or higher.
        assert published["demand_curve"] == [
            {"price": 150, "cumulative_quantity": 300},
            {"price": 120, "cumulative_quantity": 1_100},
            {"price": 100, "cumulative_quantity": 1_600},
            {"price": 90, "cumulative_quantity": 1_800},
        ]
        assert (await results(client, seller.org, auction))["allocations"] == []

        # Cash: each winner down by exactly what it pays, nothing held; the seller paid.
        assert await cash(client, a) == (FUNDS - 36_000, 0)
        assert await cash(client, b) == (FUNDS - 120 * got_b["quantity"], 0)
        assert await cash(client, c) == (FUNDS - 120 * got_c["quantity"], 0)
        assert await cash(client, d) == (FUNDS, 0)
        assert await cash(client, seller.org) == (120_000, 0)

        # Credits: delivered as serial blocks of the batch, the rest back to the creator.
        deliveries = {org.id: await received(client, org) for org in (a, b, c)}
        assert deliveries[a.id][seller.batch_id][0] == 300
        assert deliveries[b.id][seller.batch_id][0] == got_b["quantity"]
        assert deliveries[c.id][seller.batch_id][0] == got_c["quantity"]
        assert await holdings(client, d) == {}
        assert disjoint(*(deliveries[o][seller.batch_id][1] for o in deliveries))
        assert await credit_balances(client, seller.org) == {seller.batch_id: (9_000, 0)}

        # Bid statuses.
        statuses = {}
        for org in (a, b, c, d):
            r = await client.get(f"/v1/auctions/{auction['id']}/bids", headers=org.headers)
            statuses.update({x["id"]: x["status"] for x in r.json()})
        assert statuses == {
            bid_a["id"]: "won",
            bid_b["id"]: "won",
            bid_c["id"]: "won",
            bid_d["id"]: "lost",
            bid_a2["id"]: "lost",
        }

        # The audit: anonymous, complete, and it recomputes.
        doc = await audit_document(client, auction)
        text = json.dumps(doc)
        for org in (a, b, c, d, seller.org):
            assert org.id not in text
        assert [x["bidder"] for x in doc["bids"]] == ["B1", "B2", "B3", "B4", "B1"]
        assert doc["reserve"]["price"] == 100
        assert doc["reserve"]["commitment"] == auction["reserve_commitment"]
        assert doc["seed"]["commitment"] == auction["seed_commitment"]
        assert doc["results"]["clearing_price"] == 120
        assert recompute(doc) == []

        await assert_nothing_held(session)
        await assert_books_clean(session)


class TestPayAsBid:
    async def test_each_pays_its_own_price_from_two_batches(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        second = (await new_batch(client, seller.org, 500)).batch_id
        first = seller.batch_id
        low, high = sorted([first, second])  # supply rows are filled in batch id order
        r = await client.post(
            "/v1/auctions",
            json={
                "title": "Pay-as-bid tender",
                "format": "pay_as_bid",
                "supply": [
                    {"batch_id": first, "quantity": 500},
                    {"batch_id": second, "quantity": 500},
                ],
                "opens_at": at(hours=-1),
                "closes_at": at(hours=2),
            },
            headers=seller.org.headers,
        )
        assert r.status_code == 201, r.text
        auction: Json = r.json()
        a, b, c, d = await bidders(client, 4)
        await placed(client, a, auction, 200, 600)
        await placed(client, b, auction, 180, 300)
        bid_c = await placed(client, c, auction, 150, 300)  # gets the last 100
        await placed(client, d, auction, 100, 200)

        await closed(client, seller.org, auction)
        published = await results(client, c, auction)
        assert published["allocations"] == [
            {
                "bid_id": bid_c["id"],
                "quantity": 100,
                "price": 150,
                "amount": 15_000,
                "tie_selected": False,
            }
        ]
        assert published["clearing_price"] is None
        assert published["revenue"] == 189_000
        assert published["average_price"] == 189
        assert published["median_price"] == 180
        assert (published["min_winning_price"], published["max_winning_price"]) == (150, 200)

        assert await cash(client, a) == (FUNDS - 120_000, 0)
        assert await cash(client, b) == (FUNDS - 54_000, 0)
        assert await cash(client, c) == (FUNDS - 15_000, 0)
        assert await cash(client, d) == (FUNDS, 0)
        assert await cash(client, seller.org) == (189_000, 0)

        # Winners in clearing order, filled from the lower batch id first.
        got_a, got_b, got_c = [await received(client, o) for o in (a, b, c)]
        assert {k: v[0] for k, v in got_a.items()} == {low: 500, high: 100}
        assert {k: v[0] for k, v in got_b.items()} == {high: 300}
        assert {k: v[0] for k, v in got_c.items()} == {high: 100}
        assert disjoint(got_a[high][1], got_b[high][1], got_c[high][1])
        balances = await credit_balances(client, seller.org)
        assert balances[first] == (9_500, 0)
        assert balances.get(second, (0, 0)) == (0, 0)

        assert recompute(await audit_document(client, auction)) == []
        await assert_nothing_held(session)
        await assert_books_clean(session)


class TestCancelled:
    async def test_reserve_above_every_bid_cancels_and_releases_everything(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        auction = await create_auction(client, seller, 1_000, reserve_price=1_000)
        a, b = await bidders(client, 2)
        await placed(client, a, auction, 500, 600)
        await placed(client, b, auction, 900, 300)
        done = await closed(client, seller.org, auction)
        assert done["status"] == "cancelled"
        published = await results(client, a, auction)
        assert published["clearing_status"] == "cancelled"
        assert (published["sold_quantity"], published["winners"]) == (0, 0)
        assert published["allocations"] == []
        assert await cash(client, a) == (FUNDS, 0)
        assert await cash(client, b) == (FUNDS, 0)
        assert await cash(client, seller.org) == (0, 0)
        assert await credit_balances(client, seller.org) == {seller.batch_id: (10_000, 0)}
        doc = await audit_document(client, auction)
        assert doc["reserve"]["price"] == 1_000
        assert {x["allocated"] for x in doc["bids"]} == {0}
        assert recompute(doc) == []
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_no_bids_at_all(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await auctioneer(client, 10_000)
        auction = await create_auction(client, seller, 1_000)
        assert (await closed(client, seller.org, auction))["status"] == "cancelled"
        assert await credit_balances(client, seller.org) == {seller.batch_id: (10_000, 0)}
        assert recompute(await audit_document(client, auction)) == []
        await assert_nothing_held(session)
        await assert_books_clean(session)


class TestRules:
    async def test_who_and_when(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await auctioneer(client)
        other = await auctioneer(client)
        (bidder,) = await bidders(client, 1)
        auction = await create_auction(client, seller)
        await placed(client, bidder, auction, 100, 10)
        base = f"/v1/auctions/{auction['id']}"

        assert_problem(await client.get(f"{base}/audit"), 409, "auction_not_cleared")
        r = await client.get(f"{base}/results", headers=bidder.headers)
        assert_problem(r, 409, "auction_not_cleared")
        assert_problem(await close(client, other.org, auction), 403, "not_auction_creator")
        assert_problem(await close(client, bidder, auction), 403, "insufficient_scope")
        unknown = {"id": "00000000-0000-7000-8000-000000000000"}
        assert_problem(await close(client, seller.org, unknown), 404, "auction_not_found")
        r = await client.get(f"/v1/auctions/{unknown['id']}/audit")
        assert_problem(r, 404, "auction_not_found")

        await closed(client, seller.org, auction)
        assert_problem(await close(client, seller.org, auction), 409, "auction_already_closed")
        assert_problem(await place(client, bidder, auction, 100, 10), 409, "auction_not_open")
        assert (await client.get(f"{base}/results")).status_code == 401
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_an_auction_past_its_close_time_is_settled_by_the_close(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        (bidder,) = await bidders(client, 1)
        auction = await create_auction(client, seller, 1_000)
        await placed(client, bidder, auction, 100, 1_000)
        await close_by_clock(session, auction)
        done = await closed(client, seller.org, auction)
        assert done["status"] == "settled"
        assert datetime.fromisoformat(done["closes_at"]) < datetime.now(UTC)  # left as it was
        assert await cash(client, bidder) == (FUNDS - 100_000, 0)
        await assert_nothing_held(session)
        await assert_books_clean(session)

    async def test_a_scheduled_auction_cannot_be_closed(self, client: httpx.AsyncClient) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, opens_at=at(hours=1), closes_at=at(hours=2))
        assert_problem(await close(client, seller.org, auction), 409, "auction_not_open")


class TestAudit:
    @pytest.fixture
    async def doc(self, client: httpx.AsyncClient) -> Json:
        seller: Seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000, reserve_price=50)
        for org, price in zip(await bidders(client, 3), (100, 80, 80), strict=True):
            await placed(client, org, auction, price, 500)
        await closed(client, seller.org, auction)
        return await audit_document(client, auction)

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            (("bids", 0, "price"), 110),
            (("bids", 1, "quantity"), 400),
            (("bids", 2, "allocated"), 250),
            (("bids", 0, "allocation_price"), 79),
            (("bids", 0, "tie_selected"), True),
            (("seed", "seed"), "0" * 64),
            (("reserve", "price"), 60),
            (("results", "clearing_price"), 81),
            (("results", "bidders"), 2),
        ],
    )
    async def test_any_alteration_is_found(
        self, doc: Json, path: tuple[Any, ...], value: Any
    ) -> None:
        assert recompute(doc) == []
        altered = copy.deepcopy(doc)
        node: Any = altered
        for key in path[:-1]:
            node = node[key]
        assert node[path[-1]] != value
        node[path[-1]] = value
        assert recompute(altered) != []

    async def test_a_dropped_bid_is_found(self, doc: Json) -> None:
        altered = copy.deepcopy(doc)
        del altered["bids"][2]
        assert recompute(altered) != []

    def test_not_a_document(self) -> None:
        assert recompute({"version": "nope"}) != []
        assert recompute([]) != []

    async def test_cli(self, doc: Json, tmp_path: Path) -> None:
        good = tmp_path / "audit.json"
        good.write_text(json.dumps(doc), encoding="utf-8")
        result = CliRunner().invoke(cli, ["auction", "verify", str(good)])
        assert result.exit_code == 0, result.output
        assert "VERIFIED" in result.output
        assert "NOT VERIFIED" not in result.output

        altered = copy.deepcopy(doc)
        altered["bids"][0]["price"] += 1
        bad = tmp_path / "altered.json"
        bad.write_text(json.dumps(altered), encoding="utf-8")
        result = CliRunner().invoke(cli, ["auction", "verify", str(bad)])
        assert result.exit_code == 1, result.output
        assert "FAIL bid commitments" in result.output
        assert "NOT VERIFIED" in result.output

        junk = tmp_path / "junk.json"
        junk.write_text("{not json", encoding="utf-8")
        assert CliRunner().invoke(cli, ["auction", "verify", str(junk)]).exit_code == 2
        missing = tmp_path / "missing.json"
        assert CliRunner().invoke(cli, ["auction", "verify", str(missing)]).exit_code == 2
        empty = tmp_path / "empty.json"
        empty.write_text("{}", encoding="utf-8")
        assert CliRunner().invoke(cli, ["auction", "verify", str(empty)]).exit_code == 2


@pytest.mark.concurrency
class TestConcurrency:
    async def test_bids_racing_the_close_are_either_in_or_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        orgs = await bidders(client, 10)
        await placed(client, orgs[0], auction, 100, 100)  # at least one bid before the close

        async def bid(org: Org, i: int) -> httpx.Response:
            await asyncio.sleep(0.01 * i)  # spread over the close, so some come after it
            return await place(client, org, auction, 100 + i, 150)

        async def close_soon() -> httpx.Response:
            await asyncio.sleep(0.03)
            return await close(client, seller.org, auction)

        outcomes = await asyncio.wait_for(
            asyncio.gather(close_soon(), *(bid(org, i) for i, org in enumerate(orgs))), 120
        )
        closing, *bids = outcomes
        assert closing.status_code == 200, closing.text
        codes = Counter(r.status_code for r in bids)
        assert set(codes) <= {201, 409}, [r.text for r in bids]
        for r in bids:
            if r.status_code == 409:
                assert r.json()["code"] == "auction_not_open"
        accepted = {r.json()["id"] for r in bids if r.status_code == 201}
        doc = await audit_document(client, auction)
        in_audit = {x["bid_id"] for x in doc["bids"]}
        assert accepted <= in_audit
        assert len(in_audit) == len(accepted) + 1
        assert recompute(doc) == []
        paid = 0
        for org in orgs:
            mine = (await results(client, org, auction))["allocations"]
            spent = sum(x["amount"] for x in mine)
            paid += spent
            assert await cash(client, org) == (FUNDS - spent, 0)
        assert await cash(client, seller.org) == (paid, 0)
        await assert_nothing_held(session)
        await assert_books_clean(session)
