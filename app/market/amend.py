"""Amending an open order (``PATCH /v1/orders/{id}``): a new total quantity and/or price.

One transaction, under the product's advisory lock (taken before any ledger or registry row
lock, as ``place_order``):

- **Priority.** A reduced quantity at the same price keeps the order's time priority (its
  ``sequence``); any other change (a price change, an increase) loses it: the order takes a new
  ``sequence`` from the identity column's sequence, as a new arrival would, and, unless the
  product's orders are collecting for a call (``app.market.phase``), is matched like one (``OrderBook.amend``): it may trade at once (fills
  settled by ``service._settle``), a post-only order that would cross is refused (409
  ``order_rejected``, nothing changed). While collecting, the order just moves in the queue.
- **Quantity** is the new *total* (filled included): it must stay above ``filled_quantity``
  (409 ``amend_below_filled``; cancel the order instead). A new price is checked against the
  band as on placing (422 ``price_outside_band``).
- **Holds follow.** A buy's cash hold becomes ``price × remaining``: the difference is released,
  or, if it grows, the hold is released and a new one reserved for the whole (a shortfall is 409
  ``insufficient_balance`` and nothing is changed: the transaction rolls back). A sell's credit
  holds shrink on a reduction (released from the last hold first, so fills still deliver the
  oldest vintages first); an increase is refused (409 ``amend_increase_not_supported``: place
  another order), as a sell's holds cannot grow in place.
- The same quantity and price is a no-op (the order is returned unchanged): a retried PATCH
  does not lose its priority twice.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.time import utc_now
from app.ledger import service as ledger_service
from app.ledger.models import Hold
from app.market import phase
from app.market import service as market_service
from app.market.calls import lock_for_fills
from app.market.errors import (
    AmendBelowFilled,
    AmendIncreaseNotSupported,
    OrderNotOpen,
    OrderRejected,
    PriceOutsideBand,
)
from app.market.matching import Cancelled, Done, Event, Rejected, Side, Trade
from app.market.models import OPEN_STATUSES, MarketOrder, MarketTrade, OrderStatus
from app.market.repository import OrderRepository, ProductRepository
from app.market.schemas import OrderAmend
from app.offsets import service as offsets_service


async def amend_order(
    session: AsyncSession, organization_id: uuid.UUID, order_id: uuid.UUID, body: OrderAmend
) -> MarketOrder:
    """Amend one of the caller's open orders (see the module docstring)."""
    orders = OrderRepository(session)
    found = await market_service.get_order(session, organization_id, order_id)  # 404
    products = ProductRepository(session)
    await products.lock(found.product_id)
    product = await products.reload(found.product_id)
    # A GTD order past its expiry (this one too) never trades, as on placing.
    await market_service.expire_product_orders(session, product.id, utc_now())
    order = await orders.own(organization_id, order_id, for_update=True)
    assert order is not None
    if order.status not in OPEN_STATUSES:
        raise OrderNotOpen(f"The order is {order.status}.", order_status=str(order.status))
    assert order.price is not None  # only limit orders rest
    quantity = order.quantity if body.quantity is None else body.quantity
    price = order.price if body.price is None else body.price
    if quantity <= order.filled_quantity:
        raise AmendBelowFilled(
            f"quantity must be above the {order.filled_quantity} already filled "
            "(cancel the order instead).",
            filled_quantity=order.filled_quantity,
        )
    if (quantity, price) == (order.quantity, order.price):
        return order
    keeps_priority = price == order.price and quantity < order.quantity
    band = market_service.price_band(product)
    if not keeps_priority and band is not None and not band[0] <= price <= band[1]:
        raise PriceOutsideBand(
            f"price must be within the band {band[0]}–{band[1]}.",
            field="price",
            band_low=band[0],
            band_high=band[1],
        )

    old_price, old_open = order.price, order.quantity - order.filled_quantity
    new_open = quantity - order.filled_quantity
    if order.side == Side.SELL and new_open > old_open:
        raise AmendIncreaseNotSupported(
            "A sell order's quantity cannot be increased: place another order.",
            quantity=order.quantity,
        )

    # Match first, in memory (as place_order): the fills tell what to lock, before any hold.
    resting: list[MarketOrder] = []
    events: list[Event] = []
    sequence = order.sequence
    if not keeps_priority:
        sequence = await _next_sequence(session)
        if not await phase.collects_orders(session, product, utc_now()):
            resting = await orders.open_orders(product.id)
            book = market_service.restore_book(resting)  # before the order's row changes
            events = book.amend(order.id, new_quantity=new_open, new_price=price, sequence=sequence)
    for event in events:
        if isinstance(event, Rejected):
            raise OrderRejected(
                f"The amendment was rejected: {event.reason.value}.", reason=event.reason.value
            )
    by_id = {o.id: o for o in resting}
    by_id[order.id] = order
    fills = [e for e in events if isinstance(e, Trade)]
    parties = {order.id: order} | {
        by_id[e.maker_id].id: by_id[e.maker_id]  # type: ignore[index]
        for e in fills
    }
    await lock_for_fills(session, product, parties.values(), fills, by_id)

    if order.side == Side.BUY:
        await _resize_cash_hold(session, order, market_service.buy_hold(product, price, new_open))
    elif new_open < old_open:
        await _release_sell_credits(session, order, old_open - new_open)
    order.quantity, order.price, order.sequence = quantity, price, sequence
    order.updated_at = utc_now()
    await session.flush()

    touched = {(str(order.side), old_price), (str(order.side), price)}
    trades: list[MarketTrade] = []
    for event in events:
        if isinstance(event, Trade):
            trades.extend(await market_service._settle(session, product, event, by_id))
            maker = by_id[event.maker_id]  # type: ignore[index]
            assert maker.price is not None
            touched.add((str(maker.side), maker.price))
        elif isinstance(event, Done | Cancelled):
            closed = by_id[event.order_id]  # type: ignore[index]
            if isinstance(event, Done):
                market_service._close(closed, OrderStatus.filled)
            else:
                market_service._close(closed, OrderStatus.cancelled, event.reason.value)
            await market_service._release_rest(session, closed)
    await session.flush()
    await market_service._publish(session, product.id, trades, touched)
    return order


async def _next_sequence(session: AsyncSession) -> int:
    """A new arrival sequence from ``market_orders.sequence``'s identity sequence: larger than
    any order's, so the amended order goes to the back of its queue."""
    value = await session.scalar(
        text("SELECT nextval(pg_get_serial_sequence('market_orders', 'sequence'))")
    )
    return int(value)


async def _resize_cash_hold(session: AsyncSession, order: MarketOrder, need: int) -> None:
    """Make a buy's cash hold ``need``: release the excess, or swap it for a larger hold."""
    assert order.cash_hold_id is not None
    have = await session.scalar(
        select(Hold.remaining)
        .where(Hold.id == order.cash_hold_id)
        .execution_options(populate_existing=True)
    )
    assert have is not None
    reference = f"amend:{order.id}"
    if need < have:
        await ledger_service.release(session, order.cash_hold_id, have - need, reference=reference)
    elif need > have:
        if have:
            await ledger_service.release(session, order.cash_hold_id, reference=reference)
        order.cash_hold_id = await ledger_service.reserve(
            session,
            order.organization_id,
            ledger_service.CASH,
            need,
            reference=f"order:{order.id}",
        )


async def _release_sell_credits(session: AsyncSession, order: MarketOrder, quantity: int) -> None:
    """Give back ``quantity`` of a sell's held credits, from its last hold backwards, so the
    rest still delivers in its order (oldest vintage first). The caller has locked them."""
    holds = (await market_service.credit_holds(session, [order.id])).get(order.id, [])
    for held in reversed(holds):
        if not quantity:
            break
        take = min(quantity, held.remaining)
        await offsets_service.release_credits(session, held.batch_id, held.hold_id, take)
        quantity -= take
    assert quantity == 0, "a sell's open quantity is always held"
