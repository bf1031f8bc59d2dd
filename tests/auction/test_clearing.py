"""The pure auction clearing (``app.auction.clearing``): no database.

Table-driven cases from the reference rules (``reference/auction-rules.md``), then property
tests against the invariants and against a slow, obviously correct reference clearing.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.auction.clearing import (
    AuctionRules,
    Bid,
    CapTrim,
    ClearingFormat,
    ClearingResult,
    ClearingStatus,
    DemandPoint,
    TieBreak,
    Undersubscribed,
    clear,
    tie_order_key,
    validate_bid,
)

SEED = b"published-seed-2025-05"
UNIFORM = ClearingFormat.uniform
PAB = ClearingFormat.pay_as_bid


def bid(
    bid_id: str,
    price: int,
    quantity: int,
    seq: int,
    bidder: str | None = None,
    group: str | None = None,
) -> Bid:
    return Bid(bid_id, bidder or f"bidder-{bid_id}", price, quantity, seq, group)


def rules(**overrides: Any) -> AuctionRules:
    values: dict[str, Any] = {
        "format": UNIFORM,
        "supply": 1_000,
        "tie_break": TieBreak.random,
        "seed": SEED,
    }
    values.update(overrides)
    return AuctionRules(**values)


def seeded(ids: Sequence[str], seed: bytes = SEED) -> list[str]:
    """The documented random order, computed here independently: SHA-256(seed || id)."""
    return sorted(ids, key=lambda i: hashlib.sha256(seed + i.encode()).digest())


def allocated(result: ClearingResult) -> dict[str, int]:
    return {a.bid_id: a.quantity for a in result.allocations}


# --- table-driven cases from the reference rules -----------------------------------------


@dataclass(frozen=True)
class Case:
    rules: AuctionRules
    bids: list[Bid]
    status: ClearingStatus
    allocations: dict[str, int]
    clearing_price: int | None = None
    tie_selected: frozenset[str] = frozenset()
    paid: dict[str, int] = field(default_factory=dict)  # bid id -> unit price, when not uniform


def _eu_ets_random_tie() -> Case:
    # EU Art. 7 / EEX: lots of 500; the bids at the clearing price are ordered at random by an
    # algorithm fixed in advance; the last one reached gets the remainder.
    bids = [
        bid("a", 8_450, 1_000, 1),
        bid("b", 8_400, 1_000, 2),
        bid("c", 8_400, 1_000, 3),
        bid("d", 8_400, 1_000, 4),
        bid("e", 8_300, 5_000, 5),
    ]
    first, second, _third = seeded(["b", "c", "d"])
    return Case(
        rules=rules(supply=2_500, quantity_step=500, min_bid_quantity=500),
        bids=bids,
        status=ClearingStatus.cleared,
        allocations={"a": 1_000, first: 1_000, second: 500},
        clearing_price=8_400,
        tie_selected=frozenset({first, second}),
    )


def _quebec_pro_rata() -> Case:
    # Q-2, r. 46.1 s. 61.5: share = unmet / total unmet x available, rounded down to a lot;
    # the lots left over go one at a time in random-number order.
    # Remaining 7,000 over 12,000 tied: 1,750 -> 1,000; 2,333 -> 2,000; 2,916 -> 2,000;
    # 2,000 left = 2 lots for the first two tied bids in the seeded order.
    bids = [
        bid("top", 1_500, 3_000, 1),
        bid("q1", 1_400, 3_000, 2),
        bid("q2", 1_400, 4_000, 3),
        bid("q3", 1_400, 5_000, 4),
        bid("low", 1_300, 9_000, 5),
    ]
    base = {"q1": 1_000, "q2": 2_000, "q3": 2_000}
    for lucky in seeded(["q1", "q2", "q3"])[:2]:
        base[lucky] += 1_000
    return Case(
        rules=rules(
            supply=10_000, quantity_step=1_000, min_bid_quantity=1_000, tie_break="pro_rata"
        ),
        bids=bids,
        status=ClearingStatus.cleared,
        allocations={"top": 3_000, **base},
        clearing_price=1_400,
        tie_selected=frozenset(base),
    )


def _j_credit_pay_as_bid() -> Case:
    # J-Credit tender (Round 14 shape): pay-as-bid, at least 1,000 t in 1-t steps, an
    # undisclosed minimum price; the bid below it fails even though supply is left over.
    bids = [
        bid("r1", 3_400, 50_000, 1),
        bid("r2", 3_300, 100_000, 2),
        bid("r3", 3_210, 60_000, 3),
        bid("r4", 3_100, 80_000, 4),
        bid("r5", 2_700, 50_000, 5),
    ]
    return Case(
        rules=rules(
            format=PAB,
            supply=256_204,
            min_bid_quantity=1_000,
            reserve_price=2_800,
            tie_break="time_priority",
        ),
        bids=bids,
        status=ClearingStatus.cleared,
        allocations={"r1": 50_000, "r2": 100_000, "r3": 60_000, "r4": 46_204},
        paid={"r1": 3_400, "r2": 3_300, "r3": 3_210, "r4": 3_100},
    )


def _rggi_uniform_lowest_accepted() -> Case:
    # RGGI / WCI s. 52: everyone pays the lowest accepted bid, not the reserve.
    bids = [
        bid("x", 450, 3_000, 1),
        bid("y", 420, 4_000, 2),
        bid("z", 395, 5_000, 3),
        bid("w", 300, 9_000, 4),
    ]
    return Case(
        rules=rules(supply=10_000, reserve_price=262, quantity_step=1_000),
        bids=bids,
        status=ClearingStatus.cleared,
        allocations={"x": 3_000, "y": 4_000, "z": 3_000},
        clearing_price=395,
        # z is cut to what is left, but it was not tied with anyone: not "tie-selected".
    )


def _exact_fill_no_tie() -> Case:
    # Cumulative demand reaches the supply exactly at a level: no sharing, no tie flags.
    bids = [bid("x", 500, 600, 1), bid("y", 480, 200, 2), bid("z", 480, 200, 3)]
    return Case(
        rules=rules(supply=1_000),
        bids=[*bids, bid("v", 470, 500, 4)],
        status=ClearingStatus.cleared,
        allocations={"x": 600, "y": 200, "z": 200},
        clearing_price=480,
    )


def _undersubscribed(policy: str) -> Case:
    bids = [
        bid("a", 2_000, 4_000, 1),
        bid("b", 1_900, 2_000, 2),
        bid("under", 1_000, 3_000, 3),  # below the reserve: never counts
    ]
    sells = policy == "sell_what_is_bid"
    return Case(
        rules=rules(supply=10_000, reserve_price=1_500, undersubscribed=policy),
        bids=bids,
        status=ClearingStatus.partial if sells else ClearingStatus.cancelled,
        allocations={"a": 4_000, "b": 2_000} if sells else {},
        clearing_price=1_900 if sells else None,  # UK ETS / NZ: the lowest eligible bid
    )


def _time_priority() -> Case:
    # J-Blue Credit: on equal prices the earlier application ranks first.
    bids = [bid("late", 900, 500, 30), bid("early", 900, 500, 10), bid("mid", 900, 500, 20)]
    return Case(
        rules=rules(format=PAB, supply=800, tie_break="time_priority"),
        bids=bids,
        status=ClearingStatus.cleared,
        allocations={"early": 500, "mid": 300},
        tie_selected=frozenset({"early", "mid"}),
        paid={"early": 900, "mid": 900},
    )


def _group_cap() -> Case:
    # EU Art. 57 / WCI: one limit for a corporate group; QC s. 52: cut the lowest-priced lots.
    bids = [
        bid("x1", 100, 2_000, 1, bidder="X", group="G"),
        bid("y1", 95, 2_000, 2, bidder="Y", group="G"),
        bid("x2", 90, 2_000, 3, bidder="X", group="G"),
        bid("z1", 80, 5_000, 4, bidder="Z"),
        bid("q1", 70, 1_000, 5, bidder="Q"),
    ]
    return Case(
        rules=rules(
            supply=20_000,
            max_bidder_quantity=3_000,
            quantity_step=1_000,
            undersubscribed="sell_what_is_bid",
        ),
        bids=bids,
        status=ClearingStatus.partial,
        allocations={"x1": 2_000, "y1": 1_000, "z1": 3_000, "q1": 1_000},
        clearing_price=70,
    )


CASES = {
    "eu-ets-random-tie": _eu_ets_random_tie(),
    "quebec-pro-rata": _quebec_pro_rata(),
    "j-credit-pay-as-bid-undisclosed-reserve": _j_credit_pay_as_bid(),
    "rggi-uniform-lowest-accepted-bid": _rggi_uniform_lowest_accepted(),
    "exact-fill-no-tie": _exact_fill_no_tie(),
    "undersubscribed-cancel": _undersubscribed("cancel"),
    "undersubscribed-sell-what-is-bid": _undersubscribed("sell_what_is_bid"),
    "j-blue-time-priority": _time_priority(),
    "group-cap": _group_cap(),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_reference_case(case: Case) -> None:
    result = clear(case.rules, case.bids)

    assert result.status == case.status
    assert allocated(result) == case.allocations
    assert result.clearing_price == case.clearing_price
    assert {a.bid_id for a in result.allocations if a.tie_selected} == case.tie_selected
    by_id = {b.id: b for b in case.bids}
    for a in result.allocations:
        expected = case.paid.get(a.bid_id, case.clearing_price)
        assert a.price == expected
        assert a.amount == a.price * a.quantity
        assert a.bidder == by_id[a.bid_id].bidder
    assert result.sold_quantity == sum(case.allocations.values())
    assert result.unsold_quantity == case.rules.supply - result.sold_quantity
    assert invariant_failures(case.rules, case.bids, result) == []


def test_eu_ets_tie_order_follows_the_published_seed() -> None:
    case = _eu_ets_random_tie()
    other = seeded(["b", "c", "d"], b"another seed")[:2]
    result = clear(rules(supply=2_500, quantity_step=500, seed=b"another seed"), case.bids)

    assert set(allocated(result)) == {"a", *other}
    assert tie_order_key(SEED, "b") == hashlib.sha256(SEED + b"b").digest()


def test_j_credit_published_figures() -> None:
    # Average (volume-weighted, rounded down), median of the winning bid prices, bidders,
    # winners, bid volume and cover ratio, as the Secretariat publishes them.
    case = _j_credit_pay_as_bid()
    result = clear(case.rules, case.bids)

    revenue = 3_400 * 50_000 + 3_300 * 100_000 + 3_210 * 60_000 + 3_100 * 46_204
    assert result.revenue == revenue
    assert result.average_price == revenue // 256_204
    assert result.median_price == (3_300 + 3_210) // 2  # four winners: mean of the middle two
    assert (result.min_price, result.max_price) == (3_100, 3_400)
    assert (result.bidders, result.winners) == (5, 4)
    assert result.bid_quantity == 340_000
    assert result.eligible_quantity == 290_000
    assert result.cover_ratio == (85_000, 64_051)
    assert result.cover_ratio_permille == 1_327
    assert result.marginal_fill == (46_204, 80_000)
    assert list(result.demand_curve) == [
        DemandPoint(3_400, 50_000),
        DemandPoint(3_300, 150_000),
        DemandPoint(3_210, 210_000),
        DemandPoint(3_100, 290_000),
        DemandPoint(2_700, 340_000),
    ]


def test_kashiwazaki_lot_fails_when_every_bid_is_under_the_reserve() -> None:
    # Round 14: 2 bids for 6,000 t against 3,517 t offered, yet 不調: nothing sold, even when
    # the rules would sell what is bid.
    bids = [bid("k1", 2_000, 3_000, 1), bid("k2", 1_900, 3_000, 2)]
    result = clear(
        rules(supply=3_517, reserve_price=2_500, undersubscribed="sell_what_is_bid"), bids
    )

    assert result.status == ClearingStatus.cancelled
    assert (result.sold_quantity, result.unsold_quantity) == (0, 3_517)
    assert len(result.allocations) == 0
    assert result.bid_quantity == 6_000
    assert result.eligible_quantity == 0
    assert result.cover_ratio == (6_000, 3_517)
    assert result.average_price is None
    assert result.median_price is None


def test_uniform_figures_and_median_with_an_odd_count() -> None:
    bids = [bid("a", 300, 100, 1), bid("b", 200, 100, 2), bid("c", 100, 100, 3)]
    pab = clear(rules(format=PAB, supply=300, tie_break="time_priority"), bids)
    uni = clear(rules(supply=250, tie_break="time_priority"), bids)

    assert (pab.median_price, pab.average_price, pab.revenue) == (200, 200, 60_000)
    assert uni.clearing_price == uni.median_price == uni.average_price == 100
    assert uni.revenue == 250 * 100
    assert uni.cover_ratio == (6, 5)
    assert uni.cover_ratio_permille == 1_200


def test_reserve_filters_but_never_sets_the_price() -> None:
    bids = [bid("a", 5_000, 500, 1), bid("b", 3_000, 500, 2)]
    result = clear(
        rules(supply=2_000, reserve_price=2_000, undersubscribed="sell_what_is_bid"), bids
    )

    assert result.clearing_price == 3_000  # the lowest accepted bid, above the reserve
    assert result.status == ClearingStatus.partial
    assert result.unsold_quantity == 1_000


def test_per_bidder_cap_cuts_lowest_priced_lots_first_and_reports_them() -> None:
    bids = [
        bid("a1", 100, 600, 1, bidder="A"),
        bid("a2", 90, 600, 2, bidder="A"),
        bid("a3", 90, 600, 3, bidder="A"),  # same price, submitted later: cut first
        bid("b1", 80, 600, 4, bidder="B"),
    ]
    result = clear(rules(supply=1_400, max_bidder_quantity=1_000, quantity_step=100), bids)

    assert allocated(result) == {"a1": 600, "a2": 400, "b1": 400}
    assert list(result.cap_trims) == [CapTrim("a2", "A", 200), CapTrim("a3", "A", 600)]
    assert result.clearing_price == 80
    assert result.eligible_quantity == 1_600


def test_cap_is_rounded_down_to_the_step() -> None:
    bids = [bid("a", 10, 1_000, 1, bidder="A"), bid("b", 5, 1_000, 2, bidder="B")]
    result = clear(rules(supply=1_000, max_bidder_quantity=750, quantity_step=500), bids)

    assert allocated(result) == {"a": 500, "b": 500}


def test_invalid_bids_are_left_out_and_listed() -> None:
    r = rules(supply=1_000, quantity_step=500, min_bid_quantity=1_000, price_tick=10)
    bids = [
        bid("ok", 1_000, 1_000, 1),
        bid("tick", 1_005, 1_000, 2),
        bid("step", 1_000, 1_250, 3),
        bid("small", 1_000, 500, 4),
        bid("free", 0, 1_000, 5),
    ]
    result = clear(r, bids)

    assert result.invalid_bid_ids == ("free", "small", "step", "tick")
    assert allocated(result) == {"ok": 1_000}
    assert result.bid_quantity == 1_000
    assert result.bidders == 1


@pytest.mark.parametrize(
    ("price", "quantity", "messages"),
    [
        pytest.param(1_000, 1_500, [], id="valid"),
        pytest.param(1_005, 1_500, ["price tick (10)"], id="tick"),
        pytest.param(0, 1_500, ["price must be positive"], id="zero-price"),
        pytest.param(-10, 1_500, ["price must be positive"], id="negative-price"),
        pytest.param(1_000, 1_250, ["step (500)"], id="step"),
        pytest.param(1_000, 500, ["at least 1000"], id="below-minimum"),
        pytest.param(1_000, 0, ["quantity must be positive"], id="zero-quantity"),
        pytest.param(1_001, 700, ["price tick", "at least 1000", "step"], id="everything"),
    ],
)
def test_validate_bid(price: int, quantity: int, messages: list[str]) -> None:
    r = rules(quantity_step=500, min_bid_quantity=1_000, price_tick=10)
    errors = validate_bid(r, bid("x", price, quantity, 1))

    assert len(errors) == len(messages)
    for error, message in zip(errors, messages, strict=True):
        assert message in error


def test_no_bids() -> None:
    result = clear(rules(undersubscribed="sell_what_is_bid"), [])

    assert result.status == ClearingStatus.cancelled
    assert (result.bidders, result.bid_quantity, len(result.demand_curve)) == (0, 0, 0)
    assert result.cover_ratio == (0, 1)


@pytest.mark.parametrize(
    ("bids", "message"),
    [
        pytest.param([bid("a", 1, 1, 1), bid("a", 1, 1, 2)], "ids", id="duplicate-id"),
        pytest.param([bid("a", 1, 1, 1), bid("b", 2, 1, 1)], "submitted_seq", id="same-seq"),
    ],
)
def test_bids_must_be_distinct(bids: list[Bid], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clear(rules(), bids)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        pytest.param({"tie_break": "random", "seed": b""}, ValueError, id="random-needs-seed"),
        pytest.param({"tie_break": "pro_rata", "seed": b""}, ValueError, id="pro-rata-seed"),
        pytest.param({"supply": 1_250, "quantity_step": 500}, ValueError, id="supply-step"),
        pytest.param({"supply": 0}, ValueError, id="no-supply"),
        pytest.param({"price_tick": 0}, ValueError, id="tick"),
        pytest.param({"max_bidder_quantity": 0}, ValueError, id="cap"),
        pytest.param({"reserve_price": -1}, ValueError, id="reserve"),
        pytest.param({"reserve_price": 10.5}, TypeError, id="float-reserve"),
        pytest.param({"supply": 1_000.0}, TypeError, id="float-supply"),
        pytest.param({"format": "english"}, ValueError, id="format"),
        pytest.param({"seed": "text"}, TypeError, id="seed-type"),
    ],
)
def test_rules_are_checked(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        rules(**overrides)


def test_time_priority_needs_no_seed() -> None:
    assert rules(tie_break="time_priority", seed=b"").seed == b""


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(("a", "x", 10.0, 1, 1), id="float-price"),
        pytest.param(("a", "x", 10, 1.0, 1), id="float-quantity"),
        pytest.param(("a", "x", True, 1, 1), id="bool-price"),
        pytest.param((1, "x", 10, 1, 1), id="int-id"),
    ],
)
def test_bids_take_integers_only(fields: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        Bid(*fields)


def test_allocations_read_as_objects_by_position_and_by_id() -> None:
    result = clear(_eu_ets_random_tie().rules, _eu_ets_random_tie().bids)
    rows = list(result.allocations)

    assert rows[0] == result.allocations[0]
    assert result.allocations.by_bid_id()["a"].quantity == 1_000
    assert len(result.allocations) == len(rows) == 3


# --- properties --------------------------------------------------------------------------


def invariant_failures(r: AuctionRules, bids: Sequence[Bid], result: ClearingResult) -> list[str]:
    """Every rule the result must satisfy, whatever the input (the benchmark checks these
    too)."""
    failures: list[str] = []
    by_id = {b.id: b for b in bids}
    rows = list(result.allocations)
    sold = sum(a.quantity for a in rows)
    if sold != result.sold_quantity or sold > r.supply:
        failures.append(f"sold {sold} (reported {result.sold_quantity}) of {r.supply}")
    if result.unsold_quantity != r.supply - sold:
        failures.append("unsold != supply - sold")
    if result.status == ClearingStatus.cleared and sold != r.supply:
        failures.append("cleared but the supply was not all sold")
    if result.status == ClearingStatus.cancelled and rows:
        failures.append("cancelled but something was allocated")
    per_bidder: dict[str, int] = defaultdict(int)
    per_group: dict[str, int] = defaultdict(int)
    for a in rows:
        b = by_id[a.bid_id]
        per_bidder[b.bidder] += a.quantity
        if b.group is not None:
            per_group[b.group] += a.quantity
        if not 0 < a.quantity <= b.quantity or a.quantity % r.quantity_step:
            failures.append(f"{a.bid_id}: quantity {a.quantity} of {b.quantity}")
        if a.amount != a.price * a.quantity:
            failures.append(f"{a.bid_id}: amount")
        if r.reserve_price is not None and b.price < r.reserve_price:
            failures.append(f"{a.bid_id}: below the reserve")
        if validate_bid(r, b):
            failures.append(f"{a.bid_id}: invalid bid won")
        if r.format == ClearingFormat.uniform:
            if a.price != result.clearing_price or b.price < a.price:
                failures.append(f"{a.bid_id}: pays {a.price}, bid {b.price}")
        elif a.price != b.price:
            failures.append(f"{a.bid_id}: pay-as-bid pays {a.price}, bid {b.price}")
    if r.max_bidder_quantity is not None:
        over = {k: v for k, v in (per_bidder | per_group).items() if v > r.max_bidder_quantity}
        if over:
            failures.append(f"over the cap: {over}")
    seqs = [by_id[a.bid_id].submitted_seq for a in rows]
    if seqs != sorted(seqs):
        failures.append("allocations not in submission order")
    eligible = [
        b
        for b in bids
        if not validate_bid(r, b) and (r.reserve_price is None or b.price >= r.reserve_price)
    ]
    trims = list(result.cap_trims)
    for trim in trims:
        b = by_id[trim.bid_id]
        if b not in eligible or not 0 < trim.removed <= b.quantity:
            failures.append(f"{trim.bid_id}: cut {trim.removed} of an ineligible or smaller bid")
        if trim.removed % r.quantity_step or trim.bidder != b.bidder:
            failures.append(f"{trim.bid_id}: cut {trim.removed} off the step")
    if r.max_bidder_quantity is None and trims:
        failures.append("cuts without a cap")
    expected = sum(b.quantity for b in eligible) - sum(t.removed for t in trims)
    if result.eligible_quantity != expected:
        failures.append(f"eligible quantity {result.eligible_quantity}, expected {expected}")
    return failures


@dataclass(frozen=True)
class Auction:
    rules: AuctionRules
    bids: list[Bid]


@st.composite
def auctions(draw: st.DrawFn) -> Auction:
    step = draw(st.sampled_from([1, 100, 500]))
    tick = draw(st.sampled_from([1, 10]))
    min_lots = draw(st.integers(1, 3))
    levels = draw(st.lists(st.integers(1, 20), min_size=1, max_size=5, unique=True))
    count = draw(st.integers(0, 24))
    seqs = draw(st.permutations(range(count)))
    bids = [
        Bid(
            id=f"bid-{i}",
            bidder=draw(st.sampled_from("ABCDE")),
            price=draw(st.sampled_from(levels)) * tick,
            quantity=step * draw(st.integers(min_lots, min_lots + 6)),
            submitted_seq=seqs[i] * 7 + 3,
            group=draw(st.sampled_from([None, None, "G", "H"])),
        )
        for i in range(count)
    ]
    if draw(st.booleans()):  # now and then a bid the rules reject
        good_price, good_quantity = levels[0] * tick, step * min_lots
        bad = [(0, good_quantity), (good_price, 0), (-tick, good_quantity)]
        if tick > 1:
            bad.append((good_price + 1, good_quantity))
        if step > 1:
            bad.append((good_price, good_quantity + 1))
        if min_lots > 1:
            bad.append((good_price, step))
        price, quantity = draw(st.sampled_from(bad))
        bids.append(Bid("bad", "A", price, quantity, 10_000))
    total = sum(b.quantity for b in bids)
    cap = draw(st.none() | st.integers(step, 8 * step))
    r = AuctionRules(
        format=draw(st.sampled_from(ClearingFormat)),
        supply=step * draw(st.integers(1, total // step + 3)),
        reserve_price=draw(st.none() | st.integers(1, 21).map(lambda p: p * tick)),
        min_bid_quantity=step * min_lots,
        quantity_step=step,
        price_tick=tick,
        max_bidder_quantity=cap,
        tie_break=draw(st.sampled_from(TieBreak)),
        seed=draw(st.binary(min_size=1, max_size=8)),
        undersubscribed=draw(st.sampled_from(Undersubscribed)),
    )
    return Auction(r, bids)


def reference_clear(r: AuctionRules, bids: Sequence[Bid]) -> dict[str, int]:
    """The rules, written the slow and obvious way: returns bid id -> quantity won."""
    ranked = sorted(
        (b for b in bids if not validate_bid(r, b)), key=lambda b: (-b.price, b.submitted_seq)
    )
    if r.reserve_price is not None:
        ranked = [b for b in ranked if b.price >= r.reserve_price]
    want = {b.id: b.quantity for b in ranked}
    if r.max_bidder_quantity is not None:
        cap = r.max_bidder_quantity // r.quantity_step * r.quantity_step
        by_bidder: dict[str, int] = defaultdict(int)
        by_group: dict[str, int] = defaultdict(int)
        for b in ranked:
            room = cap - by_bidder[b.bidder]
            if b.group is not None:
                room = min(room, cap - by_group[b.group])
            want[b.id] = max(0, min(b.quantity, room))
            by_bidder[b.bidder] += want[b.id]
            if b.group is not None:
                by_group[b.group] += want[b.id]
    ranked = [b for b in ranked if want[b.id]]
    if sum(want.values()) < r.supply:
        if r.undersubscribed == Undersubscribed.cancel:
            return {}
        return {b.id: want[b.id] for b in ranked}
    won: dict[str, int] = {}
    left = r.supply
    for price in sorted({b.price for b in ranked}, reverse=True):
        level = [b for b in ranked if b.price == price]
        asked = sum(want[b.id] for b in level)
        if asked <= left:
            won.update((b.id, want[b.id]) for b in level)
            left -= asked
        else:
            by_hash = sorted(level, key=lambda b: hashlib.sha256(r.seed + b.id.encode()).digest())
            if r.tie_break == TieBreak.pro_rata:
                step = r.quantity_step
                shares = {b.id: want[b.id] * left // asked // step * step for b in level}
                extra = left - sum(shares.values())
                for b in by_hash[: extra // step]:
                    shares[b.id] += step
                won.update((k, v) for k, v in shares.items() if v)
            else:
                for b in by_hash if r.tie_break == TieBreak.random else level:
                    take = min(want[b.id], left)
                    if take:
                        won[b.id] = take
                    left -= take
            left = 0
        if not left:
            break
    return won


PROPERTY_SETTINGS = settings(max_examples=400, deadline=None)


@PROPERTY_SETTINGS
@given(auctions())
def test_invariants_hold(auction: Auction) -> None:
    result = clear(auction.rules, auction.bids)

    assert invariant_failures(auction.rules, auction.bids, result) == []


@PROPERTY_SETTINGS
@given(auctions())
def test_matches_the_reference_clearing(auction: Auction) -> None:
    result = clear(auction.rules, auction.bids)

    assert allocated(result) == reference_clear(auction.rules, auction.bids)


@PROPERTY_SETTINGS
@given(auctions(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_input_order(auction: Auction, rnd: random.Random) -> None:
    shuffled = list(auction.bids)
    rnd.shuffle(shuffled)

    first = clear(auction.rules, auction.bids)
    assert clear(auction.rules, auction.bids) == first
    assert clear(auction.rules, shuffled) == first


@PROPERTY_SETTINGS
@given(auctions())
def test_a_higher_bid_is_never_worse_off(auction: Auction) -> None:
    r = auction.rules
    if r.max_bidder_quantity is not None:
        r = AuctionRules(**{**_fields(r), "max_bidder_quantity": None})
    won = allocated(clear(r, auction.bids))
    valid = [b for b in auction.bids if not validate_bid(r, b)]

    for low in valid:
        if not won.get(low.id):
            continue
        for high in valid:
            if high.price > low.price:
                assert won.get(high.id) == high.quantity, (high, low)


@PROPERTY_SETTINGS
@given(auctions())
def test_uniform_price_is_the_lowest_accepted_bid(auction: Auction) -> None:
    r = AuctionRules(**{**_fields(auction.rules), "format": UNIFORM})
    result = clear(r, auction.bids)
    by_id = {b.id: b for b in auction.bids}

    if not result.allocations:
        assert result.clearing_price is None
        return
    accepted = [by_id[a.bid_id].price for a in result.allocations]
    assert result.clearing_price == min(accepted)
    assert {a.price for a in result.allocations} == {result.clearing_price}
    # No eligible bid strictly above the clearing price goes unfilled (caps aside).
    if r.max_bidder_quantity is None:
        for b in auction.bids:
            if b.price > result.clearing_price and not validate_bid(r, b):
                assert result.allocations.by_bid_id()[b.id].quantity == b.quantity


@PROPERTY_SETTINGS
@given(auctions())
def test_published_figures_agree_with_the_allocations(auction: Auction) -> None:
    r = auction.rules
    result = clear(r, auction.bids)
    rows = list(result.allocations)
    valid = [b for b in auction.bids if not validate_bid(r, b)]

    assert result.bid_quantity == sum(b.quantity for b in valid)
    assert result.bidders == len({b.bidder for b in valid})
    assert result.winners == len({a.bidder for a in rows})
    assert result.revenue == sum(a.amount for a in rows)
    num, den = result.cover_ratio
    assert num * r.supply == den * result.bid_quantity
    assert result.cover_ratio_permille == result.bid_quantity * 1000 // r.supply
    curve = list(result.demand_curve)
    assert [p.price for p in curve] == sorted({b.price for b in valid}, reverse=True)
    for point in curve:
        assert point.cumulative_quantity == sum(b.quantity for b in valid if b.price >= point.price)
    if rows:
        prices = sorted(a.price for a in rows)
        middle = len(prices) // 2
        median = prices[middle] if len(prices) % 2 else (prices[middle - 1] + prices[middle]) // 2
        assert result.median_price == median
        assert (result.min_price, result.max_price) == (prices[0], prices[-1])
        assert result.average_price == result.revenue // result.sold_quantity
    else:
        assert result.average_price is result.median_price is result.min_price is None


def _fields(r: AuctionRules) -> dict[str, Any]:
    return {name: getattr(r, name) for name in AuctionRules.__dataclass_fields__}


def test_the_benchmark_runs_and_its_checks_pass(capsys: pytest.CaptureFixture[str]) -> None:
    # Tiny sizes: this proves the benchmark and its invariant checks still work; nothing here
    # looks at a timing.
    from bench.clearing import main

    assert main(["--quick", "--sizes", "600,1500"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["name"] == "clearing"
    assert last["ok"] is True
    assert last["unit"] == "s"
    assert last["value"] > 0
    assert last["baseline"] > 0
    assert last["bids"] == 600
    assert {"pay_as_bid", "uniform_capped", "uniform_in_seq_order"} <= set(last)
    assert set(last["large"]) == {"uniform", "pay_as_bid"}


def test_rules_accept_plain_strings_and_keep_enum_members() -> None:
    r = rules(format="pay_as_bid", tie_break="pro_rata", undersubscribed="sell_what_is_bid")

    assert r.format is ClearingFormat.pay_as_bid
    assert r.tie_break is TieBreak.pro_rata
    assert r.undersubscribed is Undersubscribed.sell_what_is_bid
    assert clear(r, []).format is ClearingFormat.pay_as_bid
