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
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.driver import driver_transaction
from app.db.session import create_sessionmaker
from app.market import service as market_service
from app.market.matching import (
    Order,
    OrderBook,
    OrderType,
    Side,
    TimeInForce,
    Trade,
)
from app.market.reach import Reach
from app.market.repository import OrderRepository
from app.market.schemas import OrderCreate
from tests.market.helpers import market, order

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

    start = len(resting) + 1
    for sequence, spec in enumerate(group, start):
        incoming = _order(spec, sequence)
        events = whole.submit(incoming, band_low=BAND[0], band_high=BAND[1])
        assert part.submit(incoming, band_low=BAND[0], band_high=BAND[1]) == events
        # The levels ``place_orders`` publishes: the order's own and its makers'.
        touched = {(incoming.side, incoming.price)} if incoming.price is not None else set()
        for event in events:
            if isinstance(event, Trade):
                maker_side = Side.SELL if event.taker_side == Side.BUY else Side.BUY
                touched.add((maker_side, event.price))
        for side, price in touched:
            assert _level(part, side, price) == _level(whole, side, price)


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
            _, (resting, _), _, _ = await market_service.lock_product_and_read_book(
                session, product_id, reach=reach
            )
        expected = {i for i, (side, price) in placed.items() if reach.reads(side, price)}
        assert {str(o.id) for o in resting} == expected, reach
    assert len(expected) == len(placed)  # the last reads the whole book


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
    it), and trades as it would against the whole book."""
    m = await market(client, sellers=2, buyers=1)
    for price in [1_000, 1_000, 1_100, 1_110, 1_120]:
        r = await order(client, m.sellers[price % 2], m, "sell", price, 1)
        assert r.status_code == 201, r.text
    read: list[int] = []
    real = OrderRepository.open_orders_with_credit_holds

    async def spy(self: OrderRepository, *args: Any, **kwargs: Any) -> Any:
        book = await real(self, *args, **kwargs)
        read.append(len(book[0]))
        return book

    monkeypatch.setattr(OrderRepository, "open_orders_with_credit_holds", spy)
    r = await client.post(
        "/v1/orders",
        json={"product": m.code, "side": "buy", "price": 1_000, "quantity": 2},
        headers={**m.buyers[0].headers, "Idempotency-Key": "alone-1"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "filled"
    assert read == [2]  # the two sells at 1,000, not the three above
