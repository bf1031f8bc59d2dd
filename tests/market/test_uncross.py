"""Call-auction uncrossing (``app.market.uncross``): pure, no database.

Table-driven TSE-style (板寄せ) cases, then a property test against a brute-force search over
every candidate price.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.market.matching import Side
from app.market.uncross import CallOrder, UncrossResult, candidate_prices, uncross

BUY, SELL = Side.BUY, Side.SELL


def b(oid: str, qty: int, price: int | None, seq: int) -> CallOrder:
    return CallOrder(oid, BUY, qty, price, seq)


def s(oid: str, qty: int, price: int | None, seq: int) -> CallOrder:
    return CallOrder(oid, SELL, qty, price, seq)


# A textbook itayose: demand 30/50/100/140/140 and supply 40/70/100/100/120 at
# 990/995/1000/1005/1010 (top down and bottom up); the most volume (100) is at 1000.
TEXTBOOK = [
    b("B1", 30, 1010, 1),
    b("B2", 20, 1005, 2),
    b("B3", 50, 1000, 3),
    b("B4", 40, 995, 4),
    s("S1", 40, 990, 5),
    s("S2", 30, 995, 6),
    s("S3", 30, 1000, 7),
    s("S4", 20, 1010, 8),
]

CASES = [
    pytest.param(
        TEXTBOOK,
        None,
        (1000, 100, 0),
        {"B1": 30, "B2": 20, "B3": 50, "S1": 40, "S2": 30, "S3": 30},
        {"B4": 40, "S4": 20},
        id="textbook-most-volume",
    ),
    pytest.param(
        [b("B1", 10, 1000, 1), b("B2", 10, 1000, 2), b("B3", 10, 1000, 3), s("S1", 15, 990, 4)],
        None,
        (1000, 15, 15),
        {"B1": 10, "B2": 5, "S1": 15},
        {"B2": 5, "B3": 10},
        id="surplus-side-filled-in-time-priority-at-the-marginal-level",
    ),
    pytest.param(
        [b("B1", 10, 1000, 3), b("B2", 10, 1001, 2), b("B3", 10, 1000, 1), s("S1", 15, 990, 4)],
        None,
        (1000, 15, 15),
        {"B2": 10, "B3": 5, "S1": 15},
        {"B3": 5, "B1": 10},
        id="price-before-time-on-the-surplus-side",
    ),
    pytest.param(
        [b("B1", 10, 1000, 1), b("B2", 5, 990, 2), s("S1", 10, 990, 3)],
        990,
        (1000, 10, 0),
        {"B1": 10, "S1": 10},
        {"B2": 5},
        id="least-imbalance-before-reference-price",
    ),
    pytest.param(
        [b("B1", 10, 1010, 1), s("S1", 10, 990, 2)],
        1000,
        (1000, 10, 0),
        {"B1": 10, "S1": 10},
        {},
        id="reference-price-inside-the-range-is-a-candidate",
    ),
    pytest.param(
        [b("B1", 10, 1010, 1), s("S1", 10, 990, 2)],
        900,
        (990, 10, 0),
        {"B1": 10, "S1": 10},
        {},
        id="closest-to-a-reference-price-below-the-range",
    ),
    pytest.param(
        [b("B1", 10, 1010, 1), s("S1", 10, 990, 2)],
        2000,
        (1010, 10, 0),
        {"B1": 10, "S1": 10},
        {},
        id="closest-to-a-reference-price-above-the-range",
    ),
    pytest.param(
        [b("B1", 10, 1010, 1), s("S1", 10, 990, 2)],
        None,
        (1010, 10, 0),
        {"B1": 10, "S1": 10},
        {},
        id="no-reference-price-higher-price-wins",
    ),
    pytest.param(
        [b("M", 15, None, 1), b("B1", 10, 1000, 2), s("S1", 10, 990, 3), s("S2", 10, 1000, 4)],
        None,
        (1000, 20, 5),
        {"M": 15, "B1": 5, "S1": 10, "S2": 10},
        {"B1": 5},
        id="market-buy-first-in-priority",
    ),
    pytest.param(
        [s("M", 30, None, 1), b("B1", 10, 1000, 2), b("B2", 10, 990, 3)],
        None,
        (990, 20, -10),
        {"B1": 10, "B2": 10, "M": 20},
        {"M": 10},
        id="market-sell-against-limit-buys",
    ),
    pytest.param(
        [b("B1", 10, 990, 1), s("S1", 10, 1000, 2)],
        995,
        (None, 0, 0),
        {},
        {"B1": 10, "S1": 10},
        id="no-cross-no-trade",
    ),
    pytest.param(
        [b("M1", 10, None, 1), s("M2", 7, None, 2)],
        1500,
        (1500, 7, 3),
        {"M1": 7, "M2": 7},
        {"M1": 3},
        id="only-market-orders-trade-at-the-reference-price",
    ),
    pytest.param(
        [b("M1", 10, None, 1), s("M2", 7, None, 2)],
        None,
        (None, 0, 0),
        {},
        {"M1": 10, "M2": 7},
        id="only-market-orders-without-reference-price-do-not-trade",
    ),
    pytest.param([], 1000, (None, 0, 0), {}, {}, id="empty"),
]


@pytest.mark.parametrize(("orders", "reference", "expected", "fills", "leftovers"), CASES)
def test_uncross(
    orders: list[CallOrder],
    reference: int | None,
    expected: tuple[int | None, int, int],
    fills: dict[str, int],
    leftovers: dict[str, int],
) -> None:
    result = uncross(orders, reference)
    assert (result.price, result.volume, result.surplus) == expected
    assert {f.order_id: f.quantity for f in result.fills} == fills
    assert {o.order_id: o.quantity for o in result.leftovers} == leftovers
    # Fills are listed buys first, each side in priority order; same for leftovers.
    assert list(fills) == [f.order_id for f in result.fills]
    assert list(leftovers) == [o.order_id for o in result.leftovers]
    assert_allocation_is_sound(orders, result)


def test_candidates() -> None:
    assert candidate_prices(TEXTBOOK) == [990, 995, 1000, 1005, 1010]
    assert candidate_prices(TEXTBOOK, 997) == [990, 995, 997, 1000, 1005, 1010]
    assert candidate_prices(TEXTBOOK, 1011) == [990, 995, 1000, 1005, 1010]
    assert candidate_prices([b("M", 1, None, 1)], 1200) == [1200]
    assert candidate_prices([b("M", 1, None, 1)]) == []


@pytest.mark.parametrize(
    ("orders", "reference", "message"),
    [
        pytest.param([b("X", 1, 100, 1), s("X", 1, 100, 2)], None, "duplicate", id="dup-id"),
        pytest.param([b("X", 0, 100, 1)], None, "quantity", id="zero-quantity"),
        pytest.param([b("X", 1, 0, 1)], None, "price", id="zero-price"),
        pytest.param([b("X", 1, 100, 1)], 0, "reference", id="zero-reference"),
    ],
)
def test_invalid_input(orders: list[CallOrder], reference: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        uncross(orders, reference)


# --- property test -----------------------------------------------------------------------


def assert_allocation_is_sound(orders: list[CallOrder], result: UncrossResult) -> None:
    filled: dict[object, int] = defaultdict(int)
    for fill in result.fills:
        filled[fill.order_id] += fill.quantity
    left = {o.order_id: o.quantity for o in result.leftovers}
    for side in (BUY, SELL):
        assert sum(f.quantity for f in result.fills if f.side is side) == result.volume
    p = result.price
    for order in orders:
        got = filled[order.order_id]
        assert got + left.get(order.order_id, 0) == order.quantity  # conserved
        if got:  # only orders willing to trade at the price
            assert p is not None
            assert order.price is None or (
                order.price >= p if order.side is BUY else order.price <= p
            )
    # Priority: on each side, full fills, then at most one partial fill, then nothing.
    for side, sign in ((BUY, -1), (SELL, 1)):
        ranked = sorted(
            (o for o in orders if o.side is side),
            key=lambda o: (
                (0, 0, o.sequence) if o.price is None else (1, sign * o.price, o.sequence)
            ),
        )
        eligible = [
            o for o in ranked if p is not None and (o.price is None or sign * (o.price - p) <= 0)
        ]
        short = False  # once one order is not fully filled, later ones get nothing
        for o in eligible:
            got = filled[o.order_id]
            if short:
                assert got == 0, f"{o.order_id} filled before a higher-priority order"
            elif got < o.quantity:
                short = True


def brute_force(orders: list[CallOrder], reference: int | None) -> tuple[int | None, int]:
    """Every candidate price, scored by direct summation; the best by the documented rules."""
    limits = sorted({o.price for o in orders if o.price is not None})
    candidates = list(limits)
    if reference is not None and (not limits or limits[0] <= reference <= limits[-1]):
        candidates.append(reference)
    best: tuple[int, int, int, int] | None = None
    for p in set(candidates):
        demand = sum(
            o.quantity for o in orders if o.side is BUY and (o.price is None or o.price >= p)
        )
        supply = sum(
            o.quantity for o in orders if o.side is SELL and (o.price is None or o.price <= p)
        )
        distance = abs(p - reference) if reference is not None else 0
        key = (min(demand, supply), -abs(demand - supply), -distance, p)
        if best is None or key > best:
            best = key
    if best is None or best[0] == 0:
        return None, 0
    return best[3], best[0]


def volume_at(orders: list[CallOrder], p: int) -> int:
    demand = sum(o.quantity for o in orders if o.side is BUY and (o.price is None or o.price >= p))
    supply = sum(o.quantity for o in orders if o.side is SELL and (o.price is None or o.price <= p))
    return min(demand, supply)


@st.composite
def auctions(draw: st.DrawFn) -> tuple[list[CallOrder], int | None]:
    n = draw(st.integers(min_value=0, max_value=25))
    orders = []
    for i in range(n):
        side = draw(st.sampled_from([BUY, SELL]))
        market = draw(st.integers(min_value=0, max_value=9)) == 0
        price = None if market else draw(st.integers(min_value=95, max_value=105))
        qty = draw(st.integers(min_value=1, max_value=20))
        orders.append(CallOrder(i, side, qty, price, draw(st.integers(0, 50))))
    reference = draw(st.none() | st.integers(min_value=90, max_value=110))
    return orders, reference


@settings(max_examples=400, deadline=None)
@given(auctions())
def test_uncross_matches_brute_force(case: tuple[list[CallOrder], int | None]) -> None:
    orders, reference = case
    result = uncross(orders, reference)
    assert (result.price, result.volume) == brute_force(orders, reference)
    assert_allocation_is_sound(orders, result)
    if result.price is not None:
        assert result.volume == volume_at(orders, result.price)
        assert result.demand - result.supply == result.surplus
    if any(o.price is not None for o in orders):
        # No integer price at all (not just the candidates) executes more.
        assert result.volume == max(volume_at(orders, p) for p in range(85, 116))
