"""The part of a product's book a group of orders can touch: what its lock call reads.

Matching an order touches the other side of the book only up to its limit (a buy: the sell
orders at or below its price, best first; a market order, with no limit of its own, the
whole other side up to its price band), and its own side only at its own price (the level it
rests on, whose ``level`` event counts every order there). So the orders with limits between
``low`` and ``high`` need, of the book as it stands, the sell orders priced at most ``high``
and the buy orders priced at least ``low`` (whole price levels, so a level's event counts every
order on it); a market buy needs every sell order, a market sell every buy order. Orders the
group itself rests are in memory, so a later order of the group meets them there.

``Reach.of`` works this out from the orders queued when a group's lock call is sent
(``app.market.group``); ``Reach.reads`` is the test of one resting order (migration 0028
writes the same in SQL); ``Reach.covers`` tells whether an order that arrived while the lock
was awaited can join the group: one priced within the window, or a market order whose side
is read whole. Leaving out the rest of the book keeps a group's read and rebuild to what it
can touch, however deep the book is (``bench/orders --depth``).

Within the window, a group can take from each side at most its own orders' total quantity on
the other side, in priority order. With ``asks_need`` and ``bids_need`` set, the lock call
(migration 0029) reads of each side only the orders with less than that quantity open before
them, in priority order, and counts the rest per price level (``OrderBook.restore(hidden=…)``
keeps them behind the orders read): a level hundreds of orders deep at the price costs a
group what it can fill. ``Reach.fits`` is the test of the orders a group takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from app.market.matching import Side


@dataclass(frozen=True, slots=True)
class Reach:
    asks_all: bool = False  # every resting sell (a market buy is in the group)
    asks_to: int | None = None  # the resting sells priced at most this (the highest limit)
    bids_all: bool = False  # every resting buy (a market sell is in the group)
    bids_from: int | None = None  # the resting buys priced at least this (the lowest limit)
    # Of those, only the sells (buys) with less than this quantity open before them, in
    # priority order, the rest counted (None: all of them).
    asks_need: int | None = None
    bids_need: int | None = None

    @classmethod
    def of(cls, orders: Iterable[tuple[Side, int | None]]) -> Reach:
        """The reach of orders given as (side, limit price; ``None`` for a market order)."""
        market: set[Side] = set()
        limits: list[int] = []
        for side, price in orders:
            if price is None:
                market.add(side)
            else:
                limits.append(price)
        return cls(
            asks_all=Side.BUY in market,
            asks_to=max(limits, default=None),
            bids_all=Side.SELL in market,
            bids_from=min(limits, default=None),
        )

    def reads(self, side: Side, price: int) -> bool:
        """Whether a resting order (``side``, ``price``) is read: migration 0028's test."""
        if side == Side.SELL:
            return self.asks_all or (self.asks_to is not None and price <= self.asks_to)
        return self.bids_all or (self.bids_from is not None and price >= self.bids_from)

    def covers(self, side: Side, price: int | None) -> bool:
        """Whether everything an order (``side``, limit or ``None``) can touch is read: the
        other side up to its limit, and its own side at its price (where it may rest)."""
        if price is None:  # a market order: the whole other side; it never rests
            return self.asks_all if side == Side.BUY else self.bids_all
        return self.reads(Side.SELL, price) and self.reads(Side.BUY, price)

    def filling(self, orders: Iterable[tuple[Side, int]], room: int | tuple[int, int] = 0) -> Reach:
        """This reach, reading of each side only what orders given as (side, quantity), and
        ``room`` more, can fill: the same on each side, or (for the buys, for the sells) as
        a pair (the buys' room is read of the sells, ``asks_need``)."""
        buys = sells = 0
        for side, quantity in orders:
            if side == Side.BUY:
                buys += quantity
            else:
                sells += quantity
        buys_room, sells_room = room if isinstance(room, tuple) else (room, room)
        return replace(self, asks_need=buys + buys_room, bids_need=sells + sells_room)

    def fits(self, orders: Iterable[tuple[Side, int]]) -> bool:
        """Whether orders given as (side, quantity) together take no more from either side
        than the orders read of it hold: their buys' total at most ``asks_need``, their
        sells' at most ``bids_need``."""
        buys = sells = 0
        for side, quantity in orders:
            if side == Side.BUY:
                buys += quantity
            else:
                sells += quantity
        return (self.asks_need is None or buys <= self.asks_need) and (
            self.bids_need is None or sells <= self.bids_need
        )
