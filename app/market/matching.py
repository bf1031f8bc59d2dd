"""A price-time-priority limit order book for one product: pure, deterministic, no I/O.

The book is a state machine driven by three commands, each returning the list of events it
caused, in order:

- ``submit(order, band_low=None, band_high=None)``: a new order;
- ``cancel(order_id, reason=CancelReason.REQUESTED)``: take a resting order off the book;
- ``amend(order_id, new_quantity=None, new_price=None, sequence=None)``: change a resting order.

Units are integers only: prices in JPY per t-CO2e (tick ¥1), quantities in whole t-CO2e.

Rules
-----
* **Price-time priority.** The best price trades first; at one price, the order that arrived
  first. Arrival is the caller's ``sequence`` (per product, monotonically increasing, e.g. a
  BIGINT column): every order must carry a sequence larger than any the book has accepted
  (otherwise ``Rejected(stale_sequence)``; a rejected order does not use up its sequence), so
  queue order equals sequence order. Hence replaying the same commands gives the same events
  and book, and the book can be rebuilt from its resting orders alone (``resting_orders()`` ->
  database -> ``OrderBook.restore``) with every queue position intact.
* **Trades happen at the resting (maker) order's price.** When a buy order takes liquidity below
  its limit, ``Trade.buyer_improvement`` reports ``(limit − price) × quantity`` in JPY: the part
  of the buyer's reservation the service can release. For a market buy the limit is
  ``band_high`` (what the service must have reserved). A maker buyer always pays its own limit.
* **Partial fills.** An incoming order walks the opposite side level by level, trading with as
  many orders as it needs; a resting order may be partly filled and keeps its place.
* **Market orders** have ``price=None`` and are protected by a price band the caller passes:
  a market buy never trades above ``band_high`` and a market sell never below ``band_low``
  (a market order without the band for its side is ``Rejected(no_price_band)``). A market order
  never rests: the unfilled remainder is ``Cancelled(market)``. ``time_in_force=FOK`` makes it
  all-or-nothing within the band; any other time in force behaves as IOC. The band is ignored
  for limit orders (price limits on limit orders are the service's job).
* **Time in force.** ``GTC`` and ``GTD`` rest (GTD expiry is the service's job: it calls
  ``cancel(order_id, CancelReason.EXPIRED)``); ``IOC`` trades what it can, the rest is
  ``Cancelled(ioc)``; ``FOK`` is checked *before the book is touched*: if the whole quantity
  cannot trade (counting self-trade prevention, below) it is ``Cancelled(fok)`` with no trade.
* **Post-only** orders are ``Rejected(post_only_would_cross)`` if they would trade on arrival;
  post-only is only valid for resting limit orders (GTC/GTD), else ``Rejected(invalid_post_only)``.
* **Self-trade prevention: cancel newest.** An incoming order never trades with a resting order
  of the same ``owner``. When, walking the book in priority order, the next order it would
  trade with belongs to its owner, the incoming order stops: trades already made stand, and its
  remainder is ``Cancelled(self_trade)``. The resting order is untouched. ``owner`` is opaque:
  pass the organisation id, or a beneficial-owner group id to widen the scope.
* **Amend (cancel/replace).** ``new_quantity`` is the new *open* (remaining) quantity. Reducing
  it at the same price keeps time priority; a price change or an increase loses it: the order
  leaves its queue, takes a new sequence (``sequence`` if given, else the last one + 1; the
  ``sequence`` argument is unused when priority is kept) and is
  processed as if it had just arrived (it may trade, subject to self-trade prevention; a
  post-only order that would then cross is ``Rejected`` and left unchanged).

Events
------
``Accepted``, ``Rejected(reason)``, ``Trade``, ``Rested``, ``Cancelled(reason, remaining)``,
``Amended``, ``Done(filled)``. A submitted order yields either ``Rejected`` alone, or
``Accepted`` followed by its trades and exactly one of ``Rested`` (it is on the book),
``Done`` (completely filled) or ``Cancelled``. A resting order that a trade exhausts yields
``Done`` right after that ``Trade``. ``cancel`` yields ``Cancelled`` or
``Rejected(unknown_order)``. ``amend`` yields ``Rejected`` (the order is unchanged), or
``Amended(priority_kept=True)`` alone, or ``Amended(priority_kept=False)`` followed, as for a
new order, by its trades and one of ``Rested``, ``Done`` or ``Cancelled(self_trade)``.
Conservation per order:
``quantity + Σ amend changes = filled + resting + cancelled``.

Events are slotted (non-frozen) dataclasses: freezing costs 3.4× per event here and events are
the hot path; treat them as values.

Data structure
--------------
Per side, a ``dict`` price key -> level and a heap of price keys with lazy deletion (a level
removed from the dict leaves its key in the heap until it reaches the top); asks are keyed by
price, bids by −price, so the best of either side is the smallest key. A level is a ``deque``
of orders in arrival order plus its total quantity and live count; a cancelled order in the
middle of a queue is marked dead (remaining 0) and skipped when it reaches the head. An
order-id index gives O(1) cancel and amend. Adding to an existing level is O(1), a new level
O(log levels) in C (``heapq``); the passive add path is inlined in ``submit`` (profiled:
``bench/matching``).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from heapq import heapify, heappop, heappush
from typing import TypeAlias

OrderId: TypeAlias = Hashable
Owner: TypeAlias = Hashable


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "gtc"  # good till cancelled
    IOC = "ioc"  # immediate or cancel
    FOK = "fok"  # fill or kill
    GTD = "gtd"  # good till date: rests like GTC; the service cancels it at expiry


class RejectReason(StrEnum):
    STALE_SEQUENCE = "stale_sequence"
    DUPLICATE_ORDER_ID = "duplicate_order_id"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_PRICE = "invalid_price"
    NO_PRICE_BAND = "no_price_band"
    INVALID_POST_ONLY = "invalid_post_only"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    UNKNOWN_ORDER = "unknown_order"
    NOTHING_TO_AMEND = "nothing_to_amend"


class CancelReason(StrEnum):
    REQUESTED = "requested"  # cancel() by the owner or the service
    EXPIRED = "expired"  # passed by the service for GTD orders
    IOC = "ioc"  # unfilled remainder of an IOC order
    FOK = "fok"  # a FOK order that could not fill entirely
    MARKET = "market"  # unfilled remainder of a market order (book or band exhausted)
    SELF_TRADE = "self_trade"  # STP: the incoming order's remainder


@dataclass(frozen=True, slots=True)
class Order:
    """One order as the caller submits it. ``price`` is ``None`` for market orders."""

    order_id: OrderId
    side: Side
    quantity: int
    price: int | None
    owner: Owner
    sequence: int
    order_type: OrderType = OrderType.LIMIT
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False

    def __post_init__(self) -> None:
        # Accept the enums' string values (e.g. from a database row), but store the members:
        # the engine compares them by identity.
        if type(self.side) is not Side:
            object.__setattr__(self, "side", Side(self.side))
        if type(self.order_type) is not OrderType:
            object.__setattr__(self, "order_type", OrderType(self.order_type))
        if type(self.time_in_force) is not TimeInForce:
            object.__setattr__(self, "time_in_force", TimeInForce(self.time_in_force))


def limit_order(
    order_id: OrderId,
    side: Side,
    price: int,
    quantity: int,
    *,
    owner: Owner,
    sequence: int,
    time_in_force: TimeInForce = TimeInForce.GTC,
    post_only: bool = False,
) -> Order:
    return Order(
        order_id, side, quantity, price, owner, sequence, OrderType.LIMIT, time_in_force, post_only
    )


def market_order(
    order_id: OrderId,
    side: Side,
    quantity: int,
    *,
    owner: Owner,
    sequence: int,
    time_in_force: TimeInForce = TimeInForce.IOC,
) -> Order:
    return Order(order_id, side, quantity, None, owner, sequence, OrderType.MARKET, time_in_force)


# --- events ------------------------------------------------------------------------------


@dataclass(slots=True)
class Accepted:
    order_id: OrderId


@dataclass(slots=True)
class Rejected:
    order_id: OrderId
    reason: RejectReason


@dataclass(slots=True)
class Trade:
    maker_id: OrderId
    taker_id: OrderId
    price: int
    quantity: int
    maker_owner: Owner
    taker_owner: Owner
    taker_side: Side
    buyer_improvement: int  # JPY the buyer saved against its limit (0 when the buyer is maker)


@dataclass(slots=True)
class Rested:
    order_id: OrderId
    side: Side
    price: int
    quantity: int  # the open quantity now on the book


@dataclass(slots=True)
class Cancelled:
    order_id: OrderId
    reason: CancelReason
    remaining: int  # the quantity cancelled


@dataclass(slots=True)
class Amended:
    order_id: OrderId
    old_price: int
    old_quantity: int
    price: int
    quantity: int
    priority_kept: bool
    sequence: int  # the order's sequence after the amend


@dataclass(slots=True)
class Done:
    order_id: OrderId
    filled: int  # everything the order filled in its life


Event: TypeAlias = Accepted | Rejected | Trade | Rested | Cancelled | Amended | Done


@dataclass(frozen=True, slots=True)
class PriceLevel:
    price: int
    quantity: int
    orders: int


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """Aggregated levels, best first on each side."""

    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]


# --- internals ---------------------------------------------------------------------------


def _aggregate(level: _Level) -> PriceLevel:
    return PriceLevel(
        level.price, level.quantity + level.hidden_quantity, level.count + level.hidden_count
    )


class BookIncomplete(RuntimeError):
    """Matching needed a resting order the book was not given: one of the orders
    ``OrderBook.restore(hidden=…)`` counted without giving them."""


class _Level:
    __slots__ = ("count", "dead", "hidden_count", "hidden_quantity", "price", "quantity", "queue")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[_Entry] = deque()
        self.quantity = 0  # open quantity of the live orders
        self.count = 0  # live orders
        self.dead = 0  # cancelled orders still in the queue
        # Orders behind the queue, counted but not given (``OrderBook.restore(hidden=…)``).
        self.hidden_quantity = 0
        self.hidden_count = 0


class _Entry:
    """An order inside the book (or being matched). ``remaining == 0`` marks a dead entry."""

    __slots__ = (
        "filled",
        "is_buy",
        "level",
        "order",
        "order_id",
        "owner",
        "price",
        "remaining",
        "sequence",
    )

    def __init__(
        self, order: Order, price: int, remaining: int, filled: int, sequence: int
    ) -> None:
        self.order = order
        self.order_id = order.order_id
        self.owner = order.owner
        self.is_buy = order.side is _BUY
        self.price = price  # limit price (for a market order: its band limit)
        self.remaining = remaining
        self.filled = filled
        self.sequence = sequence
        self.level: _Level | None = None


_COMPACT_AT = 32  # dead entries a level tolerates before it compacts its queue
_NO_SEQUENCE = -(1 << 63)  # below any sequence the service issues (a BIGINT)
# Module-level aliases: the hot path compares members by identity.
_BUY = Side.BUY
_MARKET = OrderType.MARKET
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK


class OrderBook:
    """The order book of one product. See the module docstring for the rules."""

    __slots__ = ("_ask_heap", "_asks", "_bid_heap", "_bids", "_index", "_last_sequence")

    def __init__(self) -> None:
        # Keys: asks by price, bids by -price; so the best level of either side is min key.
        self._bids: dict[int, _Level] = {}
        self._asks: dict[int, _Level] = {}
        self._bid_heap: list[int] = []
        self._ask_heap: list[int] = []
        self._index: dict[OrderId, _Entry] = {}
        self._last_sequence = _NO_SEQUENCE

    # --- commands ------------------------------------------------------------------------

    def submit(
        self, order: Order, *, band_low: int | None = None, band_high: int | None = None
    ) -> list[Event]:
        """Process a new order; ``band_low``/``band_high`` protect market orders."""
        # The hot path (profiled): validation, the crossing test, then resting inline.
        order_id = order.order_id
        sequence = order.sequence
        if type(sequence) is not int or sequence <= self._last_sequence:
            return [Rejected(order_id, RejectReason.STALE_SEQUENCE)]
        index = self._index
        if order_id in index:
            return [Rejected(order_id, RejectReason.DUPLICATE_ORDER_ID)]
        quantity = order.quantity
        if type(quantity) is not int or quantity <= 0:
            return [Rejected(order_id, RejectReason.INVALID_QUANTITY)]
        side = order.side
        market = order.order_type is _MARKET
        if market:
            if order.price is not None:
                return [Rejected(order_id, RejectReason.INVALID_PRICE)]
            limit = band_high if side is _BUY else band_low
            if type(limit) is not int or limit <= 0:
                return [Rejected(order_id, RejectReason.NO_PRICE_BAND)]
        else:
            limit = order.price
            if type(limit) is not int or limit <= 0:
                return [Rejected(order_id, RejectReason.INVALID_PRICE)]
        if side is _BUY:
            limit_key = limit
            opposite, opposite_heap = self._asks, self._ask_heap
        else:
            limit_key = -limit
            opposite, opposite_heap = self._bids, self._bid_heap
        # The best opposite key, dropping keys of removed levels (lazy deletion).
        while opposite_heap and opposite_heap[0] not in opposite:
            heappop(opposite_heap)
        crosses = bool(opposite_heap) and opposite_heap[0] <= limit_key
        tif = order.time_in_force
        if order.post_only:
            if market or tif is _IOC or tif is _FOK:
                return [Rejected(order_id, RejectReason.INVALID_POST_ONLY)]
            if crosses:
                return [Rejected(order_id, RejectReason.POST_ONLY_WOULD_CROSS)]

        self._last_sequence = sequence
        if not crosses:
            if tif is _FOK:
                reason = CancelReason.FOK
            elif market:
                reason = CancelReason.MARKET
            elif tif is _IOC:
                reason = CancelReason.IOC
            else:  # rest (inlined _rest)
                entry = _Entry(order, limit, quantity, 0, sequence)
                if side is _BUY:
                    book, heap, key = self._bids, self._bid_heap, -limit
                else:
                    book, heap, key = self._asks, self._ask_heap, limit
                level = book.get(key)
                if level is None:
                    level = self._new_level(book, heap, key, limit)
                level.queue.append(entry)
                level.quantity += quantity
                level.count += 1
                entry.level = level
                index[order_id] = entry
                return [Accepted(order_id), Rested(order_id, side, limit, quantity)]
            return [Accepted(order_id), Cancelled(order_id, reason, quantity)]

        entry = _Entry(order, limit, quantity, 0, sequence)
        events: list[Event] = [Accepted(order_id)]
        if tif is _FOK and not self._can_fill(entry, limit_key):
            events.append(Cancelled(order_id, CancelReason.FOK, quantity))
            return events
        self._finish(entry, self._match(entry, limit_key, events), market, tif, events)
        return events

    def cancel(
        self, order_id: OrderId, reason: CancelReason = CancelReason.REQUESTED
    ) -> list[Event]:
        """Take a resting order off the book."""
        entry = self._index.get(order_id)
        if entry is None:
            return [Rejected(order_id, RejectReason.UNKNOWN_ORDER)]
        remaining = entry.remaining
        self._unlink(entry)
        return [Cancelled(order_id, reason, remaining)]

    def amend(
        self,
        order_id: OrderId,
        new_quantity: int | None = None,
        new_price: int | None = None,
        *,
        sequence: int | None = None,
    ) -> list[Event]:
        """Change a resting order's open quantity and/or price (see the module docstring)."""
        entry = self._index.get(order_id)
        if entry is None:
            return [Rejected(order_id, RejectReason.UNKNOWN_ORDER)]
        if new_quantity is None and new_price is None:
            return [Rejected(order_id, RejectReason.NOTHING_TO_AMEND)]
        old_quantity, old_price = entry.remaining, entry.price
        quantity = old_quantity if new_quantity is None else new_quantity
        price = old_price if new_price is None else new_price
        if type(quantity) is not int or quantity <= 0:
            return [Rejected(order_id, RejectReason.INVALID_QUANTITY)]
        if type(price) is not int or price <= 0:
            return [Rejected(order_id, RejectReason.INVALID_PRICE)]
        if sequence is not None and (type(sequence) is not int or sequence <= self._last_sequence):
            return [Rejected(order_id, RejectReason.STALE_SEQUENCE)]
        level = entry.level
        assert level is not None
        if price == old_price and quantity <= old_quantity:
            entry.remaining = quantity
            level.quantity -= old_quantity - quantity
            return [
                Amended(order_id, old_price, old_quantity, price, quantity, True, entry.sequence)
            ]

        # Cancel/replace: loses time priority.
        if entry.is_buy:
            limit_key = price
            opposite, opposite_heap = self._asks, self._ask_heap
        else:
            limit_key = -price
            opposite, opposite_heap = self._bids, self._bid_heap
        while opposite_heap and opposite_heap[0] not in opposite:
            heappop(opposite_heap)
        crosses = bool(opposite_heap) and opposite_heap[0] <= limit_key
        if crosses and entry.order.post_only:
            return [Rejected(order_id, RejectReason.POST_ONLY_WOULD_CROSS)]
        if sequence is None:
            sequence = self._last_sequence + 1
        self._last_sequence = sequence
        self._unlink(entry)
        replacement = _Entry(entry.order, price, quantity, entry.filled, sequence)
        events: list[Event] = [
            Amended(order_id, old_price, old_quantity, price, quantity, False, sequence)
        ]
        stopped = self._match(replacement, limit_key, events) if crosses else False
        tif = entry.order.time_in_force
        self._finish(replacement, stopped, False, tif, events)
        return events

    # --- queries -------------------------------------------------------------------------

    def best_bid(self) -> int | None:
        key = self._best_key(self._bids, self._bid_heap)
        return None if key is None else -key

    def best_ask(self) -> int | None:
        return self._best_key(self._asks, self._ask_heap)

    def snapshot(self) -> BookSnapshot:
        return self.depth(None)

    def depth(self, levels: int | None = 10) -> BookSnapshot:
        """Aggregated price levels, best first, at most ``levels`` per side (None: all)."""

        def side(book: dict[int, _Level]) -> tuple[PriceLevel, ...]:
            keys = sorted(book)
            if levels is not None:
                keys = keys[:levels]
            return tuple(_aggregate(book[k]) for k in keys)

        return BookSnapshot(bids=side(self._bids), asks=side(self._asks))

    def level(self, side: Side, price: int) -> PriceLevel | None:
        """One price level's aggregate (its hidden orders included), or None if empty."""
        level = self._bids.get(-price) if side is Side.BUY else self._asks.get(price)
        return None if level is None else _aggregate(level)

    def orders_at(self, side: Side, price: int) -> list[OrderId]:
        """The ids of the orders resting at one price, in time priority (not the hidden
        ones)."""
        level = self._bids.get(-price) if side is Side.BUY else self._asks.get(price)
        if level is None:
            return []
        return [e.order_id for e in level.queue if e.remaining]

    def resting_orders(self) -> list[Order]:
        """Every resting order as it stands now (open quantity, current price and sequence),
        in sequence order: submitting them to an empty book rebuilds this book exactly."""
        return [
            dataclasses.replace(e.order, quantity=e.remaining, price=e.price, sequence=e.sequence)
            for e in sorted(self._index.values(), key=lambda e: e.sequence)
        ]

    def open_quantity(self, order_id: OrderId) -> int | None:
        entry = self._index.get(order_id)
        return None if entry is None else entry.remaining

    @property
    def last_sequence(self) -> int | None:
        """The highest sequence the book has accepted (None before the first order)."""
        return None if self._last_sequence == _NO_SEQUENCE else self._last_sequence

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._index

    @classmethod
    def restore(
        cls,
        orders: Iterable[Order],
        *,
        last_sequence: int | None = None,
        hidden: Iterable[tuple[Side, int, int, int]] = (),
    ) -> OrderBook:
        """Rebuild a book from resting orders (e.g. loaded from the database after a crash).

        They are submitted in sequence order; each must rest without trading, or ``ValueError``.
        ``last_sequence`` (if given) is the highest sequence the service has issued.

        ``hidden``: (side, price, open quantity, orders) of resting orders counted but not
        given, each behind every given order of its level in time priority: the part of a
        book a caller knows no order of its will reach (``app.market.reach``). They count in
        the levels' aggregates (``level``, ``depth``); if matching ever needs one, it raises
        ``BookIncomplete`` (the book it was given was too short for the orders sent).
        """
        book = cls()
        for order in sorted(orders, key=lambda o: o.sequence):
            events = book.submit(order)
            if len(events) != 2 or type(events[1]) is not Rested:
                raise ValueError(f"order {order.order_id!r} does not rest cleanly: {events}")
        for side, price, quantity, count in hidden:
            if type(price) is not int or price <= 0 or quantity <= 0 or count <= 0:
                raise ValueError(f"hidden orders {side} {price}: {quantity} in {count} orders")
            if side is _BUY:
                sided, heap, key = book._bids, book._bid_heap, -price
            else:
                sided, heap, key = book._asks, book._ask_heap, price
            level = sided.get(key) or book._new_level(sided, heap, key, price)
            level.hidden_quantity += quantity
            level.hidden_count += count
        if last_sequence is not None:
            if last_sequence < book._last_sequence:
                raise ValueError("last_sequence is below a restored order's sequence")
            book._last_sequence = last_sequence
        return book

    # --- the engine ----------------------------------------------------------------------

    @staticmethod
    def _best_key(book: dict[int, _Level], heap: list[int]) -> int | None:
        while heap:
            key = heap[0]
            if key in book:
                return key
            heappop(heap)
        return None

    def _match(self, taker: _Entry, limit_key: int, events: list[Event]) -> bool:
        """Trade ``taker`` against the opposite side up to ``limit_key``; return True if
        self-trade prevention stopped it."""
        if taker.is_buy:
            book, heap, taker_side = self._asks, self._ask_heap, Side.BUY
        else:
            book, heap, taker_side = self._bids, self._bid_heap, Side.SELL
        index = self._index
        remaining = taker.remaining
        taker_id = taker.order_id
        owner = taker.owner
        is_buy = taker.is_buy
        limit = taker.price
        filled = 0
        stopped = False
        while remaining:
            while heap and heap[0] not in book:
                heappop(heap)
            if not heap or heap[0] > limit_key:
                break
            key = heap[0]
            level = book[key]
            price = level.price
            queue = level.queue
            improvement = limit - price if is_buy else 0
            while remaining and level.count:
                maker = queue[0]
                open_qty = maker.remaining
                if not open_qty:  # dead (cancelled) entry
                    queue.popleft()
                    level.dead -= 1
                    continue
                if maker.owner == owner:
                    stopped = True
                    break
                qty = remaining if remaining < open_qty else open_qty
                remaining -= qty
                filled += qty
                level.quantity -= qty
                maker.filled += qty
                events.append(
                    Trade(
                        maker.order_id,
                        taker_id,
                        price,
                        qty,
                        maker.owner,
                        owner,
                        taker_side,
                        improvement * qty,
                    )
                )
                if qty == open_qty:
                    maker.remaining = 0
                    queue.popleft()
                    level.count -= 1
                    del index[maker.order_id]
                    events.append(Done(maker.order_id, maker.filled))
                else:
                    maker.remaining = open_qty - qty
            if not level.count:
                if level.hidden_count:  # only hidden orders left here
                    if remaining and not stopped:
                        raise BookIncomplete(f"the level at {price} goes on beyond the book given")
                    break
                del book[key]
                heappop(heap)
            if stopped:
                break
        taker.remaining = remaining
        taker.filled += filled
        return stopped

    def _finish(
        self,
        entry: _Entry,
        stopped: bool,
        market: bool,
        tif: TimeInForce,
        events: list[Event],
    ) -> None:
        """After matching: the incoming order is done, cancelled, or rests."""
        order_id = entry.order_id
        remaining = entry.remaining
        if not remaining:
            events.append(Done(order_id, entry.filled))
        elif stopped:
            events.append(Cancelled(order_id, CancelReason.SELF_TRADE, remaining))
        elif market:
            events.append(Cancelled(order_id, CancelReason.MARKET, remaining))
        elif tif is _IOC:
            events.append(Cancelled(order_id, CancelReason.IOC, remaining))
        elif tif is _FOK:  # pragma: no cover - _can_fill said it would fill
            raise AssertionError("a FOK order was left with a remainder")
        else:
            self._rest(entry)
            events.append(Rested(order_id, entry.order.side, entry.price, remaining))

    def _rest(self, entry: _Entry) -> None:
        if entry.is_buy:
            book, heap, key = self._bids, self._bid_heap, -entry.price
        else:
            book, heap, key = self._asks, self._ask_heap, entry.price
        level = book.get(key)
        if level is None:
            level = self._new_level(book, heap, key, entry.price)
        level.queue.append(entry)
        level.quantity += entry.remaining
        level.count += 1
        entry.level = level
        self._index[entry.order_id] = entry

    @staticmethod
    def _new_level(book: dict[int, _Level], heap: list[int], key: int, price: int) -> _Level:
        level = book[key] = _Level(price)
        heappush(heap, key)
        if len(heap) > 2 * len(book) + 64:  # too many stale keys: rebuild the heap
            heap[:] = book
            heapify(heap)
        return level

    def _unlink(self, entry: _Entry) -> None:
        """Remove a resting order from its level and the index (no event)."""
        level = entry.level
        assert level is not None
        del self._index[entry.order_id]
        level.quantity -= entry.remaining
        level.count -= 1
        entry.remaining = 0
        entry.level = None
        if not level.count and not level.hidden_count:
            if entry.is_buy:
                del self._bids[-level.price]
            else:
                del self._asks[level.price]
            return
        queue = level.queue
        if queue[-1] is entry:
            queue.pop()
        elif queue[0] is entry:
            queue.popleft()
        else:
            level.dead += 1
            if level.dead > _COMPACT_AT and level.dead > 2 * level.count:
                level.queue = deque(e for e in queue if e.remaining)
                level.dead = 0

    def _can_fill(self, taker: _Entry, limit_key: int) -> bool:
        """FOK check: can the whole quantity trade now, in priority order, before the first
        resting order of the same owner (where self-trade prevention would stop it)?"""
        book = self._asks if taker.is_buy else self._bids
        needed = taker.remaining
        owner = taker.owner
        for key in sorted(k for k in book if k <= limit_key):
            for maker in book[key].queue:
                if not maker.remaining:
                    continue
                if maker.owner == owner:
                    return False
                needed -= maker.remaining
                if needed <= 0:
                    return True
            if book[key].hidden_count:
                raise BookIncomplete(
                    f"the level at {book[key].price} goes on beyond the book given"
                )
        return False
