"""One cash hold per bidder per auction (migration 0014), through the API on a real database.

A bidder's active bids share one hold whose remaining is always the sum of their
``price × quantity``, equal to what the bidder has held: placing grows it, withdrawing gives
back exactly that bid's part, amending changes it by the difference, a shortfall changes
nothing, withdrawing the last bid closes it (the next bid takes a new one), and two bidders
never share one. The close settles one hold per bidder: winners pay exactly their allocations,
losers get everything back, every hold ends closed, and the bid list shows won / lost /
withdrawn from the allocations. Bids placed before holds were shared (one hold each) still
close right. Races by one bidder (real commits, separate requests) keep the invariant.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction import commitments
from app.auction.models import AuctionBid, BidStatus
from app.core.ids import new_id
from app.core.time import utc_now
from app.ledger import service as ledger_service
from tests.auction.helpers import (
    FUNDS,
    Json,
    amend,
    amended,
    assert_nothing_held,
    auctioneer,
    bidder,
    cash,
    closed,
    create_auction,
    own_bids,
    place,
    placed,
    results,
)
from tests.factories import Org
from tests.offsets.helpers import assert_books_clean, assert_problem

HoldRow = tuple[uuid.UUID, int, int, str]  # id, amount, remaining, status


async def withdraw(client: httpx.AsyncClient, org: Org, auction: Json, bid: Json) -> None:
    r = await client.delete(f"/v1/auctions/{auction['id']}/bids/{bid['id']}", headers=org.headers)
    assert r.status_code == 204, r.text


async def holds_of_bids(session: AsyncSession, auction: Json, org: Org) -> list[HoldRow]:
    """Every hold any of the bidder's bids in the auction points at (active or not)."""
    rows = (
        await session.execute(
            text(
                "SELECT DISTINCT h.id, h.amount, h.remaining, h.status"
                " FROM auction_bids b JOIN ledger_holds h ON h.id = b.cash_hold_id"
                " WHERE b.auction_id = :a AND b.bidder_organization_id = :o ORDER BY h.id"
            ),
            {"a": uuid.UUID(auction["id"]), "o": uuid.UUID(org.id)},
        )
    ).all()
    await session.rollback()
    return [(r[0], int(r[1]), int(r[2]), str(r[3])) for r in rows]


async def active_holds(
    session: AsyncSession, org: Org, auction: Json | None = None
) -> list[HoldRow]:
    """The organisation's active holds (only auction cash here); with ``auction``, only those
    its bids in that auction point at."""
    sql = (
        "SELECT id, amount, remaining, status FROM ledger_holds"
        " WHERE organization_id = :o AND status = 'active'"
    )
    params: dict[str, Any] = {"o": uuid.UUID(org.id)}
    if auction is not None:
        sql += " AND id IN (SELECT cash_hold_id FROM auction_bids WHERE auction_id = :a)"
        params["a"] = uuid.UUID(auction["id"])
    rows = (await session.execute(text(sql + " ORDER BY id"), params)).all()
    await session.rollback()
    return [(r[0], int(r[1]), int(r[2]), str(r[3])) for r in rows]


async def hold_of_bid(session: AsyncSession, bid: Json) -> uuid.UUID:
    value = await session.scalar(
        text("SELECT cash_hold_id FROM auction_bids WHERE id = :id"), {"id": uuid.UUID(bid["id"])}
    )
    await session.rollback()
    assert value is not None
    return uuid.UUID(str(value))


async def hold_row(session: AsyncSession, hold_id: uuid.UUID) -> HoldRow:
    row = (
        await session.execute(
            text("SELECT id, amount, remaining, status FROM ledger_holds WHERE id = :id"),
            {"id": hold_id},
        )
    ).one()
    await session.rollback()
    return row[0], int(row[1]), int(row[2]), str(row[3])


async def assert_one_hold_for_active_bids(
    client: httpx.AsyncClient,
    session: AsyncSession,
    auction: Json,
    org: Org,
    funds: int = FUNDS,
    elsewhere: int = 0,
) -> HoldRow | None:
    """The invariant: the bidder's active bids all point at ONE active hold whose remaining is
    the sum of their amounts, which is what the bidder has held (besides ``elsewhere``, held
    for other auctions). Returns that hold (None when the bidder has no active bid in the
    auction, and then none of its holds there is active)."""
    bids = [b for b in await own_bids(client, org, auction) if b["status"] == "active"]
    total = sum(b["price"] * b["quantity"] for b in bids)
    assert all(b["amount"] == b["price"] * b["quantity"] for b in bids)
    holds = await active_holds(session, org, auction)
    assert await cash(client, org) == (funds - total - elsewhere, total + elsewhere)
    if not bids:
        assert holds == []
        return None
    hold_ids = {await hold_of_bid(session, b) for b in bids}
    assert len(hold_ids) == 1, hold_ids
    (hold,) = holds
    assert hold[0] in hold_ids
    assert hold[2] == total, (hold, total)
    assert hold[3] == "active"
    return hold


# --- one hold per bidder ------------------------------------------------------------------


class TestOneHold:
    async def test_three_bids_share_one_hold_sized_to_their_sum(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bids = [
            await placed(client, a, auction, 100, 10),
            await placed(client, a, auction, 120, 5),
            await placed(client, a, auction, 90, 20),
        ]
        hold = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert hold is not None
        assert hold[1:] == (3_400, 3_400, "active")  # 1,000 + 600 + 1,800
        assert {await hold_of_bid(session, b) for b in bids} == {hold[0]}
        assert await holds_of_bids(session, auction, a) == [hold]
        assert await cash(client, a) == (FUNDS - 3_400, 3_400)
        await assert_books_clean(session)

    async def test_withdrawing_one_bid_gives_back_exactly_its_amount(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        await placed(client, a, auction, 100, 10)
        middle = await placed(client, a, auction, 120, 5)
        await placed(client, a, auction, 90, 20)
        before = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert before is not None

        await withdraw(client, a, auction, middle)

        after = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert after is not None
        assert after[0] == before[0]
        assert after[2] == before[2] - 600 == 2_800
        assert after[1] == 3_400  # a partial release leaves the hold's amount as it was
        assert await cash(client, a) == (FUNDS - 2_800, 2_800)
        statuses = {b["id"]: b["status"] for b in await own_bids(client, a, auction)}
        assert statuses[middle["id"]] == "withdrawn"
        await assert_books_clean(session)

    async def test_amending_up_and_down_changes_it_by_the_difference(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        first = await placed(client, a, auction, 100, 10)  # 1,000
        second = await placed(client, a, auction, 90, 20)  # 1,800
        hold = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert hold is not None
        assert hold[2] == 2_800

        await amended(client, a, auction, first, price=130)  # +300
        up = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert up is not None
        assert (up[0], up[2]) == (hold[0], 3_100)

        await amended(client, a, auction, second, quantity=10)  # −900
        down = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert down is not None
        assert (down[0], down[2]) == (hold[0], 2_200)

        await amended(client, a, auction, second, price=100, quantity=9)  # 900 → 900: no change
        same = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert same is not None
        assert (same[0], same[2]) == (hold[0], 2_200)

        await amended(client, a, auction, first, price=50, quantity=40)  # 1,300 → 2,000: +700
        last = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert last is not None
        assert (last[0], last[2]) == (hold[0], 2_900)
        await assert_books_clean(session)

    async def test_an_amendment_beyond_the_cash_is_409_and_changes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client, 5_000)
        first = await placed(client, a, auction, 100, 10)  # 1,000
        await placed(client, a, auction, 100, 20)  # 2,000: 2,000 left available
        bids_before = await own_bids(client, a, auction)
        hold_before = await assert_one_hold_for_active_bids(client, session, auction, a, 5_000)
        entries = await _count(session, "ledger_entries")

        # 1,000 → 3,001: 2,001 more, one more than available.
        assert_problem(
            await amend(client, a, auction, first, price=3_001, quantity=1),
            409,
            "insufficient_balance",
        )
        assert await own_bids(client, a, auction) == bids_before
        hold_after = await assert_one_hold_for_active_bids(client, session, auction, a, 5_000)
        assert hold_after == hold_before
        assert await cash(client, a) == (2_000, 3_000)
        assert await _count(session, "ledger_entries") == entries

        # Exactly the available cash more is accepted.
        await amended(client, a, auction, first, price=3_000, quantity=1)
        assert await cash(client, a) == (0, 5_000)
        await assert_one_hold_for_active_bids(client, session, auction, a, 5_000)
        await assert_books_clean(session)

    async def test_withdrawing_the_last_bid_closes_the_hold_and_the_next_bid_takes_a_new_one(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        one = await placed(client, a, auction, 100, 10)
        two = await placed(client, a, auction, 110, 10)
        old = await hold_of_bid(session, one)
        await withdraw(client, a, auction, two)
        await withdraw(client, a, auction, one)

        assert await hold_row(session, old) == (old, 2_100, 0, "closed")
        assert await active_holds(session, a) == []
        assert await cash(client, a) == (FUNDS, 0)

        three = await placed(client, a, auction, 105, 4)
        new = await hold_of_bid(session, three)
        assert new != old
        assert await hold_row(session, new) == (new, 420, 420, "active")
        assert await hold_row(session, old) == (old, 2_100, 0, "closed")
        await assert_one_hold_for_active_bids(client, session, auction, a)
        await assert_books_clean(session)

    async def test_two_bidders_never_share_a_hold(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        other_auction = await create_auction(client, await auctioneer(client))
        a, b = await bidder(client), await bidder(client)
        for org in (a, b, a, b):
            await placed(client, org, auction, 100, 10)
        await placed(client, a, other_auction, 100, 10)  # a's hold in another auction
        hold_a = await assert_one_hold_for_active_bids(client, session, auction, a, elsewhere=1_000)
        hold_b = await assert_one_hold_for_active_bids(client, session, auction, b)
        assert hold_a is None or hold_b is None or hold_a[0] != hold_b[0]
        owners = (
            await session.execute(
                text(
                    "SELECT b.cash_hold_id, count(DISTINCT b.bidder_organization_id),"
                    " count(DISTINCT b.auction_id), min(h.organization_id::text),"
                    " min(b.bidder_organization_id::text)"
                    " FROM auction_bids b JOIN ledger_holds h ON h.id = b.cash_hold_id"
                    " GROUP BY b.cash_hold_id"
                )
            )
        ).all()
        await session.rollback()
        assert len(owners) == 3  # a and b here, a in the other auction
        for _, bidders_count, auctions_count, owner, bidder_id in owners:
            assert (bidders_count, auctions_count) == (1, 1)
            assert owner == bidder_id  # the hold is the bidder's own
        await assert_books_clean(session)


async def _count(session: AsyncSession, table: str) -> int:
    value = await session.scalar(text(f"SELECT count(*) FROM {table}"))
    await session.rollback()
    return int(value or 0)


# --- the close ------------------------------------------------------------------------------


async def assert_closed_right(
    client: httpx.AsyncClient,
    session: AsyncSession,
    auction: Json,
    bidders: list[Org],
    seller: Org,
    withdrawn: set[str],
) -> dict[str, dict[str, str]]:
    """After the close: every hold of the auction's bids is closed, each bidder paid exactly
    its allocations and got the rest back, the bid list's won/lost matches the allocations
    (withdrawn bids stay withdrawn), the seller got the revenue, the books are clean.
    Returns bidder id → bid id → shown status."""
    open_holds = await session.scalar(
        text(
            "SELECT count(*) FROM ledger_holds h WHERE h.status <> 'closed' AND h.id IN"
            " (SELECT cash_hold_id FROM auction_bids WHERE auction_id = :a)"
        ),
        {"a": uuid.UUID(auction["id"])},
    )
    await session.rollback()
    assert open_holds == 0
    revenue = 0
    shown: dict[str, dict[str, str]] = {}
    for org in bidders:
        result = await results(client, org, auction)
        allocations = {a["bid_id"]: a for a in result["allocations"]}
        paid = sum(a["amount"] for a in allocations.values())
        revenue += paid
        assert await cash(client, org) == (FUNDS - paid, 0)
        statuses = {b["id"]: b["status"] for b in await own_bids(client, org, auction)}
        for bid_id, status in statuses.items():
            if bid_id in withdrawn:
                assert status == "withdrawn", (bid_id, status)
            else:
                assert status == ("won" if bid_id in allocations else "lost"), (bid_id, status)
        assert set(allocations) <= set(statuses)
        shown[org.id] = statuses
    assert revenue == result["revenue"]
    assert await cash(client, seller) == (revenue, 0)
    stored = await session.scalar(
        text(
            "SELECT count(*) FROM auction_bids WHERE auction_id = :a"
            " AND status NOT IN ('active', 'withdrawn')"
        ),
        {"a": uuid.UUID(auction["id"])},
    )
    await session.rollback()
    assert stored == 0  # outcomes are derived, never stored
    await assert_nothing_held(session)
    await assert_books_clean(session)
    return shown


class TestClose:
    async def test_one_hold_per_bidder_settles_exactly(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        a, b, c = await bidder(client), await bidder(client), await bidder(client)
        a1 = await placed(client, a, auction, 150, 200)
        a2 = await placed(client, a, auction, 140, 300)
        b1 = await placed(client, b, auction, 130, 400)
        b2 = await placed(client, b, auction, 90, 100)
        b3 = await placed(client, b, auction, 85, 200)  # below the clearing price: lost
        gone = await placed(client, b, auction, 200, 50)
        await withdraw(client, b, auction, gone)
        bumped = await placed(client, b, auction, 80, 10)
        await amended(client, b, auction, bumped, price=95, quantity=10)  # amended, then lost?
        c1 = await placed(client, c, auction, 80, 500)
        for org in (a, b, c):
            await assert_one_hold_for_active_bids(client, session, auction, org)

        await closed(client, seller.org, auction)

        shown = await assert_closed_right(
            client, session, auction, [a, b, c], seller.org, {gone["id"]}
        )
        assert shown[a.id] == {a1["id"]: "won", a2["id"]: "won"}
        assert shown[b.id][b1["id"]] == "won"
        assert shown[b.id][b3["id"]] == "lost"
        assert shown[b.id][gone["id"]] == "withdrawn"
        assert shown[c.id] == {c1["id"]: "lost"}
        assert "won" in shown[b.id].values()
        assert "lost" in shown[b.id].values()
        assert b2["id"] in shown[b.id]
        # C won nothing: its whole hold went back.
        assert await cash(client, c) == (FUNDS, 0)

    async def test_a_cancelled_close_releases_every_hold_and_shows_lost(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000, reserve_price=500)
        a = await bidder(client)
        bids = [await placed(client, a, auction, 100, 10), await placed(client, a, auction, 90, 5)]
        gone = await placed(client, a, auction, 80, 5)
        await withdraw(client, a, auction, gone)
        after = await closed(client, seller.org, auction)
        assert after["status"] == "cancelled"
        shown = await assert_closed_right(client, session, auction, [a], seller.org, {gone["id"]})
        assert shown[a.id] == {
            bids[0]["id"]: "lost",
            bids[1]["id"]: "lost",
            gone["id"]: "withdrawn",
        }
        assert await cash(client, a) == (FUNDS, 0)


# --- bids placed before holds were shared ---------------------------------------------------


async def legacy_bid(
    session: AsyncSession, auction: Json, org: Org, price: int, quantity: int
) -> uuid.UUID:
    """A bid as the code before migration 0014 placed it: its own hold for price × quantity."""
    auction_id, bidder_id, bid_id = uuid.UUID(auction["id"]), uuid.UUID(org.id), new_id()
    hold_id = await ledger_service.reserve(
        session,
        bidder_id,
        ledger_service.CASH,
        price * quantity,
        reference=f"auction:{auction_id}:bid:{bid_id}",
    )
    nonce = commitments.new_nonce()
    now = utc_now()
    session.add(
        AuctionBid(
            id=bid_id,
            auction_id=auction_id,
            bidder_organization_id=bidder_id,
            price=price,
            quantity=quantity,
            status=BidStatus.active,
            cash_hold_id=hold_id,
            commitment=commitments.bid_commitment(auction_id, bid_id, price, quantity, nonce),
            nonce=nonce,
            group=None,
            amendments=0,
            created_at=now,
            updated_at=now,
        )
    )
    await session.commit()
    return bid_id


class TestLegacyHolds:
    async def test_bids_with_a_hold_each_still_close(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        a, b = await bidder(client), await bidder(client)
        a_bids = [
            await legacy_bid(session, auction, a, 150, 300),
            await legacy_bid(session, auction, a, 120, 300),
            await legacy_bid(session, auction, a, 50, 200),
        ]
        b_bids = [
            await legacy_bid(session, auction, b, 130, 300),
            await legacy_bid(session, auction, b, 60, 100),  # fills the supply exactly
            await legacy_bid(session, auction, b, 40, 100),
        ]
        assert len({h[0] for h in await active_holds(session, a)}) == 3
        assert await cash(client, a) == (FUNDS - 91_000, 91_000)
        await assert_books_clean(session)

        await closed(client, seller.org, auction)

        shown = await assert_closed_right(client, session, auction, [a, b], seller.org, set())
        assert shown[a.id][str(a_bids[0])] == "won"
        assert shown[a.id][str(a_bids[2])] == "lost"
        assert shown[b.id] == {
            str(b_bids[0]): "won",
            str(b_bids[1]): "won",
            str(b_bids[2]): "lost",
        }
        for bid_id in a_bids + b_bids:
            hold = await hold_of_bid(session, {"id": str(bid_id)})
            assert (await hold_row(session, hold))[2:] == (0, "closed")

    async def test_new_bids_withdrawals_and_amendments_on_legacy_bids(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """A legacy bidder's new bid grows one of its holds; withdrawing or amending a legacy
        bid touches only its own hold; the held balance always equals the active bids' sum
        and the close settles every hold."""
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        a = await bidder(client)
        first = {"id": str(await legacy_bid(session, auction, a, 150, 300))}
        second = {"id": str(await legacy_bid(session, auction, a, 120, 300))}
        third = await placed(client, a, auction, 100, 100)
        assert await cash(client, a) == (FUNDS - 91_000, 91_000)
        await withdraw(client, a, auction, first)
        assert await hold_row(session, await hold_of_bid(session, first)) == (
            await hold_of_bid(session, first),
            45_000,
            0,
            "closed",
        )
        await amended(client, a, auction, second, quantity=200)  # −12,000 from its own hold
        await amended(client, a, auction, third, quantity=150)  # +5,000
        active = [b for b in await own_bids(client, a, auction) if b["status"] == "active"]
        total = sum(b["amount"] for b in active)
        assert total == 24_000 + 15_000
        assert await cash(client, a) == (FUNDS - total, total)
        assert sum(h[2] for h in await active_holds(session, a)) == total
        await assert_books_clean(session)

        await closed(client, seller.org, auction)
        await assert_closed_right(client, session, auction, [a], seller.org, {first["id"]})


# --- races by one bidder --------------------------------------------------------------------


@pytest.mark.concurrency
class TestRaces:
    async def test_ten_bids_at_once_by_one_bidder(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        responses = await asyncio.wait_for(
            asyncio.gather(*(place(client, a, auction, 100 + i, 10 + i) for i in range(10))), 120
        )
        assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
        accepted = sum(r.json()["amount"] for r in responses)
        hold = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert hold is not None
        assert hold[2] == accepted
        assert await _count(session, "auction_bids") == 10
        await assert_books_clean(session)

    async def test_ten_bids_at_once_with_cash_for_some(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        funds = 6_500
        a = await bidder(client, funds)
        # Amounts 1,000 … 1,900: whichever commit first, the rest are refused whole.
        responses = await asyncio.wait_for(
            asyncio.gather(*(place(client, a, auction, 100 + 10 * i, 10) for i in range(10))), 120
        )
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {201, 409}, [r.text for r in responses]
        # Any 4 of 1,000 … 1,900 fit in 6,500; all 10 (14,500) cannot.
        assert codes[201] >= 4, codes
        assert codes[409] >= 1, codes
        assert all(
            r.json()["code"] == "insufficient_balance" for r in responses if r.status_code == 409
        )
        accepted = [r.json() for r in responses if r.status_code == 201]
        total = sum(b["amount"] for b in accepted)
        assert total <= funds
        # Nothing refused was half-applied: no row, no hold growth, no held cash for it.
        assert await _count(session, "auction_bids") == len(accepted)
        assert {b["id"] for b in await own_bids(client, a, auction)} == {b["id"] for b in accepted}
        hold = await assert_one_hold_for_active_bids(client, session, auction, a, funds)
        assert hold is not None
        assert hold[2] == total
        # Every refused bid was refused for want of cash: none of them would have fit.
        refused = [(100 + 10 * i) * 10 for i, r in enumerate(responses) if r.status_code == 409]
        assert all(amount > funds - total for amount in refused)
        await assert_books_clean(session)

    async def test_places_withdrawals_and_amendments_at_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller)
        a = await bidder(client)
        bids = [await placed(client, a, auction, 100, 10 * (i + 1)) for i in range(6)]

        async def go(i: int) -> int:
            if i < 3:
                r = await client.delete(
                    f"/v1/auctions/{auction['id']}/bids/{bids[i]['id']}", headers=a.headers
                )
            elif i < 6:
                r = await amend(client, a, auction, bids[i], price=90 + 10 * i)
            else:
                r = await place(client, a, auction, 110, i)
            return r.status_code

        codes = await asyncio.wait_for(asyncio.gather(*(go(i) for i in range(12))), 120)
        assert codes == [204] * 3 + [200] * 3 + [201] * 6
        hold = await assert_one_hold_for_active_bids(client, session, auction, a)
        assert hold is not None
        await assert_books_clean(session)

        # And every one of them withdrawn at once: the hold closes, nothing held.
        active = [b for b in await own_bids(client, a, auction) if b["status"] == "active"]
        assert len(active) == 9
        await asyncio.wait_for(
            asyncio.gather(*(withdraw(client, a, auction, b) for b in active)), 120
        )
        assert (await hold_row(session, hold[0]))[2:] == (0, "closed")
        assert await assert_one_hold_for_active_bids(client, session, auction, a) is None
        await assert_books_clean(session)
