"""The market monitor's view: the pure figures (table-driven and property tests) and the
platform-only endpoint on a real database."""

from __future__ import annotations

import statistics
from collections import defaultdict

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from app.auction.monitor import MonitorAward, MonitorBid, dispersion, hhi, report
from tests.auction.helpers import auctioneer, closed, create_auction, placed
from tests.factories import ADMIN, create_org, deposit
from tests.offsets.helpers import assert_books_clean, assert_problem


def bid(
    bid_id: str, bidder: str, price: int, quantity: int, group: str | None = None
) -> MonitorBid:
    return MonitorBid(bid_id, bidder, group, price, quantity)


class TestFigures:
    def test_hhi(self) -> None:
        assert hhi([100]) == 10_000  # a monopoly
        assert hhi([50, 50]) == 5_000
        assert hhi([25, 25, 25, 25]) == 2_500
        assert hhi([1, 2]) == 5_555  # (1/3)² + (2/3)² = 5/9, rounded down
        assert hhi([]) is None
        assert hhi([0, 0]) is None

    def test_a_worked_example(self) -> None:
        bids = [
            bid("1", "A", 120, 300, "G"),
            bid("2", "B", 110, 300, "G"),
            bid("3", "C", 100, 200),
            bid("4", "D", 90, 200),
        ]
        awards = [MonitorAward("1", "A", 300), MonitorAward("2", "B", 300)]
        awards.append(MonitorAward("3", "C", 100))  # cut at the margin
        r = report(bids, awards, reference_price=100)
        assert (r.bidders, r.groups, r.winners) == (4, 3, 3)
        assert (r.bid_quantity, r.sold_quantity) == (1_000, 700)
        c = r.concentration
        # Awarded by bidder 300/300/100 of 700: (9 + 9 + 1) / 49.
        assert c.hhi_awarded_by_bidder == 10_000 * 19 // 49
        # By group: G has 600, C 100: (36 + 1) / 49.
        assert c.hhi_awarded_by_group == 10_000 * 37 // 49
        assert c.hhi_bid_by_bidder == 10_000 * (9 + 9 + 4 + 4) // 100
        assert c.hhi_bid_by_group == 10_000 * (36 + 4 + 4) // 100
        assert (c.top1_share_bps, c.top4_share_bps) == (4_285, 10_000)
        assert [(w.bidder, w.quantity, w.share_bps) for w in c.largest_winners] == [
            ("A", 300, 4_285),
            ("B", 300, 4_285),
            ("C", 100, 1_428),
        ]
        d = r.dispersion
        assert d is not None
        # Per credit: 300 at 120, 300 at 110, 200 at 100, 200 at 90.
        assert (d.min_price, d.max_price, d.mean_price) == (90, 120, 107)
        assert (d.median_price, d.q1_price, d.q3_price, d.interquartile_range) == (
            110,
            100,
            120,
            20,
        )
        credits = [120] * 300 + [110] * 300 + [100] * 200 + [90] * 200
        assert d.std_dev == int(statistics.pstdev(credits))
        assert d.coefficient_of_variation_bps == int(
            10_000 * statistics.pstdev(credits) / statistics.mean(credits)
        )
        assert r.price_spread == 100 - 107
        assert r.margin_share_bps == 2_000  # 200 of 1,000 bid at the clearing price

    def test_nothing_sold(self) -> None:
        r = report([bid("1", "A", 100, 10)], [], reference_price=None)
        c = r.concentration
        assert (c.hhi_awarded_by_bidder, c.top1_share_bps, c.largest_winners) == (None, None, ())
        assert c.hhi_bid_by_bidder == 10_000
        assert (r.reference_price, r.price_spread, r.margin_share_bps) == (None, None, None)

    def test_no_bids(self) -> None:
        r = report([], [], reference_price=None)
        assert r.dispersion is None
        assert (r.bidders, r.winners, r.concentration.hhi_bid_by_group) == (0, 0, None)

    def test_a_group_named_like_a_bidder_is_not_that_bidder(self) -> None:
        bids = [bid("1", "A", 100, 10), bid("2", "B", 100, 10, group="A")]
        assert report(bids, [], reference_price=None).groups == 2


@st.composite
def auctions(draw: st.DrawFn) -> tuple[list[MonitorBid], list[MonitorAward], int | None]:
    n = draw(st.integers(0, 25))
    # Each bidder in one group (or none), as organisations are.
    group_of = {b: draw(st.sampled_from([None, None, "G", "H"])) for b in "ABCDEFG"}
    bidders = [draw(st.sampled_from("ABCDEFG")) for _ in range(n)]
    bids = [
        bid(
            str(i),
            bidder,
            draw(st.integers(1, 10_000)),
            draw(st.integers(1, 5_000)),
            group_of[bidder],
        )
        for i, bidder in enumerate(bidders)
    ]
    awards = []
    for b in bids:
        if draw(st.booleans()):
            awards.append(MonitorAward(b.bid_id, b.bidder, draw(st.integers(1, b.quantity))))
    reference = draw(st.sampled_from([b.price for b in bids])) if awards else None
    return bids, awards, reference


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(auctions())
    def test_bounds(self, case: tuple[list[MonitorBid], list[MonitorAward], int | None]) -> None:
        bids, awards, reference = case
        r = report(bids, awards, reference_price=reference)
        c = r.concentration
        for value in (
            c.hhi_awarded_by_bidder,
            c.hhi_awarded_by_group,
            c.hhi_bid_by_bidder,
            c.hhi_bid_by_group,
        ):
            assert value is None or 0 < value <= 10_000
        if awards:
            assert c.hhi_awarded_by_bidder is not None
            assert c.hhi_awarded_by_group is not None
            # A group holds at least what its largest member holds: never less concentrated.
            assert c.hhi_awarded_by_group >= c.hhi_awarded_by_bidder
            # HHI ≥ 10000 / number of winners (equal shares are the least concentrated).
            assert c.hhi_awarded_by_bidder * r.winners >= 10_000 - r.winners
            assert c.top1_share_bps is not None
            assert c.top4_share_bps is not None
            assert 0 < c.top1_share_bps <= c.top4_share_bps <= 10_000
            assert sum(w.share_bps for w in c.largest_winners) <= 10_000
            assert c.largest_winners[0].share_bps == c.top1_share_bps
            quantities = [w.quantity for w in c.largest_winners]
            assert quantities == sorted(quantities, reverse=True)
            assert r.margin_share_bps is not None
            at_margin = sum(b.quantity for b in bids if b.price == reference)
            assert r.margin_share_bps == at_margin * 10_000 // r.bid_quantity <= 10_000
        else:
            assert c.largest_winners == ()
            assert r.price_spread is None
        assert len(c.largest_winners) == min(4, r.winners)
        assert r.sold_quantity == sum(a.quantity for a in awards)
        assert r.bid_quantity == sum(b.quantity for b in bids)

    @settings(max_examples=300, deadline=None)
    @given(auctions())
    def test_dispersion_matches_the_per_credit_statistics(
        self, case: tuple[list[MonitorBid], list[MonitorAward], int | None]
    ) -> None:
        bids, _, _ = case
        d = dispersion(bids)
        if not bids:
            assert d is None
            return
        assert d is not None
        counts: dict[int, int] = defaultdict(int)
        for b in bids:
            counts[b.price] += b.quantity
        n = sum(counts.values())
        total = sum(p * q for p, q in counts.items())
        assert d.min_price <= d.q1_price <= d.median_price <= d.q3_price <= d.max_price
        assert d.min_price <= d.mean_price <= d.max_price
        assert d.mean_price == total // n
        assert d.interquartile_range == d.q3_price - d.q1_price >= 0
        # The exact population variance, as a fraction: std_dev is its root rounded down.
        n2_var = n * sum(q * p * p for p, q in counts.items()) - total * total
        assert d.std_dev**2 * n * n <= n2_var < (d.std_dev + 1) ** 2 * n * n
        assert d.coefficient_of_variation_bps >= 0
        if len(counts) == 1:
            assert (d.std_dev, d.interquartile_range) == (0, 0)


# --- the endpoint ------------------------------------------------------------------------


class TestEndpoint:
    async def test_platform_only_and_after_the_close(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await auctioneer(client)
        auction = await create_auction(client, seller, 1_000)
        path = f"/v1/auctions/{auction['id']}/monitor"
        orgs = []
        for group in ("Zaibatsu", "Zaibatsu", None):
            org = await create_org(client, group=group) if group else await create_org(client)
            await deposit(client, org, 1_000_000)
            orgs.append(org)
        await placed(client, orgs[0], auction, 120, 500)
        await placed(client, orgs[1], auction, 110, 300)
        await placed(client, orgs[2], auction, 100, 400)

        assert_problem(await client.get(path, headers=ADMIN), 409, "auction_not_cleared")
        await closed(client, seller.org, auction)
        # Not the creator, not a bidder: only the platform (admin scope) sees bidder names.
        assert_problem(
            await client.get(path, headers=seller.org.headers), 403, "insufficient_scope"
        )
        assert_problem(await client.get(path, headers=orgs[0].headers), 403, "insufficient_scope")
        assert (await client.get(path)).status_code == 401
        missing = f"/v1/auctions/{'0' * 8}-0000-4000-8000-{'0' * 12}/monitor"
        assert_problem(await client.get(missing, headers=ADMIN), 404, "auction_not_found")

        r = await client.get(path, headers=ADMIN)
        assert r.status_code == 200, r.text
        m = r.json()
        assert (m["clearing_status"], m["offered_quantity"], m["sold_quantity"]) == (
            "cleared",
            1_000,
            1_000,
        )
        assert (m["bidders"], m["groups"], m["winners"]) == (3, 2, 3)
        c = m["concentration"]
        # Awarded 500 / 300 / 200 of 1,000; the two group members hold 800.
        assert c["hhi_awarded_by_bidder"] == 2_500 + 900 + 400
        assert c["hhi_awarded_by_group"] == 6_400 + 400
        assert (c["top1_share_bps"], c["top4_share_bps"]) == (5_000, 10_000)
        assert [(w["organization_id"], w["share_bps"]) for w in c["largest_winners"]] == [
            (orgs[0].id, 5_000),
            (orgs[1].id, 3_000),
            (orgs[2].id, 2_000),
        ]
        assert m["reference_price"] == 100
        assert m["dispersion"]["min_price"] == 100
        assert m["dispersion"]["max_price"] == 120
        assert m["margin_share_bps"] == 400 * 10_000 // 1_200
        await assert_books_clean(session)
