"""The continuous order book (``app.market.matching``): pure, no database.

Table-driven scenarios for each rule, then property tests: random command streams through the
book and through a naive list-based reference model (written from the rules, not from the
engine) give identical events and identical resting books, and the invariants hold after
every command.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.market.matching import (
    Accepted,
    Amended,
    BookSnapshot,
    Cancelled,
    CancelReason,
    Done,
    Event,
    Order,
    OrderBook,
    OrderId,
    OrderType,
    PriceLevel,
    Rejected,
    RejectReason,
    Rested,
    Side,
    TimeInForce,
    Trade,
    limit_order,
    market_order,
)

BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK, GTD = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTD

# --- commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    order: Order
    band_low: int | None = None
    band_high: int | None = None


@dataclass(frozen=True)
class Cancel:
    order_id: OrderId
    reason: CancelReason = CancelReason.REQUESTED


@dataclass(frozen=True)
class Amend:
    order_id: OrderId
    quantity: int | None = None
    price: int | None = None
    sequence: int | None = None


Command = Submit | Cancel | Amend


def apply(book: OrderBook | ModelBook, command: Command) -> list[Event]:
    if isinstance(command, Submit):
        return book.submit(command.order, band_low=command.band_low, band_high=command.band_high)
    if isinstance(command, Cancel):
        return book.cancel(command.order_id, command.reason)
    return book.amend(command.order_id, command.quantity, command.price, sequence=command.sequence)


def run(commands: Sequence[Command]) -> tuple[OrderBook, list[list[Event]]]:
    book = OrderBook()
    return book, [apply(book, c) for c in commands]


_seq = itertools.count(1)  # sequences only need to grow within a scenario


def buy(
    oid: int,
    price: int,
    qty: int,
    owner: str = "A",
    tif: TimeInForce = GTC,
    post_only: bool = False,
) -> Submit:
    return Submit(
        limit_order(
            oid, BUY, price, qty, owner=owner, sequence=next(_seq), time_in_force=tif,
            post_only=post_only,
        )
    )  # fmt: skip


def sell(
    oid: int,
    price: int,
    qty: int,
    owner: str = "B",
    tif: TimeInForce = GTC,
    post_only: bool = False,
) -> Submit:
    return Submit(
        limit_order(
            oid, SELL, price, qty, owner=owner, sequence=next(_seq), time_in_force=tif,
            post_only=post_only,
        )
    )  # fmt: skip


def mkt(
    oid: int,
    side: Side,
    qty: int,
    owner: str = "C",
    band: tuple[int | None, int | None] = (None, None),
    tif: TimeInForce = IOC,
) -> Submit:
    order = market_order(oid, side, qty, owner=owner, sequence=next(_seq), time_in_force=tif)
    return Submit(order, band_low=band[0], band_high=band[1])


def trade(
    maker: int, taker: int, price: int, qty: int, mo: str, to: str, side: Side, impr: int = 0
) -> Trade:
    return Trade(maker, taker, price, qty, mo, to, side, impr)


def levels(*rows: tuple[int, int, int]) -> tuple[PriceLevel, ...]:
    return tuple(PriceLevel(*row) for row in rows)


# --- table-driven scenarios --------------------------------------------------------------

SCENARIOS = [
    pytest.param(
        [sell(1, 1000, 10)],
        buy(2, 1000, 10),
        [Accepted(2), trade(1, 2, 1000, 10, "B", "A", BUY), Done(1, 10), Done(2, 10)],
        BookSnapshot((), ()),
        id="simple-cross",
    ),
    pytest.param(
        [sell(1, 1000, 10)],
        buy(2, 999, 10),
        [Accepted(2), Rested(2, BUY, 999, 10)],
        BookSnapshot(levels((999, 10, 1)), levels((1000, 10, 1))),
        id="no-cross-rests",
    ),
    pytest.param(
        [sell(1, 1000, 5), sell(2, 1001, 5), sell(3, 1003, 5)],
        buy(4, 1002, 12),
        [
            Accepted(4),
            trade(1, 4, 1000, 5, "B", "A", BUY, impr=10),
            Done(1, 5),
            trade(2, 4, 1001, 5, "B", "A", BUY, impr=5),
            Done(2, 5),
            Rested(4, BUY, 1002, 2),
        ],
        BookSnapshot(levels((1002, 2, 1)), levels((1003, 5, 1))),
        id="partial-fills-across-levels-with-price-improvement",
    ),
    pytest.param(
        [buy(1, 1000, 5, "A"), buy(2, 1000, 5, "D"), buy(3, 1000, 5, "E")],
        sell(4, 990, 7),
        [
            Accepted(4),
            trade(1, 4, 1000, 5, "A", "B", SELL),
            Done(1, 5),
            trade(2, 4, 1000, 2, "D", "B", SELL),
            Done(4, 7),
        ],
        BookSnapshot(levels((1000, 8, 2)), ()),
        id="time-priority-at-one-level",
    ),
    pytest.param(
        [sell(1, 1000, 5), sell(2, 1050, 5), sell(3, 1200, 5)],
        mkt(4, BUY, 20, band=(None, 1100)),
        [
            Accepted(4),
            trade(1, 4, 1000, 5, "B", "C", BUY, impr=500),
            Done(1, 5),
            trade(2, 4, 1050, 5, "B", "C", BUY, impr=250),
            Done(2, 5),
            Cancelled(4, CancelReason.MARKET, 10),
        ],
        BookSnapshot((), levels((1200, 5, 1))),
        id="market-buy-stops-at-band",
    ),
    pytest.param(
        [buy(1, 1000, 5), buy(2, 900, 5)],
        mkt(3, SELL, 8, band=(950, None)),
        [
            Accepted(3),
            trade(1, 3, 1000, 5, "A", "C", SELL),
            Done(1, 5),
            Cancelled(3, CancelReason.MARKET, 3),
        ],
        BookSnapshot(levels((900, 5, 1)), ()),
        id="market-sell-stops-at-band",
    ),
    pytest.param(
        [sell(1, 1000, 5)],
        mkt(2, BUY, 5, band=(900, None)),
        [Rejected(2, RejectReason.NO_PRICE_BAND)],
        BookSnapshot((), levels((1000, 5, 1))),
        id="market-buy-without-band-high-rejected",
    ),
    pytest.param(
        [],
        mkt(1, BUY, 5, band=(None, 1100)),
        [Accepted(1), Cancelled(1, CancelReason.MARKET, 5)],
        BookSnapshot((), ()),
        id="market-order-never-rests",
    ),
    pytest.param(
        [sell(1, 1000, 5), sell(2, 1010, 5)],
        buy(3, 1005, 8, tif=IOC),
        [
            Accepted(3),
            trade(1, 3, 1000, 5, "B", "A", BUY, impr=25),
            Done(1, 5),
            Cancelled(3, CancelReason.IOC, 3),
        ],
        BookSnapshot((), levels((1010, 5, 1))),
        id="ioc-remainder-cancelled",
    ),
    pytest.param(
        [sell(1, 1000, 5), sell(2, 1010, 5)],
        buy(3, 1005, 8, tif=FOK),
        [Accepted(3), Cancelled(3, CancelReason.FOK, 8)],
        BookSnapshot((), levels((1000, 5, 1), (1010, 5, 1))),
        id="fok-not-enough-touches-nothing",
    ),
    pytest.param(
        [sell(1, 1000, 5), sell(2, 1010, 5)],
        buy(3, 1010, 8, tif=FOK),
        [
            Accepted(3),
            trade(1, 3, 1000, 5, "B", "A", BUY, impr=50),
            Done(1, 5),
            trade(2, 3, 1010, 3, "B", "A", BUY),
            Done(3, 8),
        ],
        BookSnapshot((), levels((1010, 2, 1))),
        id="fok-fills-entirely",
    ),
    pytest.param(
        [sell(1, 1000, 5, "B"), sell(2, 1000, 5, "A")],
        buy(3, 1000, 8, "A", tif=FOK),
        [Accepted(3), Cancelled(3, CancelReason.FOK, 8)],
        BookSnapshot((), levels((1000, 10, 2))),
        id="fok-counts-self-trade-prevention",
    ),
    pytest.param(
        [sell(1, 1000, 5)],
        buy(2, 1000, 5, post_only=True),
        [Rejected(2, RejectReason.POST_ONLY_WOULD_CROSS)],
        BookSnapshot((), levels((1000, 5, 1))),
        id="post-only-would-cross-rejected",
    ),
    pytest.param(
        [sell(1, 1000, 5)],
        buy(2, 999, 5, post_only=True),
        [Accepted(2), Rested(2, BUY, 999, 5)],
        BookSnapshot(levels((999, 5, 1)), levels((1000, 5, 1))),
        id="post-only-rests",
    ),
    pytest.param(
        [],
        buy(1, 999, 5, tif=IOC, post_only=True),
        [Rejected(1, RejectReason.INVALID_POST_ONLY)],
        BookSnapshot((), ()),
        id="post-only-ioc-invalid",
    ),
    pytest.param(
        [sell(1, 1000, 5, "B"), sell(2, 1000, 5, "A"), sell(3, 1000, 5, "B")],
        buy(4, 1000, 12, "A"),
        [
            Accepted(4),
            trade(1, 4, 1000, 5, "B", "A", BUY),
            Done(1, 5),
            Cancelled(4, CancelReason.SELF_TRADE, 7),
        ],
        BookSnapshot((), levels((1000, 10, 2))),
        id="self-trade-prevention-cancels-newest",
    ),
    pytest.param(
        [sell(1, 1000, 5, "A")],
        buy(2, 1000, 5, "A", tif=GTD),
        [Accepted(2), Cancelled(2, CancelReason.SELF_TRADE, 5)],
        BookSnapshot((), levels((1000, 5, 1))),
        id="self-trade-prevention-before-any-trade",
    ),
    pytest.param(
        [buy(1, 1000, 5), buy(2, 1000, 5, "D")],
        Amend(1, quantity=3),
        [Amended(1, 1000, 5, 1000, 3, True, 0)],  # sequence patched in the test
        BookSnapshot(levels((1000, 8, 2)), ()),
        id="amend-down-keeps-priority",
    ),
    pytest.param(
        [buy(1, 1000, 5), buy(2, 1000, 5, "D")],
        Amend(1, quantity=6),
        [Amended(1, 1000, 5, 1000, 6, False, 0), Rested(1, BUY, 1000, 6)],
        BookSnapshot(levels((1000, 11, 2)), ()),
        id="amend-up-loses-priority",
    ),
    pytest.param(
        [buy(1, 1000, 5), sell(2, 1010, 5)],
        Amend(1, price=1010),
        [
            Amended(1, 1000, 5, 1010, 5, False, 0),
            trade(2, 1, 1010, 5, "B", "A", BUY),
            Done(2, 5),
            Done(1, 5),
        ],
        BookSnapshot((), ()),
        id="amend-price-through-the-book-trades",
    ),
    pytest.param(
        [buy(1, 1000, 5, post_only=True), sell(2, 1010, 5)],
        Amend(1, price=1010),
        [Rejected(1, RejectReason.POST_ONLY_WOULD_CROSS)],
        BookSnapshot(levels((1000, 5, 1)), levels((1010, 5, 1))),
        id="amend-post-only-through-the-book-rejected",
    ),
    pytest.param(
        [buy(1, 1000, 5), buy(2, 1000, 5, "D")],
        Cancel(1),
        [Cancelled(1, CancelReason.REQUESTED, 5)],
        BookSnapshot(levels((1000, 5, 1)), ()),
        id="cancel",
    ),
    pytest.param(
        [buy(1, 1000, 5)],
        Cancel(1, CancelReason.EXPIRED),
        [Cancelled(1, CancelReason.EXPIRED, 5)],
        BookSnapshot((), ()),
        id="gtd-expiry-is-a-cancel",
    ),
    pytest.param(
        [buy(1, 1000, 5)],
        Cancel(99),
        [Rejected(99, RejectReason.UNKNOWN_ORDER)],
        BookSnapshot(levels((1000, 5, 1)), ()),
        id="cancel-unknown",
    ),
    pytest.param(
        [buy(1, 1000, 5)],
        buy(1, 990, 5),
        [Rejected(1, RejectReason.DUPLICATE_ORDER_ID)],
        BookSnapshot(levels((1000, 5, 1)), ()),
        id="duplicate-id",
    ),
    pytest.param(
        [],
        buy(1, 1000, 0),
        [Rejected(1, RejectReason.INVALID_QUANTITY)],
        BookSnapshot((), ()),
        id="zero-quantity",
    ),
    pytest.param(
        [],
        buy(1, 0, 5),
        [Rejected(1, RejectReason.INVALID_PRICE)],
        BookSnapshot((), ()),
        id="zero-price",
    ),
    pytest.param(
        [buy(1, 1000, 5)],
        Submit(limit_order(2, SELL, 1100, 5, owner="B", sequence=0)),
        [Rejected(2, RejectReason.STALE_SEQUENCE)],
        BookSnapshot(levels((1000, 5, 1)), ()),
        id="stale-sequence",
    ),
]


@pytest.mark.parametrize(("setup", "action", "expected", "book_after"), SCENARIOS)
def test_scenario(
    setup: list[Command], action: Command, expected: list[Event], book_after: BookSnapshot
) -> None:
    book, _ = run(setup)
    events = apply(book, action)
    for event in expected:  # amend sequences depend on the counter: take the engine's
        if isinstance(event, Amended):
            event.sequence = next(e.sequence for e in events if isinstance(e, Amended))
    assert events == expected
    assert book.snapshot() == book_after
    assert_invariants_hold(book)


class TestPriority:
    def test_amend_down_keeps_the_place_in_the_queue(self) -> None:
        book, _ = run([buy(1, 1000, 5), buy(2, 1000, 5, "D"), Amend(1, quantity=2)])
        assert book.orders_at(BUY, 1000) == [1, 2]
        events = book.submit(limit_order(3, SELL, 1000, 3, owner="B", sequence=next(_seq)))
        assert [e.maker_id for e in events if isinstance(e, Trade)] == [1, 2]

    def test_amend_up_and_price_change_go_to_the_back(self) -> None:
        book, _ = run([buy(1, 1000, 5), buy(2, 1000, 5, "D"), Amend(1, quantity=6)])
        assert book.orders_at(BUY, 1000) == [2, 1]
        book, _ = run([buy(1, 1000, 5), buy(2, 999, 5, "D"), Amend(1, price=999)])
        assert book.orders_at(BUY, 999) == [2, 1]

    def test_amend_takes_the_given_sequence(self) -> None:
        book, _ = run([buy(1, 1000, 5)])
        events = book.amend(1, new_price=990, sequence=10**9)
        assert events[0] == Amended(1, 1000, 5, 990, 5, False, 10**9)
        assert book.last_sequence == 10**9
        assert book.amend(1, new_price=980, sequence=5) == [
            Rejected(1, RejectReason.STALE_SEQUENCE)
        ]

    def test_cancel_in_the_middle_of_a_queue(self) -> None:
        book, _ = run([buy(i, 1000, 1, f"o{i}") for i in range(1, 101)])
        for i in range(2, 100):
            book.cancel(i)
        assert book.orders_at(BUY, 1000) == [1, 100]
        assert book.snapshot().bids == levels((1000, 2, 2))
        events = book.submit(limit_order(200, SELL, 1000, 2, owner="B", sequence=next(_seq)))
        assert [e.maker_id for e in events if isinstance(e, Trade)] == [1, 100]
        assert len(book) == 0

    def test_string_enums_are_accepted(self) -> None:
        order = Order(1, "buy", 5, 1000, "A", 1, "limit", "gtc")  # type: ignore[arg-type]
        assert order.side is BUY
        assert order.order_type is OrderType.LIMIT
        assert order.time_in_force is GTC


class TestQueries:
    def test_best_prices_and_depth(self) -> None:
        book, _ = run([buy(1, 990, 1), buy(2, 995, 2), sell(3, 1005, 3), sell(4, 1001, 4)])
        assert (book.best_bid(), book.best_ask()) == (995, 1001)
        assert book.depth(1) == BookSnapshot(levels((995, 2, 1)), levels((1001, 4, 1)))
        assert book.open_quantity(3) == 3
        assert book.open_quantity(99) is None
        assert 1 in book
        assert len(book) == 4

    def test_restore_rebuilds_the_same_queues(self) -> None:
        book, _ = run(
            [buy(1, 1000, 5), buy(2, 1000, 5, "D"), sell(3, 1010, 4), Amend(1, quantity=7)]
        )
        copy = OrderBook.restore(book.resting_orders(), last_sequence=book.last_sequence)
        assert copy.snapshot() == book.snapshot()
        assert copy.orders_at(BUY, 1000) == [2, 1]
        assert copy.resting_orders() == book.resting_orders()

    def test_restore_refuses_a_crossed_book(self) -> None:
        orders = [
            limit_order(1, BUY, 1000, 5, owner="A", sequence=1),
            limit_order(2, SELL, 1000, 5, owner="B", sequence=2),
        ]
        with pytest.raises(ValueError, match="does not rest"):
            OrderBook.restore(orders)


# --- the reference model -----------------------------------------------------------------


@dataclass
class _ModelOrder:
    order: Order
    price: int
    remaining: int
    filled: int
    sequence: int

    @property
    def is_buy(self) -> bool:
        return self.order.side is BUY


@dataclass
class ModelBook:
    """A naive book: a list of resting orders, sorted on every use. Written from the rules."""

    resting: list[_ModelOrder] = field(default_factory=list)
    last_sequence: int | None = None

    def _find(self, order_id: OrderId) -> _ModelOrder | None:
        return next((o for o in self.resting if o.order.order_id == order_id), None)

    def _crossing(self, is_buy: bool, limit: int) -> list[_ModelOrder]:
        """Resting orders of the other side that an order with this limit would trade with,
        in priority order."""
        if is_buy:
            makers = [o for o in self.resting if not o.is_buy and o.price <= limit]
            return sorted(makers, key=lambda o: (o.price, o.sequence))
        makers = [o for o in self.resting if o.is_buy and o.price >= limit]
        return sorted(makers, key=lambda o: (-o.price, o.sequence))

    def _stale(self, sequence: object) -> bool:
        return not isinstance(sequence, int) or (
            self.last_sequence is not None and sequence <= self.last_sequence
        )

    def submit(
        self, order: Order, *, band_low: int | None = None, band_high: int | None = None
    ) -> list[Event]:
        oid = order.order_id
        if self._stale(order.sequence):
            return [Rejected(oid, RejectReason.STALE_SEQUENCE)]
        if self._find(oid) is not None:
            return [Rejected(oid, RejectReason.DUPLICATE_ORDER_ID)]
        if order.quantity <= 0:
            return [Rejected(oid, RejectReason.INVALID_QUANTITY)]
        is_buy = order.side is BUY
        market = order.order_type is OrderType.MARKET
        if market:
            if order.price is not None:
                return [Rejected(oid, RejectReason.INVALID_PRICE)]
            band = band_high if is_buy else band_low
            if band is None or band <= 0:
                return [Rejected(oid, RejectReason.NO_PRICE_BAND)]
            limit = band
        else:
            if order.price is None or order.price <= 0:
                return [Rejected(oid, RejectReason.INVALID_PRICE)]
            limit = order.price
        makers = self._crossing(is_buy, limit)
        tif = order.time_in_force
        if order.post_only:
            if market or tif in (IOC, FOK):
                return [Rejected(oid, RejectReason.INVALID_POST_ONLY)]
            if makers:
                return [Rejected(oid, RejectReason.POST_ONLY_WOULD_CROSS)]
        self.last_sequence = order.sequence
        events: list[Event] = [Accepted(oid)]
        if tif is FOK:
            available = 0
            for maker in makers:
                if maker.order.owner == order.owner:
                    break
                available += maker.remaining
            if available < order.quantity:
                events.append(Cancelled(oid, CancelReason.FOK, order.quantity))
                return events
        taker = _ModelOrder(order, limit, order.quantity, 0, order.sequence)
        self._take(taker, makers, market, events)
        return events

    def _take(
        self, taker: _ModelOrder, makers: list[_ModelOrder], market: bool, events: list[Event]
    ) -> None:
        order = taker.order
        self_trade = False
        for maker in makers:
            if not taker.remaining:
                break
            if maker.order.owner == order.owner:
                self_trade = True
                break
            qty = min(taker.remaining, maker.remaining)
            improvement = (taker.price - maker.price) * qty if taker.is_buy else 0
            events.append(
                Trade(
                    maker.order.order_id,
                    order.order_id,
                    maker.price,
                    qty,
                    maker.order.owner,
                    order.owner,
                    order.side,
                    improvement,
                )
            )
            taker.remaining -= qty
            taker.filled += qty
            maker.remaining -= qty
            maker.filled += qty
            if not maker.remaining:
                self.resting.remove(maker)
                events.append(Done(maker.order.order_id, maker.filled))
        oid = order.order_id
        if not taker.remaining:
            events.append(Done(oid, taker.filled))
        elif self_trade:
            events.append(Cancelled(oid, CancelReason.SELF_TRADE, taker.remaining))
        elif market:
            events.append(Cancelled(oid, CancelReason.MARKET, taker.remaining))
        elif order.time_in_force is IOC:
            events.append(Cancelled(oid, CancelReason.IOC, taker.remaining))
        else:
            self.resting.append(taker)
            events.append(Rested(oid, order.side, taker.price, taker.remaining))

    def cancel(
        self, order_id: OrderId, reason: CancelReason = CancelReason.REQUESTED
    ) -> list[Event]:
        found = self._find(order_id)
        if found is None:
            return [Rejected(order_id, RejectReason.UNKNOWN_ORDER)]
        self.resting.remove(found)
        return [Cancelled(order_id, reason, found.remaining)]

    def amend(
        self,
        order_id: OrderId,
        new_quantity: int | None = None,
        new_price: int | None = None,
        *,
        sequence: int | None = None,
    ) -> list[Event]:
        found = self._find(order_id)
        if found is None:
            return [Rejected(order_id, RejectReason.UNKNOWN_ORDER)]
        if new_quantity is None and new_price is None:
            return [Rejected(order_id, RejectReason.NOTHING_TO_AMEND)]
        quantity = found.remaining if new_quantity is None else new_quantity
        price = found.price if new_price is None else new_price
        if quantity <= 0:
            return [Rejected(order_id, RejectReason.INVALID_QUANTITY)]
        if price <= 0:
            return [Rejected(order_id, RejectReason.INVALID_PRICE)]
        if sequence is not None and self._stale(sequence):
            return [Rejected(order_id, RejectReason.STALE_SEQUENCE)]
        old = (found.price, found.remaining)
        if price == found.price and quantity <= found.remaining:
            found.remaining = quantity
            return [Amended(order_id, *old, price, quantity, True, found.sequence)]
        makers = self._crossing(found.is_buy, price)
        if makers and found.order.post_only:
            return [Rejected(order_id, RejectReason.POST_ONLY_WOULD_CROSS)]
        assert self.last_sequence is not None
        new_sequence = self.last_sequence + 1 if sequence is None else sequence
        self.last_sequence = new_sequence
        self.resting.remove(found)
        events: list[Event] = [Amended(order_id, *old, price, quantity, False, new_sequence)]
        replacement = _ModelOrder(found.order, price, quantity, found.filled, new_sequence)
        self._take(replacement, makers, False, events)
        return events

    def snapshot(self) -> BookSnapshot:
        def side(is_buy: bool) -> tuple[PriceLevel, ...]:
            by_price: dict[int, list[int]] = defaultdict(list)
            for o in self.resting:
                if o.is_buy == is_buy:
                    by_price[o.price].append(o.remaining)
            prices = sorted(by_price, reverse=is_buy)
            return tuple(PriceLevel(p, sum(by_price[p]), len(by_price[p])) for p in prices)

        return BookSnapshot(side(True), side(False))

    def resting_orders(self) -> list[Order]:
        return [
            Order(
                o.order.order_id,
                o.order.side,
                o.remaining,
                o.price,
                o.order.owner,
                o.sequence,
                o.order.order_type,
                o.order.time_in_force,
                o.order.post_only,
            )
            for o in sorted(self.resting, key=lambda o: o.sequence)
        ]


# --- invariants --------------------------------------------------------------------------


def assert_invariants_hold(book: OrderBook) -> None:
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is None or ask is None or bid < ask, f"crossed book: {bid} >= {ask}"
    snap = book.snapshot()
    for levels_ in (snap.bids, snap.asks):
        assert all(level.quantity > 0 and level.orders > 0 for level in levels_)
    assert [lv.price for lv in snap.bids] == sorted((lv.price for lv in snap.bids), reverse=True)
    assert [lv.price for lv in snap.asks] == sorted(lv.price for lv in snap.asks)
    assert sum(lv.orders for lv in (*snap.bids, *snap.asks)) == len(book)


@dataclass
class Ledger:
    """Tallies per order, from the events alone, to check conservation and limits."""

    original: dict[OrderId, int] = field(default_factory=dict)
    changed: dict[OrderId, int] = field(default_factory=lambda: defaultdict(int))
    filled: dict[OrderId, int] = field(default_factory=lambda: defaultdict(int))
    cancelled: dict[OrderId, int] = field(default_factory=lambda: defaultdict(int))
    price: dict[OrderId, int] = field(default_factory=dict)  # resting orders' prices
    finished: set[OrderId] = field(default_factory=set)

    def record(self, command: Command, events: list[Event]) -> None:
        taker_limit: int | None = None
        if isinstance(command, Submit):
            o = command.order
            if o.order_type is OrderType.MARKET:
                taker_limit = command.band_high if o.side is BUY else command.band_low
            else:
                taker_limit = o.price
        for event in events:
            if isinstance(event, Accepted):
                assert isinstance(command, Submit)
                oid = event.order_id  # a reused id starts a new order
                self.original[oid] = command.order.quantity
                self.changed[oid] = self.filled[oid] = self.cancelled[oid] = 0
                self.finished.discard(oid)
            elif isinstance(event, Amended):
                self.changed[event.order_id] += event.quantity - event.old_quantity
                assert self.price[event.order_id] == event.old_price
                self.price[event.order_id] = event.price
                taker_limit = event.price
            elif isinstance(event, Rested):
                self.price[event.order_id] = event.price
            elif isinstance(event, Trade):
                assert event.quantity > 0
                assert event.maker_owner != event.taker_owner, "self-trade"
                # Trades at the maker's own resting price, within the taker's limit.
                assert event.price == self.price[event.maker_id]
                assert taker_limit is not None
                if event.taker_side is BUY:  # the buyer is the taker: never above its limit
                    assert event.price <= taker_limit
                    assert event.buyer_improvement == (taker_limit - event.price) * event.quantity
                else:  # the buyer is the maker and pays exactly its limit
                    assert event.price >= taker_limit
                    assert event.buyer_improvement == 0
                self.filled[event.maker_id] += event.quantity
                self.filled[event.taker_id] += event.quantity
            elif isinstance(event, Cancelled):
                self.cancelled[event.order_id] += event.remaining
                self.finished.add(event.order_id)
                self.price.pop(event.order_id, None)
            elif isinstance(event, Done):
                assert event.filled == self.filled[event.order_id]
                self.finished.add(event.order_id)
                self.price.pop(event.order_id, None)

    def assert_conserved(self, book: OrderBook) -> None:
        for oid, original in self.original.items():
            open_qty = book.open_quantity(oid) or 0
            assert (oid in self.finished) == (open_qty == 0)
            assert original + self.changed[oid] == (
                self.filled[oid] + self.cancelled[oid] + open_qty
            ), f"order {oid}: quantities not conserved"


# --- random command streams --------------------------------------------------------------

OWNERS = ("A", "B", "C")
QUANTITIES = st.sampled_from([0, *range(1, 11), *range(1, 11)])  # 0 (invalid) now and then


@st.composite
def command_streams(draw: st.DrawFn) -> list[Command]:
    n = draw(st.integers(min_value=1, max_value=60))
    sequence = 0
    next_id = 0
    commands: list[Command] = []
    for _ in range(n):
        kind = draw(st.sampled_from(["limit"] * 6 + ["market", "cancel", "cancel", "amend"]))
        step = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 1, 1, 2, 0]))  # 0: a stale sequence
        sequence += step
        if kind in ("cancel", "amend"):
            oid = max(0, next_id - draw(st.integers(min_value=0, max_value=8)))  # recent ones
            if kind == "cancel":
                commands.append(Cancel(oid))
            else:
                quantity = draw(st.none() | st.sampled_from([0, 1, 1, 2, 2, 3, 5, 8, 12]))
                price = draw(st.none() | st.integers(min_value=95, max_value=105))
                seq = draw(st.sampled_from([None, None, sequence]))
                commands.append(Amend(oid, quantity, price, seq))
            continue
        reuse = draw(st.integers(min_value=0, max_value=19)) == 0
        oid = draw(st.integers(min_value=0, max_value=next_id)) if reuse else next_id + 1
        next_id = max(next_id, oid)
        side = draw(st.sampled_from([BUY, SELL]))
        quantity = draw(QUANTITIES)
        owner = draw(st.sampled_from(OWNERS))
        if kind == "market":
            tif = draw(st.sampled_from([IOC, FOK, GTC]))
            band = draw(st.integers(min_value=95, max_value=105) | st.none())
            order = Order(oid, side, quantity, None, owner, sequence, OrderType.MARKET, tif)
            commands.append(Submit(order, band_low=band, band_high=band))
        else:
            tif = draw(st.sampled_from([GTC, GTC, GTC, GTD, IOC, FOK]))
            post_only = draw(st.integers(min_value=0, max_value=7)) == 0
            price = draw(st.integers(min_value=95, max_value=105))
            order = Order(
                oid, side, quantity, price, owner, sequence, OrderType.LIMIT, tif, post_only
            )
            commands.append(Submit(order))
    return commands


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(command_streams())
def test_book_matches_the_model_and_invariants_hold(commands: list[Command]) -> None:
    """Same events and same resting book as the reference model after every command; no
    trade crosses a limit price, no self-trade, the book is never crossed and every order's
    quantity is conserved (filled + open + cancelled = original + amend changes)."""
    book, model, ledger = OrderBook(), ModelBook(), Ledger()
    for command in commands:
        events = apply(book, command)
        assert events == apply(model, command), command
        assert book.snapshot() == model.snapshot()
        ledger.record(command, events)
        assert_invariants_hold(book)
        ledger.assert_conserved(book)
    assert book.resting_orders() == model.resting_orders()
    assert book.last_sequence == model.last_sequence


@settings(PROPERTY, max_examples=150)
@given(command_streams())
def test_replay_gives_the_same_book(commands: list[Command]) -> None:
    book, events = run(commands)
    again, replayed = run(commands)
    assert replayed == events
    assert again.resting_orders() == book.resting_orders()
    restored = OrderBook.restore(book.resting_orders(), last_sequence=book.last_sequence)
    assert restored.snapshot() == book.snapshot()
    for level in book.snapshot().bids:
        assert restored.orders_at(BUY, level.price) == book.orders_at(BUY, level.price)
    for level in book.snapshot().asks:
        assert restored.orders_at(SELL, level.price) == book.orders_at(SELL, level.price)


def test_deep_queues_with_many_cancels_stay_consistent() -> None:
    """Long queues with cancels in the middle (lazy deletion and queue compaction) against
    the model, deterministically."""
    import random

    rng = random.Random(7)
    book, model = OrderBook(), ModelBook()
    live: list[OrderId] = []
    for i in range(1, 3001):
        r = rng.random()
        if r < 0.55 or not live:
            side = rng.choice([BUY, SELL])
            price = rng.randint(98, 100) if side is BUY else rng.randint(101, 103)
            cmd: Command = Submit(
                limit_order(i, side, price, rng.randint(1, 5), owner=rng.choice(OWNERS), sequence=i)
            )
        elif r < 0.9:
            cmd = Cancel(live.pop(rng.randrange(len(live))))
        else:
            side = rng.choice([BUY, SELL])
            cmd = Submit(
                limit_order(
                    i, side, 101 if side is BUY else 100, rng.randint(1, 20),
                    owner=rng.choice(OWNERS), sequence=i, time_in_force=IOC,
                )
            )  # fmt: skip
        got = apply(book, cmd)
        assert got == apply(model, cmd)
        for event in got:
            if isinstance(event, Rested):
                live.append(event.order_id)
            elif isinstance(event, Done) and event.order_id in live:
                live.remove(event.order_id)
    assert book.snapshot() == model.snapshot()
    assert book.resting_orders() == model.resting_orders()


def test_levels_created_and_removed_below_the_top_many_times() -> None:
    """Keys of removed levels stay in the heap until they surface; the heap is rebuilt when
    they pile up, and the book still agrees with the model."""
    book, model = OrderBook(), ModelBook()
    commands: list[Command] = [
        Submit(limit_order(1, BUY, 1000, 5, owner="A", sequence=1)),
        Submit(limit_order(2, SELL, 1001, 5, owner="B", sequence=2)),
    ]
    for i in range(3, 1003):
        side = BUY if i % 2 else SELL
        price = 900 - i % 300 if side is BUY else 1100 + i % 300
        commands.append(Submit(limit_order(i, side, price, 1, owner="C", sequence=i)))
        if i % 5:
            commands.append(Cancel(i))
    commands.append(Submit(market_order(5000, SELL, 400, owner="D", sequence=5000), band_low=1))
    for command in commands:
        assert apply(book, command) == apply(model, command)
    assert book.snapshot() == model.snapshot()
    assert len(book._bid_heap) <= 2 * len(book._bids) + 65
    assert len(book._ask_heap) <= 2 * len(book._asks) + 65


def test_the_benchmark_runs_and_its_checks_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench/matching`` at a tiny size: its invariant checks pass (no timing is looked at)."""
    import json

    from bench.matching import main

    assert main(["--operations", "3000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["name"] == "matching"
    assert result["ok"] is True
    assert result["unit"] == "ops/s"
    assert result["trades"] > 0
    assert result["value"] > 0
    assert result["baseline"] > 0
