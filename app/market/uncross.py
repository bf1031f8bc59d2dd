"""Call-auction uncrossing (板寄せ / itayose): one price for every trade. Pure, no I/O.

The TSE carbon-credit market trades only this way, twice a day; a continuous book can also
open with it. Integers only: prices in JPY per t-CO2e (tick ¥1), quantities in whole t-CO2e.

``uncross(orders, reference_price=None)`` takes buy and sell orders (limit, or market with
``price=None``) and returns the clearing price, the volume, the fill of every order and the
leftover orders.

Choosing the price
------------------
Candidate prices are the distinct limit prices of the orders, plus ``reference_price`` (the
base price: last traded price, or the previous base price) when it lies inside
``[lowest limit price, highest limit price]``. If there is no limit price at all (only
market orders), the only candidate is ``reference_price``; with none, nothing trades.

At a candidate price ``p``, demand ``D(p)`` is every market buy plus every buy limited at or
above ``p``; supply ``S(p)`` is every market sell plus every sell limited at or below ``p``.
The executable volume is ``min(D, S)`` and the surplus ``D − S`` (positive: buyers left over).
The price chosen is the candidate that, in this order:

1. maximises the executable volume;
2. minimises the absolute surplus (imbalance);
3. is closest to ``reference_price`` (skipped when there is none);
4. is the **higher** price (the final tie-break; with a reference price inside the range,
   step 3 always decides first, since the reference price is then a candidate).

If the best volume is 0, nothing trades: ``price`` is ``None`` and every order is left over.

Only the candidates are searched, as exchanges do: between two adjacent limit prices the
volume can never exceed the volume at either end (so the volume is the maximum over *all*
prices), though the surplus can be smaller in between.

Allocation at that price
------------------------
On each side the eligible orders are filled in priority order: market orders first, then by
price (highest buy, lowest sell), then by time (``sequence``). The short side fills entirely;
the side with the surplus fills fully down to the marginal price level, where the orders are
filled in time priority and the last one filled may be partial.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from app.market.matching import Side

OrderId: TypeAlias = Hashable


@dataclass(frozen=True, slots=True)
class CallOrder:
    """An order in a call auction; ``price`` is ``None`` for a market order."""

    order_id: OrderId
    side: Side
    quantity: int
    price: int | None
    sequence: int


@dataclass(frozen=True, slots=True)
class Fill:
    order_id: OrderId
    side: Side
    quantity: int


@dataclass(frozen=True, slots=True)
class UncrossResult:
    price: int | None  # None when nothing trades
    volume: int
    demand: int  # buy quantity executable at the price (0 when nothing trades)
    supply: int  # sell quantity executable at the price
    surplus: int  # demand − supply: > 0 buyers left over, < 0 sellers left over
    fills: tuple[Fill, ...]  # buys then sells, each side in priority order
    leftovers: tuple[CallOrder, ...]  # open remainders (partial fills reduced), buys then sells


def uncross(orders: Iterable[CallOrder], reference_price: int | None = None) -> UncrossResult:
    """Find the single clearing price and allocate the fills (see the module docstring)."""
    book = list(orders)
    _validate(book, reference_price)
    buys = sorted((o for o in book if o.side is Side.BUY), key=_buy_priority)
    sells = sorted((o for o in book if o.side is Side.SELL), key=_sell_priority)

    choice = _choose_price(buys, sells, reference_price)
    if choice is None:
        return UncrossResult(None, 0, 0, 0, 0, (), (*buys, *sells))
    price, volume, demand, supply = choice

    fills: list[Fill] = []
    leftovers: list[CallOrder] = []
    for side_orders, is_buy in ((buys, True), (sells, False)):
        to_fill = volume
        for order in side_orders:
            limit = order.price
            eligible = limit is None or (limit >= price if is_buy else limit <= price)
            qty = min(order.quantity, to_fill) if eligible else 0
            if qty:
                to_fill -= qty
                fills.append(Fill(order.order_id, order.side, qty))
            if qty < order.quantity:
                leftovers.append(_with_quantity(order, order.quantity - qty))
    return UncrossResult(
        price, volume, demand, supply, demand - supply, tuple(fills), tuple(leftovers)
    )


def candidate_prices(orders: Iterable[CallOrder], reference_price: int | None = None) -> list[int]:
    """The candidate clearing prices, ascending (see the module docstring)."""
    limits = {o.price for o in orders if o.price is not None}
    if not limits:
        return [] if reference_price is None else [reference_price]
    if reference_price is not None and min(limits) <= reference_price <= max(limits):
        limits.add(reference_price)
    return sorted(limits)


# --- internals ---------------------------------------------------------------------------


def _buy_priority(order: CallOrder) -> tuple[int, int, int]:
    return (0, 0, order.sequence) if order.price is None else (1, -order.price, order.sequence)


def _sell_priority(order: CallOrder) -> tuple[int, int, int]:
    return (0, 0, order.sequence) if order.price is None else (1, order.price, order.sequence)


def _choose_price(
    buys: Sequence[CallOrder], sells: Sequence[CallOrder], reference_price: int | None
) -> tuple[int, int, int, int] | None:
    """(price, volume, demand, supply) of the best candidate, or None if nothing trades."""
    candidates = candidate_prices((*buys, *sells), reference_price)
    if not candidates:
        return None
    # Demand at each candidate (walking down from the top), supply (walking up).
    market_buy = sum(o.quantity for o in buys if o.price is None)
    market_sell = sum(o.quantity for o in sells if o.price is None)
    limit_buys = [o for o in buys if o.price is not None]  # price descending
    limit_sells = [o for o in sells if o.price is not None]  # price ascending

    demand: dict[int, int] = {}
    total, i = market_buy, 0
    for p in reversed(candidates):
        while i < len(limit_buys) and _price(limit_buys[i]) >= p:
            total += limit_buys[i].quantity
            i += 1
        demand[p] = total
    supply: dict[int, int] = {}
    total, i = market_sell, 0
    for p in candidates:
        while i < len(limit_sells) and _price(limit_sells[i]) <= p:
            total += limit_sells[i].quantity
            i += 1
        supply[p] = total

    def rank(p: int) -> tuple[int, int, int, int]:
        d, s = demand[p], supply[p]
        distance = 0 if reference_price is None else abs(p - reference_price)
        return (min(d, s), -abs(d - s), -distance, p)

    best = max(candidates, key=rank)
    volume = min(demand[best], supply[best])
    if volume == 0:
        return None
    return best, volume, demand[best], supply[best]


def _price(order: CallOrder) -> int:
    assert order.price is not None
    return order.price


def _with_quantity(order: CallOrder, quantity: int) -> CallOrder:
    return CallOrder(order.order_id, order.side, quantity, order.price, order.sequence)


def _validate(orders: Sequence[CallOrder], reference_price: int | None) -> None:
    if reference_price is not None and (type(reference_price) is not int or reference_price <= 0):
        raise ValueError("the reference price is a positive integer (JPY per t-CO2e)")
    seen: set[OrderId] = set()
    for order in orders:
        if order.order_id in seen:
            raise ValueError(f"duplicate order id {order.order_id!r}")
        seen.add(order.order_id)
        if type(order.side) is not Side:
            raise ValueError(f"order {order.order_id!r}: side must be a Side")
        if type(order.quantity) is not int or order.quantity <= 0:
            raise ValueError(f"order {order.order_id!r}: quantity is a positive integer")
        if order.price is not None and (type(order.price) is not int or order.price <= 0):
            raise ValueError(f"order {order.order_id!r}: price is a positive integer or None")
        if type(order.sequence) is not int:
            raise ValueError(f"order {order.order_id!r}: sequence is an integer")
