"""Group commit (``app.market.group``): orders that arrive while one is being placed on the
same product are placed together under one lock and one commit, each answered as it would
have been alone; a group with a refused order is placed again one order at a time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from structlog.testing import capture_logs

from app.db.driver import CommitOutcomeUnknown, call_and_commit, driver_transaction
from app.db.session import create_sessionmaker
from app.db.url import libpq_url
from app.market import group
from app.market import service as market_service
from app.market.schemas import OrderCreate
from tests.factories import create_org
from tests.market.helpers import assert_market_clean, cash, market, order

PlaceOrders = Callable[..., Awaitable[list[market_service.PlacedOrder]]]


class Groups(list[int]):
    """The size of every call of ``place_orders``, and how many orders must queue behind the
    first before it goes on (set by the test)."""

    queued = 0


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> Groups:
    """The first call of ``place_orders`` waits before taking the lock until ``queued`` orders
    sent with it queue behind it (however slowly a loaded machine lets them arrive; 10 s at
    most), so that they form a group."""
    sizes = Groups()
    real: PlaceOrders = market_service.place_orders

    async def spy(
        session: AsyncSession,
        product_id: uuid.UUID,
        items: Sequence[tuple[uuid.UUID, OrderCreate]],
        **options: Any,
    ) -> list[market_service.PlacedOrder]:
        sizes.append(len(items))
        if len(sizes) == 1:
            for _ in range(1_000):  # polled: the queue is the module's own list
                if len(group._queues.get(product_id, [])) >= sizes.queued:
                    break
                await asyncio.sleep(0.01)
        return await real(session, product_id, items, **options)

    monkeypatch.setattr(market_service, "place_orders", spy)
    return sizes


async def _send_in_order(
    sends: Sequence[Awaitable[httpx.Response]], groups: Groups
) -> list[httpx.Response]:
    """Send concurrently, a little apart, each once the one before has reached the group code
    (queued, or given to ``place_orders``: counted by ``groups``), so that they arrive (and
    queue) in this order however slowly a loaded machine serves them (5 s at most each)."""
    before = sum(groups)
    tasks = []
    for sent, send in enumerate(sends, 1):
        tasks.append(asyncio.ensure_future(send))
        for _ in range(500):
            arrived = sum(groups) - before + sum(len(q) for q in group._queues.values())
            if arrived >= sent:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.03)
    return list(await asyncio.gather(*tasks))


async def _trades(session: AsyncSession) -> list[Any]:
    rows = await session.execute(
        text(
            "SELECT t.price, t.quantity, t.buyer_fee, t.seller_fee, b.sequence AS buy_seq,"
            " s.sequence AS sell_seq FROM market_trades t"
            " JOIN market_orders b ON b.id = t.buy_order_id"
            " JOIN market_orders s ON s.id = t.sell_order_id ORDER BY t.executed_at, t.id"
        )
    )
    out = list(rows)
    await session.rollback()
    return out


async def test_concurrent_orders_are_placed_as_one_group(
    client: httpx.AsyncClient, session: AsyncSession, groups: Groups
) -> None:
    m = await market(client, sellers=4, buyers=4, maker_fee_bps=10, taker_fee_bps=30)
    # A resting buy and sell first (alone), then eight orders at once: crossing both ways,
    # across price levels, some against the orders placed earlier in the same group.
    first = await order(client, m.buyers[0], m, "buy", 990, 3)
    assert first.status_code == 201, first.text
    groups.clear()
    sends = [
        order(client, m.sellers[0], m, "sell", 1_000, 4),
        order(client, m.buyers[1], m, "buy", 1_010, 2),
        order(client, m.sellers[1], m, "sell", 985, 5),
        order(client, m.buyers[2], m, "buy", 1_000, 6),
        order(client, m.sellers[2], m, "sell", 1_005, 1),
        order(client, m.buyers[3], m, "buy", 1_005, 2, time_in_force="ioc"),
        order(client, m.sellers[3], m, "sell", 995, 2),
        order(client, m.buyers[0], m, "buy", None, 1, type="market"),
    ]
    groups.queued = len(sends) - 1
    answers = await _send_in_order(sends, groups)
    assert [r.status_code for r in answers] == [201] * len(sends), [
        r.text for r in answers if r.status_code != 201
    ]
    # The first alone, then the others as one group, placed once (not retried one by one).
    assert groups == [1, len(sends) - 1]
    # The orders answered as placed one after the other in arrival order: sequences rise,
    # and every fill an answer shows is stored.
    sequences = [r.json()["sequence"] for r in answers]
    assert sequences == sorted(sequences)
    reported = sum(len(r.json()["trades"]) for r in answers)
    assert reported == len(await _trades(session))
    await assert_market_clean(session)


async def test_each_group_logs_how_long_it_awaited_and_held_the_lock(
    client: httpx.AsyncClient, groups: Groups
) -> None:
    """``market.group_placed`` (DEBUG, read by ``bench/orders --groups``): one per group, with
    its size and its times, the commit's inside the hold."""
    m = await market(client, sellers=2, buyers=2)
    sends = [
        order(client, m.sellers[0], m, "sell", 1_000, 2),
        order(client, m.buyers[0], m, "buy", 1_000, 1),
        order(client, m.buyers[1], m, "buy", 1_000, 1),
    ]
    groups.queued = len(sends) - 1
    with capture_logs() as logs:
        answers = await _send_in_order(sends, groups)
    assert [r.status_code for r in answers] == [201] * len(sends)
    placed = [e for e in logs if e["event"] == "market.group_placed"]
    assert [e["orders"] for e in placed] == groups == [1, 2]
    assert len({uuid.UUID(e["product_id"]) for e in placed}) == 1  # the one product
    for event in placed:
        assert event["lock_ms"] >= 0
        assert event["held_ms"] >= event["commit_ms"] >= 0
        assert isinstance(event["worker"], int)
    # The book each lock call read: empty, then the first group's resting sell.
    assert [e["book"] for e in placed] == [0, 1]


async def test_a_refused_order_sends_its_group_one_by_one(
    client: httpx.AsyncClient, session: AsyncSession, groups: Groups
) -> None:
    m = await market(client, sellers=2, buyers=2)
    broke = await create_org(client)  # no cash at all
    groups.clear()
    sends = [
        order(client, m.buyers[0], m, "buy", 1_000, 2),
        order(client, m.sellers[0], m, "sell", 1_000, 1),
        order(client, broke, m, "buy", 1_000, 1),  # insufficient_balance
        order(client, m.sellers[1], m, "sell", 990, 1, post_only=True),  # would cross: refused
        order(client, m.buyers[1], m, "buy", 1_000, 1),
        order(client, m.sellers[1], m, "sell", 1_000, 2),
    ]
    groups.queued = len(sends) - 1
    answers = await _send_in_order(sends, groups)
    codes = [r.status_code for r in answers]
    assert codes == [201, 201, 409, 409, 201, 201], [r.text for r in answers]
    assert answers[2].json()["code"] == "insufficient_balance"
    assert answers[3].json()["code"] == "order_rejected"
    # The first alone, then the group, refused, then its orders one at a time.
    assert groups == [1, len(sends) - 1] + [1] * (len(sends) - 1)
    # Nothing of the refused group stayed: each order is stored once, the refused ones not.
    stored = (await session.execute(text("SELECT count(*) FROM market_orders"))).scalar_one()
    await session.rollback()
    assert stored == 4
    assert await cash(client, broke) == (0, 0)
    await assert_market_clean(session)


async def test_a_client_order_id_repeated_inside_a_group_is_refused_once(
    client: httpx.AsyncClient, session: AsyncSession, groups: Groups
) -> None:
    """Two orders of one organisation with one ``client_order_id`` in one group: neither
    exists before the lock, so the group's one write call is what refuses the second (the
    unique constraint); the group is rolled back and placed one by one, where the first is
    placed and the second gets its 409."""
    m = await market(client, sellers=1, buyers=2)
    groups.clear()
    sends = [
        order(client, m.buyers[0], m, "buy", 990, 1),
        order(client, m.buyers[1], m, "buy", 995, 1, client_order_id="same"),
        order(client, m.sellers[0], m, "sell", 990, 2),
        order(client, m.buyers[1], m, "buy", 996, 1, client_order_id="same"),
    ]
    groups.queued = len(sends) - 1
    answers = await _send_in_order(sends, groups)
    codes = [r.status_code for r in answers]
    assert codes == [201, 201, 201, 409], [r.text for r in answers]
    assert answers[3].json()["code"] == "duplicate_client_order_id"
    assert groups == [1, len(sends) - 1] + [1] * (len(sends) - 1)
    stored = (await session.execute(text("SELECT count(*) FROM market_orders"))).scalar_one()
    await session.rollback()
    assert stored == 3
    await assert_market_clean(session)


async def test_orders_arriving_while_another_process_holds_the_lock_go_as_one_group(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine, groups: Groups
) -> None:
    """The group is taken once the lock is held: every order that queued while another
    process (here: another connection) held the product's lock goes in it, the first too."""
    m = await market(client, sellers=2, buyers=2)
    groups.clear()
    async with _lock_held_elsewhere(engine, m.product["id"]):
        sends = [
            asyncio.ensure_future(order(client, m.buyers[0], m, "buy", 1_000, 1)),
            asyncio.ensure_future(order(client, m.sellers[0], m, "sell", 1_000, 1)),
            asyncio.ensure_future(order(client, m.buyers[1], m, "buy", 1_000, 1)),
            asyncio.ensure_future(order(client, m.sellers[1], m, "sell", 1_000, 1)),
        ]
        await _until_queued(m.product["id"], len(sends))  # all four
        await asyncio.sleep(0.05)
        assert not any(s.done() for s in sends)  # nothing placed while the lock is held
    answers = await asyncio.gather(*sends)
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    assert groups == [4]
    assert [r.json()["status"] for r in answers] == ["filled"] * 4
    await assert_market_clean(session)


@pytest.mark.parametrize("committed", [True, False], ids=["answer-lost", "lost-before-commit"])
async def test_a_group_whose_connection_fails_at_its_commit_is_placed_exactly_once(
    client: httpx.AsyncClient,
    session: AsyncSession,
    groups: Groups,
    monkeypatch: pytest.MonkeyPatch,
    committed: bool,
) -> None:
    """The connection fails while the group's write call and commit are on their way, so
    the group cannot know whether it committed (``GroupOutcomeUnknown``). It looks: if its
    orders are stored, each is answered as placed; if not, they are placed one by one. Never
    twice, never lost. (The failure is made after or instead of the real call.)"""
    m = await market(client, sellers=2, buyers=2)
    real = call_and_commit

    async def failing(*args: Any, **kwargs: Any) -> None:
        if committed:
            await real(*args, **kwargs)
        raise CommitOutcomeUnknown("connection reset (made by the test)")

    monkeypatch.setattr(market_service, "call_and_commit", failing)
    groups.clear()
    sends = [
        order(client, m.sellers[0], m, "sell", 1_000, 2),
        order(client, m.buyers[0], m, "buy", 1_000, 1),
        order(client, m.buyers[1], m, "buy", 1_000, 1),
        order(client, m.sellers[1], m, "sell", 1_010, 1),
    ]
    groups.queued = len(sends) - 1
    with capture_logs() as logs:
        answers = await _send_in_order(sends, groups)
    assert [r.status_code for r in answers] == [201] * len(sends), [r.text for r in answers]
    unknown = [e for e in logs if e["event"] == "market.group_commit_unknown"]
    assert [(e["orders"], e["stored"]) for e in unknown] == [(len(sends) - 1, committed)]
    # The first alone, then the group; placed again one by one only if it was not stored.
    assert groups == [1, len(sends) - 1] + ([] if committed else [1] * (len(sends) - 1))
    rows = await session.execute(text("SELECT id, sequence FROM market_orders ORDER BY sequence"))
    stored = {row.id: row.sequence for row in rows}
    await session.rollback()
    assert stored == {uuid.UUID(r.json()["id"]): r.json()["sequence"] for r in answers}
    assert len(await _trades(session)) == 2
    await assert_market_clean(session)


@asynccontextmanager
async def _lock_held_elsewhere(engine: AsyncEngine, product_id: str) -> AsyncIterator[None]:
    """The product's lock held by another connection (as by another process) until the end
    of the block."""
    async with engine.connect() as other:
        await other.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('market:' || :p, 0))"),
            {"p": product_id},
        )
        yield
        await other.rollback()  # releases the lock


async def _until_queued(product_id: str, orders: int) -> None:
    """Until ``orders`` wait in this process's queue for the product (5 s at most)."""
    for _ in range(500):  # polled: the queue is the module's own list
        if len(group._queues.get(uuid.UUID(product_id), [])) == orders:
            return
        await asyncio.sleep(0.01)


async def _until_a_lock_call_waits(engine: AsyncEngine) -> None:
    """Until one advisory lock is awaited in the test's own database (another xdist worker's
    database may have its own), for 5 s at most."""
    for _ in range(500):
        async with engine.connect() as conn:
            waits = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database"
                    "                  WHERE datname = current_database())"
                )
            )
        if waits:
            break
        await asyncio.sleep(0.01)
    assert waits == 1


async def test_a_groups_sequences_are_taken_after_the_product_lock(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The lock call reserves its group's sequences (migration 0027) only once it holds the
    product lock: above those of every order placed by whoever held the lock before, as
    inserts' own sequences would be, so time priority follows the lock's order."""
    m = await market(client, sellers=1, buyers=1)
    product_id = m.product["id"]
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as holder:
        await market_service.lock_product(holder, uuid.UUID(product_id))

        async def lock_call() -> list[int]:
            async with sessionmaker() as session, driver_transaction(session):
                *_, sequences = await market_service.lock_product_and_read_book(
                    session, uuid.UUID(product_id), reserve=3
                )
                return sequences

        waiting = asyncio.create_task(lock_call())
        await _until_a_lock_call_waits(engine)
        # What the holder takes meanwhile (an order's insert would take the same).
        taken = await holder.scalar(
            text("SELECT nextval(pg_get_serial_sequence('market_orders', 'sequence'))")
        )
        await holder.commit()
    sequences = await waiting
    assert len(sequences) == 3
    assert sequences == sorted(sequences)
    assert sequences[0] > taken


@pytest.mark.parametrize("placed", [[1], [1, 2]], ids=["alone-flushed", "then-a-group-deferred"])
async def test_the_book_is_read_outside_the_session_and_the_orders_filled_are_written(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    groups: Groups,
    placed: list[int],
) -> None:
    """The lock call's resting orders are not the session's (loading them through the ORM cost
    more than the rest of the read); only those a group's fills and closes name become its,
    and their fills are written, by a flush (an order alone) or by the group's write call."""
    m = await market(client, sellers=3, buyers=3)
    sells = []
    for seller in m.sellers:
        r = await order(client, seller, m, "sell", 1_000, 1)
        assert r.status_code == 201, r.text
        sells.append(r.json()["id"])
    product_id = uuid.UUID(m.product["id"])
    async with create_sessionmaker(engine)() as reader, driver_transaction(reader):
        product, book, _, _ = await market_service.lock_product_and_read_book(reader, product_id)
        resting = book.orders
        assert product is not None
        assert product in reader
        assert [str(o.id) for o in resting] == sells
        assert all(inspect(o).transient for o in resting)

    buys = sum(placed)
    groups.clear()
    groups.queued = buys - 1
    answers = await _send_in_order(
        [order(client, m.buyers[i], m, "buy", 1_000, 1) for i in range(buys)], groups
    )
    assert [r.status_code for r in answers] == [201] * buys
    assert groups == placed
    rows = await session.execute(
        text("SELECT id::text, status FROM market_orders WHERE side = 'sell'")
    )
    stored = {str(row[0]): str(row[1]) for row in rows}
    assert [stored[s] for s in sells] == ["filled"] * buys + ["open"] * (3 - buys)
    await assert_market_clean(session)


async def test_an_order_beyond_what_the_lock_call_read_waits_for_the_next_group(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine, groups: Groups
) -> None:
    """The lock call reads the part of the book its queued orders can reach
    (``app.market.reach``): an order that arrives while the lock is awaited and needs more
    (here a sell below the window the first buy opened) waits for the next group, and so do
    the orders behind it, in their order."""
    m = await market(client, sellers=1, buyers=2)
    product_id = m.product["id"]
    groups.clear()
    async with _lock_held_elsewhere(engine, product_id):
        first = asyncio.ensure_future(order(client, m.buyers[0], m, "buy", 1_000, 1))
        await _until_a_lock_call_waits(engine)
        later = []
        for side, org, price in [("sell", m.sellers[0], 990), ("buy", m.buyers[1], 1_000)]:
            later.append(asyncio.ensure_future(order(client, org, m, side, price, 1)))
            await _until_queued(product_id, len(later) + 1)  # in this order
    answers = [await first, *await asyncio.gather(*later)]
    assert [r.status_code for r in answers] == [201] * 3, [r.text for r in answers]
    assert groups == [1, 2]
    # Answered as placed: the first buy rested; the sell, in the next group, filled against it.
    assert [r.json()["status"] for r in answers] == ["open", "filled", "open"]
    trades = answers[1].json()["trades"]
    assert [(t["price"], t["liquidity"]) for t in trades] == [(1_000, "taker")]
    await assert_market_clean(session)


async def test_an_order_that_would_fill_beyond_what_the_lock_call_read_waits(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    groups: Groups,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock call reads of the other side only what the queued orders' quantities can
    fill (``Reach.asks_need``, ``bids_need``), the rest of a deep level counted: a sell that
    arrives while the lock is awaited and would need more waits for the next group, which
    reads again; each fills the buy next in time priority, and the level's events count the
    orders that were not read."""
    m = await market(client, sellers=2, buyers=2)
    product_id = m.product["id"]
    buys = []
    for i in range(4):
        r = await order(client, m.buyers[i % 2], m, "buy", 1_000, 1)
        assert r.status_code == 201, r.text
        buys.append(r.json()["id"])
    # No room for late orders: the lock call reads what the first sell can fill.
    group._last_taken.pop(uuid.UUID(product_id), None)
    monkeypatch.setattr(group, "ROOM_AT_LEAST", 0)
    listener = await asyncpg.connect(libpq_url(engine.url.render_as_string(hide_password=False)))
    heard: list[dict[str, Any]] = []
    await listener.add_listener(
        market_service.channel(uuid.UUID(product_id)),
        lambda *args: heard.append(json.loads(args[3])),
    )
    groups.clear()
    async with _lock_held_elsewhere(engine, product_id):
        first = asyncio.ensure_future(order(client, m.sellers[0], m, "sell", 1_000, 1))
        await _until_a_lock_call_waits(engine)
        later = asyncio.ensure_future(order(client, m.sellers[1], m, "sell", 1_000, 1))
        await _until_queued(product_id, 2)
    answers = [await first, await later]
    assert [r.status_code for r in answers] == [201, 201], [r.text for r in answers]
    assert groups == [1, 1]
    assert [r.json()["status"] for r in answers] == ["filled", "filled"]
    for _ in range(100):  # notices arrive after their commits
        if len([e for e in heard if e["type"] == "level" and e["side"] == "buy"]) >= 2:
            break
        await asyncio.sleep(0.02)
    await listener.close()
    levels = [(e["quantity"], e["orders"]) for e in heard if e["type"] == "level"]
    assert levels == [(3, 3), (0, 0), (2, 2), (0, 0)]  # the buys' level, then the sells' own
    assert [e["side"] for e in heard if e["type"] == "level"] == ["buy", "sell"] * 2
    still = (
        await session.execute(
            text(
                "SELECT id::text FROM market_orders WHERE product_id = :p AND status = 'open'"
                " ORDER BY sequence"
            ),
            {"p": product_id},
        )
    ).scalars()
    assert list(still) == buys[2:]  # the first two buys filled, in time priority
    await session.rollback()
    await assert_market_clean(session)
