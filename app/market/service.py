"""The continuous order book: products, orders with their holds, matching and settlement.

Placing an order (one transaction):

1. Take the product's advisory lock (``pg_advisory_xact_lock(hashtextextended('market:' ||
   product_id, 0))``). Everything below runs under it, so one product's orders are matched one
   at a time, and the lock is taken *before* any ledger or registry row lock (settling a fill
   locks the batch row and the parties' accounts; taking those before the product lock could
   deadlock with the transaction holding it).
2. Hold what the order may need: a buy limit holds ``price × quantity`` JPY, a market buy
   ``band_high × quantity``; a sell holds ``quantity`` credits of the product's batch. A
   shortfall raises (409) and nothing is written.
3. Rebuild the book from the open orders in the database (``OrderBook.restore`` in ``sequence``
   order; ``sequence`` is an identity column, so an order inserted under the lock has a larger
   one than any resting order), insert the order (which takes its sequence) and submit it.
4. Persist the events: every ``Trade`` is a ``market_trades`` row, settled at once: cash from
   the buyer's hold to the seller's available JPY at the trade price, credits from the seller's
   hold to the buyer (the serial ranges delivered are stored on the trade), and the buyer's
   price improvement released from its hold. An order that ends (filled or cancelled) has what
   remains of its holds released.

5. Publish (``pg_notify('market_<product id hex>', json)``, same transaction, so delivered only
   if it commits): one ``trade`` event per fill and one ``level`` event per price level the
   order touched (its new aggregate, ``quantity`` 0 once empty). Cancels and expiries publish
   their level too. ``app.market.stream`` relays them as Server-Sent Events.

GTD orders rest like GTC; ``expire_product_orders`` (run every minute by
``app.market.tasks``) closes the due ones with status ``expired`` through the cancel path.
Placing an order runs it first for its product (under the lock), so a due order never trades.

Rebuilding the book costs O(open orders of the product) per order: acceptable at this scale;
the next step is an in-process cache of the book keyed by product with a version check.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.ids import new_id
from app.core.pagination import Page, PageParams
from app.core.time import utc_now
from app.ledger import service as ledger_service
from app.ledger.models import AccountKind, Hold, HoldStatus
from app.market.errors import (
    DuplicateClientOrderId,
    InvalidProduct,
    NoReferencePrice,
    OrderNotFound,
    OrderNotOpen,
    OrderRejected,
    PriceOutsideBand,
    ProductCodeTaken,
    ProductNotFound,
)
from app.market.matching import (
    Accepted,
    Amended,
    BookSnapshot,
    Cancelled,
    Done,
    Order,
    OrderBook,
    OrderType,
    Rejected,
    Rested,
    Side,
    TimeInForce,
    Trade,
)
from app.market.models import (
    OPEN_STATUSES,
    MarketOrder,
    MarketTrade,
    OrderStatus,
    OrderTimeInForce,
    Product,
)
from app.market.repository import OrderRepository, ProductRepository, TradeRepository
from app.market.schemas import OrderCreate, ProductCreate
from app.offsets import service as offsets_service

CLIENT_ORDER_ID_CONSTRAINT = "market_orders_organization_id_client_order_id_key"
PRODUCT_CODE_CONSTRAINT = "market_products_code_key"


# --- products --------------------------------------------------------------------------


async def create_product(session: AsyncSession, body: ProductCreate) -> Product:
    if body.batch_id is None:
        raise InvalidProduct(
            "batch_id is required: products trade the credits of one batch for now "
            "(category products come in a later release).",
            field="batch_id",
        )
    await offsets_service.get_batch(session, body.batch_id)  # 404 if there is none
    products = ProductRepository(session)
    if await products.by_code(body.code) is not None:
        raise ProductCodeTaken("A product with this code exists.", product_code=body.code)
    now = utc_now()
    product = products.add(
        Product(
            id=new_id(),
            code=body.code,
            name=body.name,
            batch_id=body.batch_id,
            reference_price=body.reference_price,
            band_bps=body.band_bps,
            created_at=now,
            updated_at=now,
        )
    )
    try:
        await session.flush()
    except IntegrityError as exc:
        if PRODUCT_CODE_CONSTRAINT in str(exc.orig):
            raise ProductCodeTaken(
                "A product with this code exists.", product_code=body.code
            ) from exc
        raise
    return product


async def list_products(session: AsyncSession) -> list[Product]:
    return list(await ProductRepository(session).list_all())


async def get_product(session: AsyncSession, code: str) -> Product:
    product = await ProductRepository(session).by_code(code)
    if product is None:
        raise ProductNotFound("No such product.", product=code)
    return product


def price_band(product: Product) -> tuple[int, int] | None:
    """(low, high) around the last trade price, else the reference price; None without either."""
    centre = product.last_trade_price or product.reference_price
    if centre is None:
        return None
    width = centre * product.band_bps // 10_000
    return max(1, centre - width), centre + width


# --- the book ----------------------------------------------------------------------------


def _engine_order(order: MarketOrder) -> Order:
    return Order(
        order_id=order.id,
        side=Side(order.side),
        quantity=order.quantity - order.filled_quantity,
        price=order.price,
        owner=order.organization_id,
        sequence=order.sequence,
        order_type=OrderType(order.type),
        time_in_force=TimeInForce(order.time_in_force),
        post_only=order.post_only,
    )


def channel(product_id: uuid.UUID) -> str:
    """The NOTIFY channel of one product's book changes and trades."""
    return f"market_{product_id.hex}"


def trade_event(trade: MarketTrade) -> dict[str, Any]:
    return {
        "type": "trade",
        "id": str(trade.id),
        "price": trade.price,
        "quantity": trade.quantity,
        "taker_side": str(trade.taker_side),
        "executed_at": trade.executed_at.isoformat(),
    }


async def _publish(
    session: AsyncSession,
    product_id: uuid.UUID,
    trades: list[MarketTrade],
    levels: set[tuple[str, int]],
) -> None:
    """NOTIFY the trades and the new state of the touched levels (after a flush)."""
    events = [trade_event(t) for t in trades]
    if levels:
        rows = await session.execute(
            text(
                "SELECT side, price, sum(quantity - filled_quantity) AS quantity,"
                " count(*) AS orders FROM market_orders"
                " WHERE product_id = :p AND status IN ('open', 'partially_filled')"
                " AND price = ANY(:prices) GROUP BY side, price"
            ),
            {"p": product_id, "prices": sorted({price for _, price in levels})},
        )
        now = {(row.side, row.price): (int(row.quantity), int(row.orders)) for row in rows}
        for side, price in sorted(levels):
            quantity, orders = now.get((side, price), (0, 0))
            events.append(
                {
                    "type": "level",
                    "side": side,
                    "price": price,
                    "quantity": quantity,
                    "orders": orders,
                }
            )
    if events:
        await session.execute(
            text("SELECT pg_notify(:c, e) FROM unnest(CAST(:events AS text[])) AS e"),
            {"c": channel(product_id), "events": [json.dumps(e) for e in events]},
        )


def restore_book(open_orders: list[MarketOrder]) -> OrderBook:
    return OrderBook.restore(_engine_order(o) for o in open_orders)


async def book_snapshot(session: AsyncSession, code: str, depth: int) -> BookSnapshot:
    product = await get_product(session, code)
    book = restore_book(await OrderRepository(session).open_orders(product.id))
    return book.depth(depth)


# --- orders ----------------------------------------------------------------------------


@dataclass(slots=True)
class PlacedOrder:
    order: MarketOrder
    product: Product
    trades: list[MarketTrade] = field(default_factory=list)


async def _release_rest(session: AsyncSession, order: MarketOrder, batch_id: uuid.UUID) -> None:
    """Give back what remains of a closed order's hold (nothing if it is used up)."""
    hold_id = order.cash_hold_id or order.credit_hold_id
    assert hold_id is not None
    hold = (
        await session.execute(
            select(Hold).where(Hold.id == hold_id).execution_options(populate_existing=True)
        )
    ).scalar_one()
    if hold.status != HoldStatus.active or hold.remaining <= 0:
        return
    if order.cash_hold_id is not None:
        await ledger_service.release(session, hold_id)
    else:
        await offsets_service.release_credits(session, batch_id, hold_id)


def _close(order: MarketOrder, status: OrderStatus, reason: str | None = None) -> None:
    order.status = status
    order.cancel_reason = reason
    order.updated_at = utc_now()


async def _settle(
    session: AsyncSession,
    product: Product,
    event: Trade,
    orders: dict[uuid.UUID, MarketOrder],
) -> MarketTrade:
    taker = orders[event.taker_id]  # type: ignore[index]
    maker = orders[event.maker_id]  # type: ignore[index]
    buy, sell = (taker, maker) if event.taker_side is Side.BUY else (maker, taker)
    assert buy.cash_hold_id is not None
    assert sell.credit_hold_id is not None
    trade_id = new_id()
    reference = f"trade:{trade_id}"
    amount = event.price * event.quantity
    seller_cash = await ledger_service.account_id(
        session, sell.organization_id, ledger_service.CASH, AccountKind.available
    )
    await ledger_service.settle_hold(
        session, buy.cash_hold_id, seller_cash, amount, kind="trade", reference=reference
    )
    if event.buyer_improvement:
        await ledger_service.release(
            session, buy.cash_hold_id, event.buyer_improvement, reference=reference
        )
    ranges = await offsets_service.settle_credits(
        session,
        product.batch_id,
        sell.credit_hold_id,
        buy.organization_id,
        event.quantity,
        reference=reference,
    )
    now = utc_now()
    for order in (buy, sell):
        order.filled_quantity += event.quantity
        order.filled_amount += amount
        order.status = OrderStatus.partially_filled
        order.updated_at = now
    product.last_trade_price = event.price
    product.updated_at = now
    trade = MarketTrade(
        id=trade_id,
        product_id=product.id,
        batch_id=product.batch_id,
        price=event.price,
        quantity=event.quantity,
        taker_side=event.taker_side,
        buy_order_id=buy.id,
        sell_order_id=sell.id,
        buyer_organization_id=buy.organization_id,
        seller_organization_id=sell.organization_id,
        serial_ranges=ranges,
        executed_at=now,
    )
    session.add(trade)
    return trade


async def place_order(
    session: AsyncSession, organization_id: uuid.UUID, body: OrderCreate
) -> PlacedOrder:
    products = ProductRepository(session)
    found = await products.by_code(body.product)
    if found is None:
        raise ProductNotFound("No such product.", product=body.product)
    await products.lock(found.id)
    product = await products.reload(found.id)  # last_trade_price as of the lock

    band = price_band(product)
    if body.type == OrderType.MARKET and band is None:
        raise NoReferencePrice(
            "A market order needs a price band: this product has no reference price or trade.",
            product=product.code,
        )
    if body.type == OrderType.LIMIT and band is not None:
        assert body.price is not None
        if not band[0] <= body.price <= band[1]:
            raise PriceOutsideBand(
                f"price must be within the band {band[0]}–{band[1]}.",
                field="price",
                band_low=band[0],
                band_high=band[1],
            )

    orders = OrderRepository(session)
    if body.client_order_id is not None and (
        await orders.by_client_id(organization_id, body.client_order_id) is not None
    ):
        raise DuplicateClientOrderId(
            "An order with this client_order_id exists.", client_order_id=body.client_order_id
        )

    # Holds (a shortfall raises: the transaction rolls back, nothing is written).
    order_id = new_id()
    reference = f"order:{order_id}"
    cash_hold_id: uuid.UUID | None = None
    credit_hold_id: uuid.UUID | None = None
    if body.side == Side.BUY:
        limit = body.price if body.price is not None else band[1] if band else None
        assert limit is not None
        cash_hold_id = await ledger_service.reserve(
            session,
            organization_id,
            ledger_service.CASH,
            limit * body.quantity,
            reference=reference,
        )
    else:
        credit_hold_id = await offsets_service.hold_credits(
            session, organization_id, product.batch_id, body.quantity, reference=reference
        )

    # A GTD order past its expiry never trades, even before the minute task has run.
    await expire_product_orders(session, product.id, utc_now())
    resting = await orders.open_orders(product.id)
    book = restore_book(resting)
    now = utc_now()
    order = orders.add(
        MarketOrder(
            id=order_id,
            product_id=product.id,
            organization_id=organization_id,
            side=body.side,
            type=body.type,
            price=body.price,
            quantity=body.quantity,
            filled_quantity=0,
            filled_amount=0,
            status=OrderStatus.open,
            time_in_force=body.time_in_force,
            expires_at=body.expires_at,
            post_only=body.post_only,
            client_order_id=body.client_order_id,
            cash_hold_id=cash_hold_id,
            credit_hold_id=credit_hold_id,
            created_at=now,
            updated_at=now,
        )
    )
    try:
        await session.flush()
    except IntegrityError as exc:
        if CLIENT_ORDER_ID_CONSTRAINT in str(exc.orig):
            raise DuplicateClientOrderId(
                "An order with this client_order_id exists.",
                client_order_id=body.client_order_id,
            ) from exc
        raise
    await session.refresh(order, ["sequence"])

    events = book.submit(
        _engine_order(order),
        band_low=band[0] if band else None,
        band_high=band[1] if band else None,
    )
    by_id: dict[uuid.UUID, MarketOrder] = {o.id: o for o in resting}
    by_id[order.id] = order
    placed = PlacedOrder(order=order, product=product)
    touched: set[tuple[str, int]] = set()
    if order.price is not None:
        touched.add((str(order.side), order.price))
    for event in events:
        if isinstance(event, Rejected):
            raise OrderRejected(
                f"The order was rejected: {event.reason.value}.", reason=event.reason.value
            )
        if isinstance(event, Trade):
            placed.trades.append(await _settle(session, product, event, by_id))
            maker = by_id[event.maker_id]  # type: ignore[index]
            if maker.price is not None:
                touched.add((str(maker.side), maker.price))
        elif isinstance(event, Done):
            done = by_id[event.order_id]  # type: ignore[index]
            _close(done, OrderStatus.filled)
            await _release_rest(session, done, product.batch_id)
        elif isinstance(event, Cancelled):
            cancelled = by_id[event.order_id]  # type: ignore[index]
            _close(cancelled, OrderStatus.cancelled, event.reason.value)
            await _release_rest(session, cancelled, product.batch_id)
        elif isinstance(event, Accepted | Rested | Amended):
            pass
    await session.flush()
    await _publish(session, product.id, placed.trades, touched)
    return placed


async def get_order(
    session: AsyncSession, organization_id: uuid.UUID, order_id: uuid.UUID
) -> MarketOrder:
    order = await OrderRepository(session).own(organization_id, order_id)
    if order is None:  # another organisation's order is not found either
        raise OrderNotFound("No such order.", order_id=str(order_id))
    return order


async def cancel_order(
    session: AsyncSession, organization_id: uuid.UUID, order_id: uuid.UUID
) -> MarketOrder:
    orders = OrderRepository(session)
    order = await get_order(session, organization_id, order_id)
    products = ProductRepository(session)
    await products.lock(order.product_id)
    locked = await orders.own(organization_id, order_id, for_update=True)
    assert locked is not None
    if locked.status not in OPEN_STATUSES:
        raise OrderNotOpen(f"The order is {locked.status}.", order_status=str(locked.status))
    await _take_off_book(session, locked, OrderStatus.cancelled, "requested")
    return locked


async def _take_off_book(
    session: AsyncSession, order: MarketOrder, status: OrderStatus, reason: str
) -> None:
    """Close an open order and release its hold: the caller holds the product lock and the
    order's row lock, and has checked that it is open (cancel and expiry alike)."""
    product = await ProductRepository(session).reload(order.product_id)
    _close(order, status, reason)
    await _release_rest(session, order, product.batch_id)
    await session.flush()
    if order.price is not None:
        await _publish(session, order.product_id, [], {(str(order.side), order.price)})


def _due(now: datetime) -> Any:
    return (
        (MarketOrder.time_in_force == OrderTimeInForce.gtd)
        & MarketOrder.status.in_(OPEN_STATUSES)
        & (MarketOrder.expires_at <= now)
    )


async def products_with_due_orders(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Products with an open GTD order whose ``expires_at`` is not after ``now`` (unlocked)."""
    stmt = select(MarketOrder.product_id).where(_due(now)).distinct()
    return sorted((await session.execute(stmt)).scalars().all())


async def expire_product_orders(
    session: AsyncSession, product_id: uuid.UUID, now: datetime
) -> list[MarketOrder]:
    """Expire the product's due GTD orders, under the product lock (as a cancel).

    The due orders are selected after the lock is taken, so an order another worker (or a
    cancel, or a fill) closed meanwhile is no longer open and is skipped: each order is expired
    exactly once however many workers run this, and a second run finds nothing.
    """
    await ProductRepository(session).lock(product_id)
    stmt = (
        select(MarketOrder)
        .where(MarketOrder.product_id == product_id, _due(now))
        .order_by(MarketOrder.sequence)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    due = list((await session.execute(stmt)).scalars().all())
    for order in due:
        await _take_off_book(session, order, OrderStatus.expired, "expired")
    return due


async def list_orders(
    session: AsyncSession, organization_id: uuid.UUID, params: PageParams
) -> Page[MarketOrder]:
    return await OrderRepository(session).list_own(organization_id, params)


async def trades_of(session: AsyncSession, order_ids: list[uuid.UUID]) -> list[MarketTrade]:
    return await TradeRepository(session).of_orders(order_ids)


async def list_trades(
    session: AsyncSession, organization_id: uuid.UUID, params: PageParams
) -> Page[MarketTrade]:
    return await TradeRepository(session).list_own(organization_id, params)


async def tape(session: AsyncSession, code: str, params: PageParams) -> Page[MarketTrade]:
    product = await get_product(session, code)
    return await TradeRepository(session).tape(product.id, params)


async def product_codes(session: AsyncSession, product_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not product_ids:
        return {}
    rows = await session.execute(
        select(Product.id, Product.code).where(Product.id.in_(product_ids))
    )
    return {row.id: row.code for row in rows}
