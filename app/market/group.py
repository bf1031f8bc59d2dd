"""Group commit: the orders a process receives for one product are placed in groups, each
under one acquisition of the product lock and in one transaction, and each order is answered
only after its group's transaction committed.

Throughput on one product is one over the time an order holds the product lock (see
``app.market.service``). With many clients, orders queue on that lock; here the ones that
queue in the same process are taken as a group: ``service.place_orders`` reads the book and
locks the accounts once for all of them, matches them one after the other in arrival order
exactly as it would one at a time, then writes, notifies and commits once.

- An order joins its product's queue in this process; a task of the process (one per product
  with a queue) takes the product lock, *then* takes what waits in the queue (up to
  ``MAX_GROUP``) as the group, places it in its own session and commits, and starts again
  while anything waits. Taking the lock first means the group holds every order that arrived
  while other processes held the lock (as far as the part of the book its lock call read
  covers them and can fill them: ``app.market.reach``; one that needs more waits for the
  next group, with those behind it); an order alone still goes at once. (The order route
  has no request session: the group's commit is the one that counts, and each request's
  answer waits for it, so an acknowledged order is committed.)
- A group is all or nothing: if any of its orders is refused (a shortfall, a post-only that
  would cross, a price outside the band, a duplicate ``client_order_id``…) or the
  transaction fails (a deadlock, a lost connection), it is rolled back and its orders are
  placed again one at a time, each in its own transaction, so each gets exactly the answer it
  would have had alone, and no order is lost or half-applied. An order placed alone gets its
  refusal as its answer.
- Requests with an ``Idempotency-Key`` take the usual path in the transaction the idempotency
  middleware owns (their stored response must commit with their effects); orders on products
  that are not continuous (call auctions collect their orders in any case) are placed one by
  one, each in a session and transaction of its own.

- On a batch product, a group's writes (ledger, serial blocks, rows, NOTIFY) are recorded and
  sent in one call at the end (``app.db.deferred``, see ``app.market.service``): the group's
  time under the lock no longer grows by a round trip per hold, payment and block change.
- That call also commits (``app.db.driver.call_and_commit``: the call and the COMMIT in one
  message), so the lock is held for two round trips, not three: the lock call's answer and
  the write call, with no COMMIT after. The lock call also takes a sequence for each order
  the group may take (migration 0027), since a call sent that way returns no rows to read
  the inserts' own sequences from; the group's transaction is begun on the driver
  (``driver_transaction``). If the connection fails while that commit is on its way, the
  group looks whether its orders are stored: answered as placed if so, placed one by one if
  not (never twice).

Across processes nothing changes: each process's groups queue on the same advisory lock.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field

import structlog

from app.db.driver import CommitOutcomeUnknown, commit, driver_transaction
from app.db.session import SessionMaker, session_scope
from app.market import service as market_service
from app.market.matching import Side
from app.market.models import MarketOrder, TradingMode
from app.market.reach import Reach
from app.market.schemas import OrderCreate

log = structlog.get_logger()

MAX_GROUP = 64  # orders placed under one lock acquisition, at most


@dataclass(slots=True)
class _Waiting:
    organization_id: uuid.UUID
    body: OrderCreate
    placed: asyncio.Future[market_service.PlacedOrder] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


# Product id -> the orders waiting to be placed: present while this process's task for the
# product (``_drain``) runs.
_queues: dict[uuid.UUID, list[_Waiting]] = {}
_tasks: set[asyncio.Task[None]] = set()


async def place_order(
    sessionmaker: SessionMaker, organization_id: uuid.UUID, body: OrderCreate
) -> market_service.PlacedOrder:
    """Place an order (``service.place_order``), grouped with the other orders of its product
    as above, in sessions of ``sessionmaker``. (An ``Idempotency-Key`` request's order is
    placed in the transaction the middleware owns instead: ``service.place_order``.)"""
    found = market_service.known_product(body.product)
    if found is None or found[1] != TradingMode.continuous:
        async with session_scope(sessionmaker) as session:
            product_id, mode = found or await market_service.product_id_and_mode(
                session, body.product
            )  # or 404
            if mode != TradingMode.continuous:
                # A call product's order (call auctions collect orders, one at a time).
                [placed] = await market_service.place_orders(
                    session, product_id, [(organization_id, body)]
                )
                return placed
    else:
        product_id, _ = found
    # Until its group is placed, the request holds no session and no connection: however
    # many requests wait, the group's own session can get one.
    waiting = _Waiting(organization_id, body)
    queue = _queues.get(product_id)
    if queue is None:
        queue = _queues[product_id] = []
        task = asyncio.create_task(_drain(sessionmaker, product_id))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    queue.append(waiting)
    return await waiting.placed


async def _drain(sessionmaker: SessionMaker, product_id: uuid.UUID) -> None:
    queue = _queues[product_id]
    try:
        while queue:
            await _place_next(sessionmaker, product_id, queue)
    finally:
        del _queues[product_id]  # no await since the last look: nothing can have arrived
        for waiting in queue:  # only if this task was cancelled (shutdown)
            if not waiting.placed.done():
                waiting.placed.cancel()


# Product id -> its last group's quantity on each side in this process (buys, sells): how
# much the next group's lock call leaves room for on that side (``_reach``).
_last_taken: dict[uuid.UUID, tuple[int, int]] = {}


# However little the last group took of a side, the lock call leaves room on it for this many
# orders (of the largest quantity queued): a product's first group, or the first after a
# quiet spell, takes what queued meanwhile.
ROOM_AT_LEAST = 16


def _reach(queue: list[_Waiting], last: tuple[int, int] = (0, 0)) -> Reach:
    """What of the book the orders that would be taken now can touch, and may fill: on each
    side, their own quantity there, or twice what that side of the last group took
    (``ROOM_AT_LEAST`` orders of the largest quantity queued at least) if more, since orders
    keep arriving while the lock is awaited (one that does not fit waits for the next group:
    ``_take``). Sized per side, since each side's room is read of the other side of the
    book, and every order read costs the lock call (a sell its hold's blocks too): with
    ``bench/orders --spread 5`` a group of about 14 read about 40 resting orders when both
    sides had room for twice the whole last group."""
    queued = queue[:MAX_GROUP]
    largest = max((w.body.quantity for w in queued), default=0)
    buys, sells = _taken(queued)

    def room(own: int, last_taken: int) -> int:
        wanted = max(ROOM_AT_LEAST * largest, 2 * last_taken)
        return max(0, min(MAX_GROUP * largest, wanted) - own)

    return Reach.of((w.body.side, w.body.price) for w in queued).filling(
        ((w.body.side, w.body.quantity) for w in queued),
        room=(room(buys, last[0]), room(sells, last[1])),
    )


def _taken(orders: list[_Waiting]) -> tuple[int, int]:
    """The quantity of ``orders`` on each side: (buys, sells)."""
    buys = sum(w.body.quantity for w in orders if w.body.side == Side.BUY)
    return buys, sum(w.body.quantity for w in orders) - buys


def _take(queue: list[_Waiting], reach: Reach | None = None) -> list[_Waiting]:
    """The group: the queue's first orders (up to ``MAX_GROUP``), as far as ``reach`` (what
    the lock call read) covers them and can fill them all; the first it cannot, and those
    behind it, wait for the next group, in their order."""
    taken = buys = sells = 0
    for waiting in queue[:MAX_GROUP]:
        body = waiting.body
        if reach is not None:
            if body.side == Side.BUY:
                buys += body.quantity
            else:
                sells += body.quantity
            if not (
                reach.covers(body.side, body.price)
                and reach.fits([(Side.BUY, buys), (Side.SELL, sells)])
            ):
                break
        taken += 1
    if queue and not taken:  # the first was queued when the reach was worked out
        raise RuntimeError("the lock call's reach does not cover the first queued order")
    group = [w for w in queue[:taken] if not w.placed.done()]  # done: cancelled
    del queue[:taken]
    return group


async def _place_next(
    sessionmaker: SessionMaker, product_id: uuid.UUID, queue: list[_Waiting]
) -> None:
    """Take the product lock, then as the group every order queued by then (up to
    ``MAX_GROUP``): those that arrived while the other processes held the lock go together."""
    group: list[_Waiting] = []
    asked = time.perf_counter()
    try:
        async with sessionmaker() as session, driver_transaction(session) as driver:
            # With its batch (a batch product's group settles on it), the book as of the lock
            # (the part of it the queued orders can reach and fill: ``app.market.reach``), the
            # live blocks its serial operations take from as far as they are known (the queued
            # sellers' active blocks, the blocks of the holds of the sells read), and a
            # sequence for each order it may take, in one round trip.
            reach = _reach(queue, _last_taken.get(product_id, (0, 0)))
            product, book, blocks, sequences = await market_service.lock_product_and_read_book(
                session,
                product_id,
                sorted({w.organization_id for w in queue if w.body.side == Side.SELL}),
                reserve=MAX_GROUP,
                reach=reach,
            )
            answered = time.perf_counter()
            group = _take(queue, reach)
            if not group:
                return
            _last_taken[product_id] = _taken(group)
            placed = await market_service.place_orders(
                session,
                product_id,
                [(w.organization_id, w.body) for w in group],
                locked=product,
                batch_locked=True,
                read_book=book,
                read_blocks=blocks,
                sequences=sequences,
                commit=True,
                reach=reach,
            )
            written = time.perf_counter()
            if driver.is_in_transaction():  # nothing deferred: its write call did not commit
                try:
                    await commit(driver)
                except CommitOutcomeUnknown as exc:
                    raise market_service.GroupOutcomeUnknown(placed) from exc
            committed = time.perf_counter()
    except asyncio.CancelledError:  # shutdown: the taken orders' requests end too
        for waiting in group:
            waiting.placed.cancel()
        raise
    except market_service.GroupOutcomeUnknown as unknown:
        await _settle_unknown(sessionmaker, product_id, group, unknown)
        return
    except Exception as exc:
        if len(group) == 1:  # placed alone: this is its answer
            if not group[0].placed.done():
                group[0].placed.set_exception(exc)
            return
        group = group or _take(queue)  # the lock failed: each order gets its own answer
        log.info(
            "market.group_retried_one_by_one",
            product_id=str(product_id),
            orders=len(group),
            error=type(exc).__name__,
        )
        await _one_by_one(sessionmaker, product_id, group)
        return
    _answer(group, placed)
    # How long the product lock was awaited and held (``bench/orders --groups`` reads these):
    # the lock call from asked to answered (mostly waiting for other processes' groups), then
    # held from its answer to the commit's (the write call's answer, which commits, or a
    # COMMIT of its own); and the resting orders the lock call read, and those it counted
    # without reading them. Logged after the answers, outside the transaction.
    log.debug(
        "market.group_placed",
        product_id=str(product_id),
        worker=os.getpid(),
        orders=len(group),
        book=len(book.orders),
        hidden=sum(count for *_, count in book.hidden),
        lock_ms=round((answered - asked) * 1e3, 3),
        held_ms=round((committed - answered) * 1e3, 3),
        commit_ms=round((committed - written) * 1e3, 3),
    )


async def _settle_unknown(
    sessionmaker: SessionMaker,
    product_id: uuid.UUID,
    group: list[_Waiting],
    unknown: market_service.GroupOutcomeUnknown,
) -> None:
    """The connection failed while the group's commit was on its way. The group was written
    all or nothing: if its first order is stored, it was placed as ``unknown.placed`` says;
    if not, nothing of it was, and its orders are placed one by one (never twice)."""
    try:
        async with sessionmaker() as session:
            stored = await session.get(MarketOrder, unknown.placed[0].order.id) is not None
    except Exception as exc:  # the database is unreachable: no answer can be given
        for waiting in group:
            if not waiting.placed.done():
                waiting.placed.set_exception(exc)
        return
    log.warning(
        "market.group_commit_unknown",
        product_id=str(product_id),
        orders=len(group),
        stored=stored,
        error=type(unknown.__cause__).__name__,
    )
    if stored:
        _answer(group, unknown.placed)
    else:
        await _one_by_one(sessionmaker, product_id, group)


def _answer(group: list[_Waiting], placed: list[market_service.PlacedOrder]) -> None:
    for waiting, one in zip(group, placed, strict=True):
        if not waiting.placed.done():
            waiting.placed.set_result(one)


async def _one_by_one(
    sessionmaker: SessionMaker, product_id: uuid.UUID, group: list[_Waiting]
) -> None:
    for waiting in group:
        try:
            async with sessionmaker() as session:
                [one] = await market_service.place_orders(
                    session, product_id, [(waiting.organization_id, waiting.body)]
                )
                await session.commit()
        except Exception as exc:
            if not waiting.placed.done():
                waiting.placed.set_exception(exc)
        else:
            if not waiting.placed.done():
                waiting.placed.set_result(one)
