"""The batched close: the pure splitting rules (``pro_rata``, ``route_payments``) as
properties, and a close of many bids over several lots on the real database: every winner gets
exactly its allocation in serial blocks, every hold is closed, sellers get the revenue, and
the cash moves in one ledger entry per bidder (not one per bid)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction.settlement import pro_rata, route_payments
from tests.auction.helpers import (
    assert_nothing_held,
    auctioneer,
    cash,
    closed,
    create_auction,
    placed,
    results,
)
from tests.factories import create_org, deposit
from tests.offsets.helpers import assert_books_clean, holdings, new_batch


class TestProRata:
    @given(
        st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30).filter(
            lambda w: sum(w) > 0
        ),
        st.data(),
    )
    def test_exact_bounded_and_fair(self, weights: list[int], data: st.DataObject) -> None:
        total = data.draw(st.integers(min_value=0, max_value=sum(weights)))
        shares = pro_rata(total, weights)
        whole = sum(weights)
        assert sum(shares) == total
        for share, weight in zip(shares, weights, strict=True):
            assert 0 <= share <= weight
            # Never more than one unit away from the exact proportion.
            assert abs(share * whole - total * weight) < whole

    def test_largest_remainder_then_earlier_row(self) -> None:
        assert pro_rata(7, [3, 3, 3]) == [3, 2, 2]
        assert pro_rata(70, [100, 30]) == [54, 16]
        assert pro_rata(10, [1, 1, 8]) == [1, 1, 8]
        assert pro_rata(0, [0, 0]) == [0, 0]
        with pytest.raises(ValueError, match="weight"):
            pro_rata(1, [0, 0])


class TestRoutePayments:
    @given(
        st.lists(st.integers(min_value=0, max_value=10**6), max_size=40),
        st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=6),
        st.randoms(),
    )
    def test_every_payment_reaches_exactly_the_receipts(
        self, payments: list[int], weights: list[int], rng: random.Random
    ) -> None:
        total = sum(payments)
        if not any(weights):
            weights = [1, *weights[1:]]
        receipts = pro_rata(total, weights)
        routes = route_payments(payments, receipts)
        assert [sum(a for _, a in pieces) for pieces in routes] == payments
        got: Counter[int] = Counter()
        for pieces in routes:
            for receiver, amount in pieces:
                assert amount > 0
                got[receiver] += amount
        assert [got[i] for i in range(len(receipts))] == receipts
        assert sum(len(p) for p in routes) <= len(payments) + len(receipts)

    def test_sums_must_agree(self) -> None:
        with pytest.raises(ValueError, match="same sum"):
            route_payments([1, 2], [4])


class TestBatchedClose:
    async def test_many_bids_over_several_lots(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client, 10_000)
        second = await new_batch(client, seller.org, 5_000)
        auction = await create_auction(
            client,
            seller,
            supply=[
                {"batch_id": seller.batch_id, "quantity": 700},
                {"batch_id": second.batch_id, "quantity": 500},
            ],
            format="pay_as_bid",
            tie_break="pro_rata",
            quantity_step=10,
            min_bid_quantity=10,
        )
        rng = random.Random(4)
        orgs = []
        for _ in range(6):
            org = await create_org(client)
            await deposit(client, org, 10_000_000)
            orgs.append(org)
        for i in range(36):
            await placed(
                client, orgs[i % 6], auction, rng.randrange(100, 140, 5), rng.randrange(10, 90, 10)
            )

        settled = await closed(client, seller.org, auction)
        assert settled["status"] == "settled"
        published = await results(client, seller.org, auction)
        sold, revenue = published["sold_quantity"], published["revenue"]
        assert sold == 1_200  # demand is above the supply
        assert await cash(client, seller.org) == (revenue, 0)
        # Each winner holds exactly what it was allocated, in serial ranges no one else holds.
        serials: list[tuple[int, int]] = []
        for org in orgs:
            mine = await results(client, org, auction)
            allocated = sum(a["quantity"] for a in mine["allocations"])
            paid = sum(a["amount"] for a in mine["allocations"])
            got = await holdings(client, org)
            assert sum(h["available"] for h in got.values()) == allocated
            assert sum(h["held"] for h in got.values()) == 0
            serials += [(s, e) for h in got.values() for s, e in h["serial_ranges"]]
            assert await cash(client, org) == (10_000_000 - paid, 0)
        serials.sort()
        assert all(a[1] < b[0] for a, b in itertools.pairwise(serials))
        # One settlement entry per bidder, however many bids it had.
        entries = await session.scalar(
            text("SELECT count(*) FROM ledger_entries WHERE kind = 'auction_settlement'")
        )
        await session.rollback()
        assert entries == len(orgs)
        await assert_nothing_held(session)
        await assert_books_clean(session)
