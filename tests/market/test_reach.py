"""``app.market.reach``: the part of the book a group's lock call reads (migration 0028).

The property: a group of orders matched against only the resting orders its reach reads
gives exactly the events it gives against the whole book, and leaves every price level it
touches (its orders' own, its makers') with the same orders; and an order the reach covers
(one that arrived while the lock was awaited) can join the group on the same terms. Then the
database reads exactly the orders ``Reach.reads`` names, ``place_orders`` refuses an order its
reach does not cover, and an order placed alone reads only its own reach.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.driver import driver_transaction
from app.db.session import create_sessionmaker
from app.market import service as market_service
from app.market.matching import (
    BookIncomplete,
    Event,
    Order,
    OrderBook,
    OrderType,
    PriceLevel,
    Side,
    TimeInForce,
    Trade,
)
from app.market.reach import Reach
from app.market.repository import ProductRepository
from app.market.schemas import OrderCreate
from tests.market.helpers import assert_market_clean, market, order

BAND = (900, 1_100)
OWNERS = ["a", "b", "c", "d"]


@dataclass(frozen=True)
class Spec:
    side: Side
    price: int | None  # None: a market order
    quantity: int
    owner: str
    tif: TimeInForce
    post_only: bool


prices = st.integers(min_value=960, max_value=1_040)
resting_specs = st.builds(
    Spec,
    side=st.sampled_from(Side),
    price=prices,
    quantity=st.integers(1, 5),
    owner=st.sampled_from(OWNERS),
    tif=st.just(TimeInForce.GTC),
    post_only=st.just(False),
)
incoming_specs = st.builds(
    Spec,
    side=st.sampled_from(Side),
    price=st.one_of(prices, prices, prices, st.none()),
    quantity=st.integers(1, 8),
    owner=st.sampled_from(OWNERS),
    tif=st.sampled_from(TimeInForce).filter(lambda t: t != TimeInForce.GTD),
    post_only=st.booleans(),
)


def _order(spec: Spec, sequence: int) -> Order:
    market_order = spec.price is None
    return Order(
        order_id=f"o{sequence}",
        side=spec.side,
        quantity=spec.quantity,
        price=spec.price,
        owner=spec.owner,
        sequence=sequence,
        order_type=OrderType.MARKET if market_order else OrderType.LIMIT,
        time_in_force=TimeInForce.IOC if market_order else spec.tif,
        post_only=spec.post_only and not market_order,
    )


def _book(orders: list[Order]) -> OrderBook:
    """The book these orders leave (a random stream may cross: what rests is the book),
    restored from its resting orders as the service restores it from the database."""
    book = OrderBook()
    for o in orders:
        book.submit(o)
    return OrderBook.restore(book.resting_orders())


def _replay(
    group: list[Spec], start: int, whole: OrderBook, part: OrderBook
) -> Iterator[tuple[Order, list[Event]]]:
    """Submit the group's orders (sequences from ``start``) to both books; each gives the same
    events against the part as against the whole book."""
    for sequence, spec in enumerate(group, start):
        incoming = _order(spec, sequence)
        events = whole.submit(incoming, band_low=BAND[0], band_high=BAND[1])
        assert part.submit(incoming, band_low=BAND[0], band_high=BAND[1]) == events
        yield incoming, events


def _touched(incoming: Order, events: list[Event]) -> set[tuple[Side, int]]:
    """The levels ``place_orders`` publishes: the order's own and its makers'."""
    touched = {(incoming.side, incoming.price)} if incoming.price is not None else set()
    for event in events:
        if isinstance(event, Trade):
            maker_side = Side.SELL if event.taker_side == Side.BUY else Side.BUY
            touched.add((maker_side, event.price))
    return touched


def _level(book: OrderBook, side: Side, price: int) -> list[tuple[object, int | None]]:
    return [(i, book.open_quantity(i)) for i in book.orders_at(side, price)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    resting=st.lists(resting_specs, max_size=40),
    queued=st.lists(incoming_specs, min_size=1, max_size=6),
    late=st.lists(incoming_specs, max_size=6),
)
def test_a_group_matches_within_its_reach_as_against_the_whole_book(
    resting: list[Spec], queued: list[Spec], late: list[Spec]
) -> None:
    whole = _book([_order(s, i) for i, s in enumerate(resting, 1)])
    reach = Reach.of((s.side, s.price) for s in queued)
    part = OrderBook.restore(
        o
        for o in whole.resting_orders()
        if reach.reads(o.side, o.price)  # type: ignore[arg-type]
    )
    # What ``app.market.group`` takes: the queued orders, then the late ones as far as the
    # reach covers them (every queued order is covered by its own reach).
    group = list(queued)
    for spec in late:
        if not reach.covers(spec.side, spec.price):
            break
        group.append(spec)
    assert all(reach.covers(s.side, s.price) for s in queued)

    for incoming, events in _replay(group, len(resting) + 1, whole, part):
        for side, price in _touched(incoming, events):
            assert _level(part, side, price) == _level(whole, side, price)


def _read(whole: OrderBook, reach: Reach) -> OrderBook:
    given, hidden = _split(whole, reach)
    return OrderBook.restore(given, hidden=hidden)


def _split(whole: OrderBook, reach: Reach) -> tuple[list[Order], list[tuple[Side, int, int, int]]]:
    """What the lock call gives (migration 0029, in Python): of each side within ``reach``,
    in priority order, the orders with less than the side's need open before them; the rest
    counted per level (side, price, open quantity, orders), sorted."""
    given: list[Order] = []
    hidden: dict[tuple[Side, int], list[int]] = {}
    for side, need in ((Side.SELL, reach.asks_need), (Side.BUY, reach.bids_need)):
        within = [
            o
            for o in whole.resting_orders()
            if o.side == side and reach.reads(side, o.price)  # type: ignore[arg-type]
        ]
        within.sort(key=lambda o: (o.price if side == Side.SELL else -o.price, o.sequence))  # type: ignore[operator]
        before = 0
        for o in within:
            if need is None or before < need:
                given.append(o)
            else:
                level = hidden.setdefault((side, o.price), [0, 0])  # type: ignore[arg-type]
                level[0] += o.quantity
                level[1] += 1
            before += o.quantity
    return given, sorted((side, price, q, n) for (side, price), (q, n) in hidden.items())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    resting=st.lists(resting_specs, max_size=40),
    queued=st.lists(incoming_specs, min_size=1, max_size=6),
    late=st.lists(incoming_specs, max_size=6),
    room=st.integers(0, 6),
)
def test_a_group_matches_what_it_can_fill_as_against_the_whole_book(
    resting: list[Spec], queued: list[Spec], late: list[Spec], room: int
) -> None:
    """Read only as far as the group's quantities (and ``room`` more) can fill each side,
    the rest counted: the same events, and the levels it touches the same aggregates."""
    whole = _book([_order(s, i) for i, s in enumerate(resting, 1)])
    reach = replace(
        Reach.of((s.side, s.price) for s in queued),
        asks_need=sum(s.quantity for s in queued if s.side == Side.BUY) + room,
        bids_need=sum(s.quantity for s in queued if s.side == Side.SELL) + room,
    )
    part = _read(whole, reach)
    # What ``app.market.group._take`` takes: then the late orders as far as the reach covers
    # them and can fill them all.
    group = list(queued)
    assert reach.fits((s.side, s.quantity) for s in group)
    for spec in late:
        if not reach.covers(spec.side, spec.price) or not reach.fits(
            (s.side, s.quantity) for s in [*group, spec]
        ):
            break
        group.append(spec)

    for incoming, events in _replay(group, len(resting) + 1, whole, part):
        for side, price in _touched(incoming, events):
            assert part.level(side, price) == whole.level(side, price)
    # Every level within the reach is the whole book's, its orders not read counted.
    for side, levels in ((Side.BUY, whole.depth(None).bids), (Side.SELL, whole.depth(None).asks)):
        for level in levels:
            if reach.reads(side, level.price):
                assert part.level(side, level.price) == level


def test_matching_that_needs_an_order_not_given_raises() -> None:
    """A book given too short for an order: ``BookIncomplete``, never a wrong trade."""
    book = OrderBook.restore(
        [_order(Spec(Side.SELL, 1_000, 1, "a", TimeInForce.GTC, False), 1)],
        hidden=[(Side.SELL, 1_000, 5, 2)],
    )
    assert book.level(Side.SELL, 1_000) == PriceLevel(1_000, 6, 3)
    with pytest.raises(BookIncomplete):
        book.submit(_order(Spec(Side.BUY, 1_000, 2, "b", TimeInForce.GTC, False), 2))
    fok = OrderBook.restore(
        [_order(Spec(Side.SELL, 1_000, 1, "a", TimeInForce.GTC, False), 1)],
        hidden=[(Side.SELL, 1_001, 5, 2)],
    )
    with pytest.raises(BookIncomplete):
        fok.submit(_order(Spec(Side.BUY, 1_001, 2, "b", TimeInForce.FOK, False), 2))
    # What the orders given can fill is filled; the hidden orders stay behind.
    enough = OrderBook.restore(
        [_order(Spec(Side.SELL, 1_000, 2, "a", TimeInForce.GTC, False), 1)],
        hidden=[(Side.SELL, 1_000, 5, 2)],
    )
    events = enough.submit(_order(Spec(Side.BUY, 1_000, 2, "b", TimeInForce.GTC, False), 2))
    assert [type(e).__name__ for e in events] == ["Accepted", "Trade", "Done", "Done"]
    assert enough.level(Side.SELL, 1_000) == PriceLevel(1_000, 5, 2)
    assert enough.best_ask() == 1_000


def test_the_reach_of_orders() -> None:
    assert Reach.of([(Side.BUY, 1_000), (Side.SELL, 990), (Side.BUY, 1_010)]) == Reach(
        asks_to=1_010, bids_from=990
    )
    market_buy = Reach.of([(Side.BUY, None), (Side.SELL, 1_000)])
    assert market_buy == Reach(asks_all=True, asks_to=1_000, bids_from=1_000)
    assert market_buy.covers(Side.BUY, None)
    assert not market_buy.covers(Side.SELL, None)  # the buys were not read whole
    assert market_buy.covers(Side.BUY, 1_000)
    assert not market_buy.covers(Side.SELL, 999)  # would reach buys at 999, not read
    assert market_buy.covers(Side.BUY, 1_001)  # rests among the buys read (from 1,000)
    assert not market_buy.covers(Side.BUY, 999)  # would rest at 999, among buys not read
    assert market_buy.reads(Side.SELL, 5_000)
    assert not market_buy.reads(Side.BUY, 999)


async def test_a_groups_room_for_late_orders_is_sized_per_side() -> None:
    """``app.market.group._reach``: on each side, what is queued there, or twice what that
    side of the last group took, or ``ROOM_AT_LEAST`` orders of the largest quantity queued,
    whichever is most (at most ``MAX_GROUP`` such orders); a buy's room is read of the sells
    (``asks_need``), a sell's of the buys."""
    from app.market import group
    from app.market.schemas import OrderCreate

    def queue(*orders: tuple[str, int]) -> list[group._Waiting]:
        return [
            group._Waiting(
                uuid.uuid4(),
                OrderCreate.model_validate(
                    {"product": "JCR-TEST", "side": side, "price": 1_000, "quantity": quantity}
                ),
            )
            for side, quantity in orders
        ]

    floor = group.ROOM_AT_LEAST
    first = group._reach(queue(("buy", 1)))
    assert (first.asks_need, first.bids_need) == (floor, floor)  # nothing taken yet
    # The last group took 20 bought and 3 sold; the largest queued is 2.
    steady = group._reach(queue(("buy", 1), ("sell", 2)), (20, 3))
    assert (steady.asks_need, steady.bids_need) == (40, 2 * floor)
    # However much was taken, no more than MAX_GROUP orders of the largest queued.
    capped = group._reach(queue(("sell", 3)), (1_000, 0))
    assert capped.asks_need == group.MAX_GROUP * 3
    assert capped.bids_need == floor * 3
    # What is queued is always read for.
    many = group._reach(queue(*[("buy", 5)] * 10), (0, 0))
    assert many.asks_need == max(50, floor * 5)


async def test_the_lock_call_reads_exactly_what_the_reach_reads(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    m = await market(client, sellers=2, buyers=2)
    placed: dict[str, tuple[Side, int]] = {}
    for i, price in enumerate([990, 995, 1_000, 1_000, 1_005]):
        r = await order(client, m.buyers[i % 2], m, "buy", price - 20, 1)
        assert r.status_code == 201, r.text
        placed[r.json()["id"]] = (Side.BUY, price - 20)
        r = await order(client, m.sellers[i % 2], m, "sell", price + 20, 1)
        assert r.status_code == 201, r.text
        placed[r.json()["id"]] = (Side.SELL, price + 20)
    product_id = uuid.UUID(m.product["id"])
    reaches = [
        Reach(asks_to=1_015, bids_from=980),
        Reach(asks_to=1_009, bids_from=986),  # the levels on either side of the bounds
        Reach(asks_all=True, bids_from=1_000),
        Reach(bids_all=True),
        Reach(),  # nothing: no order of the group has a limit or a market side
        Reach(asks_all=True, bids_all=True),
    ]
    sessions = create_sessionmaker(engine)
    for reach in reaches:
        async with sessions() as session, driver_transaction(session):
            _, book, _, _ = await market_service.lock_product_and_read_book(
                session, product_id, reach=reach
            )
        resting = book.orders
        expected = {i for i, (side, price) in placed.items() if reach.reads(side, price)}
        assert {str(o.id) for o in resting} == expected, reach
    assert len(expected) == len(placed)  # the last reads the whole book


async def test_the_lock_call_reads_what_its_needs_can_fill_and_counts_the_rest(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Migration 0029 against its model (``_split``): for each need, the orders read and the
    levels counted are exactly the model's."""
    m = await market(client, sellers=2, buyers=2)
    for side, orgs, price, quantity in [
        ("sell", m.sellers, 1_000, 2),
        ("sell", m.sellers, 1_000, 1),
        ("sell", m.sellers, 1_001, 1),
        ("sell", m.sellers, 1_000, 3),  # behind the first two at 1,000
        ("buy", m.buyers, 999, 1),
        ("buy", m.buyers, 998, 4),
        ("buy", m.buyers, 999, 2),
    ]:
        r = await order(client, orgs[quantity % 2], m, side, price, quantity)
        assert r.status_code == 201, r.text
    product_id = uuid.UUID(m.product["id"])
    sessions = create_sessionmaker(engine)
    async with sessions() as session, driver_transaction(session):
        _, book, _, _ = await market_service.lock_product_and_read_book(session, product_id)
    whole = market_service.restore_book(book.orders)
    for need in [None, 0, 1, 2, 3, 4, 6, 7, 100]:
        for reach in [
            Reach(asks_all=True, bids_all=True, asks_need=need, bids_need=need),
            Reach(asks_to=1_000, bids_from=999, asks_need=need, bids_need=7),
        ]:
            async with sessions() as session, driver_transaction(session):
                _, book, _, _ = await market_service.lock_product_and_read_book(
                    session, product_id, reach=reach
                )
            given, hidden = _split(whole, reach)
            assert [o.id for o in book.orders] == [
                o.order_id for o in sorted(given, key=lambda o: o.sequence)
            ], reach
            assert sorted(book.hidden) == hidden, reach
            if need == 2 and reach.asks_all:  # the model, spelled out once
                assert hidden == [
                    (Side.BUY, 998, 4, 1),
                    (Side.SELL, 1_000, 4, 2),
                    (Side.SELL, 1_001, 1, 1),
                ]


async def test_an_order_beyond_the_part_of_the_book_read_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """``place_orders`` never matches an order against a part of the book that leaves out
    what the order can touch: given the reach the book was read with, it refuses one it does
    not cover, before anything is written."""
    m = await market(client, sellers=1, buyers=1)
    product_id = uuid.UUID(m.product["id"])
    reach = Reach.of([(Side.BUY, 1_000)])
    beyond = OrderCreate(product=m.code, side=Side.SELL, price=990, quantity=1)
    async with create_sessionmaker(engine)() as session, driver_transaction(session):
        product, book, blocks, sequences = await market_service.lock_product_and_read_book(
            session, product_id, reserve=2, reach=reach
        )
        with pytest.raises(ValueError, match="beyond the part of the book read"):
            await market_service.place_orders(
                session,
                product_id,
                [(uuid.UUID(m.sellers[0].id), beyond)],
                locked=product,
                batch_locked=True,
                read_book=book,
                read_blocks=blocks,
                sequences=sequences,
                reach=reach,
            )


async def test_an_order_placed_alone_reads_only_its_own_reach(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order with an ``Idempotency-Key`` is placed alone, in the request's transaction: it
    too reads only what it can reach (the sells at or below its price, the buys at or above
    it) and fill (the rest counted), and trades as it would against the whole book."""
    m = await market(client, sellers=2, buyers=1)
    for i, price in enumerate([1_000, 1_000, 1_000, 1_100, 1_110, 1_120]):
        r = await order(client, m.sellers[i % 2], m, "sell", price, 1)
        assert r.status_code == 201, r.text
    read: list[tuple[int, list[Any]]] = []
    real = ProductRepository.lock_and_read_book

    async def spy(self: ProductRepository, *args: Any, **kwargs: Any) -> Any:
        found = await real(self, *args, **kwargs)
        read.append((len(found[1].orders), list(found[1].hidden)))
        assert found[2] is None  # nothing deferred: no live blocks read
        return found

    monkeypatch.setattr(ProductRepository, "lock_and_read_book", spy)
    r = await client.post(
        "/v1/orders",
        json={"product": m.code, "side": "buy", "price": 1_000, "quantity": 2},
        headers={**m.buyers[0].headers, "Idempotency-Key": "alone-1"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "filled"
    # The two sells at 1,000 it fills, the third there counted; not the three above.
    assert read == [(2, [(Side.SELL, 1_000, 1, 1)])]


async def test_a_group_reads_the_blocks_its_fills_take_from_not_the_sellers_every_block(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
) -> None:
    """A seller with many resting sells has a held block for each. The lock call reads the
    blocks of the holds the group can fill (and those touching them) and the queued sellers'
    active blocks, not every block of every seller in reach (migration 0029); the group then
    settles on that copy what the database holds."""
    m = await market(client, sellers=2, buyers=1)
    for i in range(20):
        r = await order(client, m.sellers[0], m, "sell", 1_001 + i, 1)
        assert r.status_code == 201, r.text
    first_hold = (
        await session.execute(
            text(
                "SELECT c.hold_id FROM market_orders o"
                " JOIN market_order_credit_holds c ON c.order_id = o.id"
                " WHERE o.product_id = :p ORDER BY o.sequence LIMIT 1"
            ),
            {"p": m.product["id"]},
        )
    ).scalar_one()
    await session.rollback()
    product_id = uuid.UUID(m.product["id"])
    buyer, other_seller = uuid.UUID(m.buyers[0].id), uuid.UUID(m.sellers[1].id)
    items = [
        (buyer, OrderCreate(product=m.code, side=Side.BUY, price=1_001, quantity=1)),
        (other_seller, OrderCreate(product=m.code, side=Side.SELL, price=1_030, quantity=1)),
    ]
    reach = replace(Reach.of((b.side, b.price) for _, b in items), asks_need=1, bids_need=1)
    async with create_sessionmaker(engine)() as s, driver_transaction(s):
        product, book, blocks, sequences = await market_service.lock_product_and_read_book(
            s, product_id, [other_seller], reserve=2, reach=reach
        )
        assert blocks is not None
        holders, holds, rows = blocks
        assert (holders, holds) == ([other_seller], [first_hold])
        # The other seller's one active block, the hold's one block; and what touches them.
        assert sorted((r[2] == other_seller, r[5], r[9]) for r in rows if r[9]) == [
            (False, "held", True),
            (True, "active", True),
        ]
        assert len(rows) <= 6
        placed = await market_service.place_orders(
            s,
            product_id,
            items,
            locked=product,
            batch_locked=True,
            read_book=book,
            read_blocks=blocks,
            sequences=sequences,
            reach=reach,
            commit=True,
        )
    assert [p.order.status for p in placed] == ["filled", "open"]
    await assert_market_clean(session)
