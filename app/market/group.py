"""Group commit: the orders a process receives for one product while it is placing another one
are placed together, under one acquisition of the product lock and in one transaction, and
each is answered only after that transaction committed.

Throughput on one product is one over the time an order holds the product lock (see
``app.market.service``). With many clients, orders queue on that lock; here the ones that
queue in the same process are taken as a group: ``service.place_orders`` takes the lock,
reads the book and locks the accounts once for all of them, matches them one after the other
in arrival order exactly as it would one at a time, then flushes, notifies and commits once.

- An order arriving when nothing is being placed on its product in this process takes the
  usual path, in its request's own transaction (committed by the session dependency). Orders
  arriving meanwhile wait in the product's queue; when that order is done, a task of the
  process places what waits, up to ``MAX_GROUP`` at a time, in its own session, and commits
  (the one exception to "the session dependency commits": each request's answer waits for
  this commit, so an acknowledged order is committed, as before).
- A group is all or nothing: if any of its orders is refused (a shortfall, a post-only that
  would cross, a price outside the band, a duplicate ``client_order_id``…) or the
  transaction fails (a deadlock, a lost connection), it is rolled back and its orders are
  placed again one at a time, each in its own transaction, so each gets exactly the answer it
  would have had alone, and no order is lost or half-applied.
- Requests with an ``Idempotency-Key`` take the usual path in the transaction the idempotency
  middleware owns (their stored response must commit with their effects), and so do orders on
  products that are not continuous (call auctions collect their orders in any case).

- On a batch product, a group's ledger and serial-block writes are recorded and sent in one
  call at the end (``app.db.deferred``, see ``app.market.service``): the group's time under
  the lock no longer grows by a round trip per hold, payment and block change.

Across processes nothing changes: each process's groups queue on the same advisory lock.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import SessionMaker
from app.market import service as market_service
from app.market.models import TradingMode
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


# Product id -> the orders waiting for the order being placed (or the group): present while
# this process is placing orders on the product.
_queues: dict[uuid.UUID, list[_Waiting]] = {}
_tasks: set[asyncio.Task[None]] = set()


async def place_order(
    session: AsyncSession,
    sessionmaker: SessionMaker,
    organization_id: uuid.UUID,
    body: OrderCreate,
    *,
    own_transaction: bool = False,
) -> market_service.PlacedOrder:
    """Place an order (``service.place_order``), with the orders of the same product that
    arrive while it is placed grouped as above. ``session``: the request's; ``sessionmaker``
    makes the sessions of the groups; ``own_transaction``: the order must be placed in
    ``session``'s transaction (an ``Idempotency-Key`` request)."""
    if own_transaction:
        return await market_service.place_order(session, organization_id, body)
    product_id, mode = await market_service.product_id_and_mode(session, body.product)  # or 404
    if mode != TradingMode.continuous:
        [placed] = await market_service.place_orders(session, product_id, [(organization_id, body)])
        return placed
    if product_id in _queues and not (session.new or session.dirty or session.deleted):
        # One is being placed here: wait for the next group. The request has at most read (its
        # key and product, usually remembered by the process): its session is closed here
        # (its objects stay readable, detached) and gives its connection back, so that however
        # many requests wait, the group's own session can get one.
        await session.close()
        queue = _queues.get(product_id)  # looked at again: the group may have ended meanwhile
        if queue is not None:
            waiting = _Waiting(organization_id, body)
            queue.append(waiting)
            return await waiting.placed
    elif product_id in _queues:  # the request wrote something: keep it in its transaction
        [placed] = await market_service.place_orders(session, product_id, [(organization_id, body)])
        return placed
    _queues[product_id] = []
    try:
        [placed] = await market_service.place_orders(session, product_id, [(organization_id, body)])
        return placed
    finally:
        # What arrived meanwhile is placed by a task (this request's transaction commits after
        # this returns; the task's first group then waits for the product lock it holds).
        if _queues[product_id]:
            task = asyncio.create_task(_drain(sessionmaker, product_id))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
        else:
            del _queues[product_id]


async def _drain(sessionmaker: SessionMaker, product_id: uuid.UUID) -> None:
    queue = _queues[product_id]
    try:
        while True:
            group = [w for w in queue[:MAX_GROUP] if not w.placed.done()]  # done: cancelled
            del queue[:MAX_GROUP]
            if group:
                await _place_group(sessionmaker, product_id, group)
            if not queue:
                break
    finally:
        del _queues[product_id]  # no await since the last look: nothing can have arrived
        for waiting in queue:  # only if this task was cancelled (shutdown)
            if not waiting.placed.done():
                waiting.placed.cancel()


async def _place_group(
    sessionmaker: SessionMaker, product_id: uuid.UUID, group: list[_Waiting]
) -> None:
    if len(group) > 1:
        try:
            async with sessionmaker() as session:
                placed = await market_service.place_orders(
                    session, product_id, [(w.organization_id, w.body) for w in group]
                )
                await session.commit()
        except Exception as exc:  # one by one: each gets its own answer
            log.info(
                "market.group_retried_one_by_one",
                product_id=str(product_id),
                orders=len(group),
                error=type(exc).__name__,
            )
        else:
            for waiting, one in zip(group, placed, strict=True):
                if not waiting.placed.done():
                    waiting.placed.set_result(one)
            return
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
