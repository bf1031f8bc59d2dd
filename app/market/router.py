from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.dependencies import (
    AUTH_ERRORS,
    AdminDep,
    AnyKeyDep,
    ReaderDep,
    TraderDep,
)
from app.core.errors import problem_responses
from app.core.pagination import Page, PageDep
from app.core.time import utc_now
from app.db.session import REQUEST_SESSION_KEY, SessionDep, SessionMaker
from app.db.url import libpq_url
from app.ledger.errors import InsufficientBalance
from app.market import amend as market_amend
from app.market import calls as market_calls
from app.market import candles as market_candles
from app.market import group as market_group
from app.market import service as market_service
from app.market.errors import (
    AmendBelowFilled,
    AmendIncreaseNotSupported,
    DuplicateClientOrderId,
    InvalidProduct,
    NoReferencePrice,
    NotACallProduct,
    OrderNotForCall,
    OrderNotFound,
    OrderNotOpen,
    OrderRejected,
    PriceOutsideBand,
    ProductCodeTaken,
    ProductNotFound,
)
from app.market.matching import Side
from app.market.models import OPEN_STATUSES, MarketCallRun, MarketOrder, MarketTrade, Product
from app.market.schemas import (
    BookRead,
    CallRunRead,
    CandleInterval,
    CandleRead,
    CandlesRead,
    IndicativeRead,
    LevelRead,
    OrderAmend,
    OrderCreate,
    OrderRead,
    ProductCreate,
    ProductRead,
    PublicTradeRead,
    TradeRead,
)
from app.market.stream import market_events
from app.offsets.errors import BatchNotFound, InsufficientCredits

router = APIRouter(tags=["market"])


def product_read(p: Product) -> ProductRead:
    return ProductRead(
        id=p.id,
        code=p.code,
        name=p.name,
        batch_id=p.batch_id,
        category=p.category,
        vintage_min=p.vintage_min,
        vintage_max=p.vintage_max,
        labels=p.labels,
        reference_price=p.reference_price,
        last_trade_price=p.last_trade_price,
        band_bps=p.band_bps,
        maker_fee_bps=p.maker_fee_bps,
        taker_fee_bps=p.taker_fee_bps,
        trading_mode=p.trading_mode,
        call_times=p.call_times,
        next_call_at=market_calls.next_call_at(p, utc_now()),
        created_at=p.created_at,
    )


def trade_read(t: MarketTrade, organization_id: uuid.UUID, code: str) -> TradeRead:
    side = Side.BUY if t.buyer_organization_id == organization_id else Side.SELL
    return TradeRead(
        id=t.id,
        order_id=t.buy_order_id if side is Side.BUY else t.sell_order_id,
        product=code,
        side=side,
        liquidity="taker" if t.taker_side == side else "maker",
        price=t.price,
        quantity=t.quantity,
        amount=t.price * t.quantity,
        fee=t.buyer_fee if side is Side.BUY else t.seller_fee,
        batch_id=t.batch_id,
        serial_ranges=t.serial_ranges,
        executed_at=t.executed_at,
    )


def order_read(o: MarketOrder, code: str, trades: list[MarketTrade]) -> OrderRead:
    mine = [t for t in trades if o.id in (t.buy_order_id, t.sell_order_id)]
    return OrderRead(
        id=o.id,
        product=code,
        side=o.side,
        type=o.type,
        price=o.price,
        quantity=o.quantity,
        filled_quantity=o.filled_quantity,
        remaining_quantity=o.quantity - o.filled_quantity if o.status in OPEN_STATUSES else 0,
        filled_amount=o.filled_amount,
        average_price=round(o.filled_amount / o.filled_quantity, 2) if o.filled_quantity else None,
        status=o.status,
        cancel_reason=o.cancel_reason,
        time_in_force=o.time_in_force,
        expires_at=o.expires_at,
        post_only=o.post_only,
        client_order_id=o.client_order_id,
        sequence=o.sequence,
        created_at=o.created_at,
        updated_at=o.updated_at,
        trades=[trade_read(t, o.organization_id, code) for t in mine],
    )


async def _orders_read(session: AsyncSession, orders: list[MarketOrder]) -> list[OrderRead]:
    codes = await market_service.product_codes(session, {o.product_id for o in orders})
    trades = await market_service.trades_of(session, [o.id for o in orders])
    return [order_read(o, codes[o.product_id], trades) for o in orders]


# --- products --------------------------------------------------------------------------


@router.post(
    "/products",
    status_code=status.HTTP_201_CREATED,
    response_model=ProductRead,
    responses=problem_responses(*AUTH_ERRORS, InvalidProduct, BatchNotFound, ProductCodeTaken),
    summary="Create a product: the credits of one batch, or a category product (any batch of "
    "a category, vintage window and labels), with its maker and taker fees",
)
async def create_product(body: ProductCreate, session: SessionDep, _: AdminDep) -> ProductRead:
    return product_read(await market_service.create_product(session, body))


@router.get(
    "/products",
    response_model=list[ProductRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="Every product, by code",
)
async def list_products(session: SessionDep, _: AnyKeyDep) -> list[ProductRead]:
    return [product_read(p) for p in await market_service.list_products(session)]


# --- orders ----------------------------------------------------------------------------


@router.post(
    "/orders",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderRead,
    responses=problem_responses(
        *AUTH_ERRORS,
        ProductNotFound,
        NoReferencePrice,
        PriceOutsideBand,
        DuplicateClientOrderId,
        InsufficientBalance,
        InsufficientCredits,
        OrderRejected,
        OrderNotForCall,
    ),
    summary="Place an order: its cash or credits are held, it is matched and its fills settled",
)
async def place_order(body: OrderCreate, request: Request, principal: TraderDep) -> OrderRead:
    # Grouped with the same product's concurrent orders (``app.market.group``, in sessions of
    # its own: no request session), except when the idempotency middleware owns the
    # transaction (its stored answer commits with the order).
    owned = request.scope.get("state", {}).get(REQUEST_SESSION_KEY)
    if owned is not None:
        placed = await market_service.place_order(owned, principal.organization_id, body)
    else:
        placed = await market_group.place_order(
            request.app.state.sessionmaker, principal.organization_id, body
        )
    return order_read(placed.order, placed.product.code, placed.trades)


@router.get(
    "/orders",
    response_model=Page[OrderRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="The caller's orders, newest first",
)
async def list_orders(session: SessionDep, principal: ReaderDep, page: PageDep) -> Page[OrderRead]:
    result = await market_service.list_orders(session, principal.organization_id, page)
    return Page(data=await _orders_read(session, result.data), next_cursor=result.next_cursor)


@router.get(
    "/orders/{order_id}",
    response_model=OrderRead,
    responses=problem_responses(*AUTH_ERRORS, OrderNotFound),
    summary="One of the caller's orders, with its fills",
)
async def get_order(order_id: uuid.UUID, session: SessionDep, principal: ReaderDep) -> OrderRead:
    order = await market_service.get_order(session, principal.organization_id, order_id)
    return (await _orders_read(session, [order]))[0]


@router.delete(
    "/orders/{order_id}",
    response_model=OrderRead,
    responses=problem_responses(*AUTH_ERRORS, OrderNotFound, OrderNotOpen),
    summary="Cancel one of the caller's open orders; what remains of its hold is released",
)
async def cancel_order(order_id: uuid.UUID, session: SessionDep, principal: TraderDep) -> OrderRead:
    order = await market_service.cancel_order(session, principal.organization_id, order_id)
    return (await _orders_read(session, [order]))[0]


@router.patch(
    "/orders/{order_id}",
    response_model=OrderRead,
    responses=problem_responses(
        *AUTH_ERRORS,
        OrderNotFound,
        OrderNotOpen,
        AmendBelowFilled,
        AmendIncreaseNotSupported,
        PriceOutsideBand,
        InsufficientBalance,
        OrderRejected,
    ),
    summary="Amend one of the caller's open orders (quantity and/or price); a reduced quantity "
    "keeps its time priority, any other change loses it and may trade at once",
)
async def amend_order(
    order_id: uuid.UUID, body: OrderAmend, session: SessionDep, principal: TraderDep
) -> OrderRead:
    order = await market_amend.amend_order(session, principal.organization_id, order_id, body)
    return (await _orders_read(session, [order]))[0]


@router.get(
    "/trades",
    response_model=Page[TradeRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="The caller's fills, newest first",
)
async def list_trades(session: SessionDep, principal: ReaderDep, page: PageDep) -> Page[TradeRead]:
    result = await market_service.list_trades(session, principal.organization_id, page)
    codes = await market_service.product_codes(session, {t.product_id for t in result.data})
    return Page(
        data=[trade_read(t, principal.organization_id, codes[t.product_id]) for t in result.data],
        next_cursor=result.next_cursor,
    )


# --- public market data ------------------------------------------------------------------


@router.get(
    "/markets/{product}/book",
    response_model=BookRead,
    responses=problem_responses(ProductNotFound),
    summary="The product's order book aggregated by price, best first (public)",
)
async def get_book(
    product: str,
    session: SessionDep,
    depth: Annotated[int, Query(ge=1, le=100, description="Levels per side.")] = 10,
) -> BookRead:
    return await _book_read(session, product, depth)


async def _book_read(session: AsyncSession, product: str, depth: int) -> BookRead:
    snapshot = await market_service.book_snapshot(session, product, depth)
    return BookRead(
        product=product,
        bids=[
            LevelRead(price=lv.price, quantity=lv.quantity, orders=lv.orders)
            for lv in snapshot.bids
        ],
        asks=[
            LevelRead(price=lv.price, quantity=lv.quantity, orders=lv.orders)
            for lv in snapshot.asks
        ],
    )


@router.get(
    "/markets/{product}/trades",
    response_model=Page[PublicTradeRead],
    responses=problem_responses(ProductNotFound),
    summary="The product's public trade tape, newest first (no owners)",
)
async def get_tape(product: str, session: SessionDep, page: PageDep) -> Page[PublicTradeRead]:
    result = await market_service.tape(session, product, page)
    return Page(
        data=[
            PublicTradeRead(
                id=t.id,
                price=t.price,
                quantity=t.quantity,
                taker_side=t.taker_side,
                executed_at=t.executed_at,
            )
            for t in result.data
        ],
        next_cursor=result.next_cursor,
    )


@router.get(
    "/markets/{product}/candles",
    response_model=CandlesRead,
    responses=problem_responses(ProductNotFound),
    summary="OHLCV candles of the product's trades (public); 1d candles start at midnight "
    "Asia/Tokyo, the others are aligned on UTC",
)
async def get_candles(
    product: str,
    session: SessionDep,
    interval: Annotated[CandleInterval, Query(description="Candle width.")],
    since: Annotated[
        datetime | None,
        Query(
            description="The first candles from the one containing this time (oldest first); "
            "without it, the latest ones."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Candles at most.")] = 100,
) -> CandlesRead:
    found = await market_service.get_product(session, product)
    result = await market_candles.candles(session, found.id, interval, since=since, limit=limit)
    return CandlesRead(
        product=found.code,
        interval=interval,
        candles=[
            CandleRead(
                start=c.start,
                open=c.open,
                high=c.high,
                low=c.low,
                close=c.close,
                volume=c.volume,
                turnover=c.turnover,
                trades=c.trades,
            )
            for c in result
        ],
    )


@router.get(
    "/markets/{product}/indicative",
    response_model=IndicativeRead,
    responses=problem_responses(ProductNotFound),
    summary="The price and volume the product's book would uncross at now, as a call "
    "auction would (public; for a call product, the indicative price of the next call)",
)
async def get_indicative(product: str, session: SessionDep) -> IndicativeRead:
    found = await market_calls.indicative(session, product)
    return IndicativeRead(
        product=found.product.code,
        trading_mode=found.product.trading_mode,
        price=found.result.price,
        volume=found.result.volume,
        demand=found.result.demand,
        supply=found.result.supply,
        imbalance=found.result.surplus,
        reference_price=found.reference_price,
        next_call_at=found.next_call_at,
    )


@router.post(
    "/markets/{product}/call",
    response_model=CallRunRead,
    responses=problem_responses(*AUTH_ERRORS, ProductNotFound, NotACallProduct),
    summary="Run a call auction of a call product now (admin): its open orders uncross at one "
    "price",
)
async def run_call(product: str, session: SessionDep, _: AdminDep) -> CallRunRead:
    found, run = await market_calls.run_call_now(session, product)
    return call_run_read(found.code, run)


def call_run_read(code: str, run: MarketCallRun) -> CallRunRead:
    return CallRunRead(
        product=code,
        scheduled_at=run.scheduled_at,
        trigger=run.trigger,
        price=run.price,
        volume=run.volume,
        imbalance=run.surplus,
        trades=run.trades,
        ran_at=run.ran_at,
    )


STREAM_DESCRIPTION = """Server-Sent Events (`text/event-stream`), fed by PostgreSQL
LISTEN/NOTIFY: only committed changes are sent. First `event: snapshot` (the book as
`GET /v1/markets/{product}/book?depth=100`), then, as they commit, `event: trade`
(`{id, price, quantity, taker_side, executed_at}`) and `event: level`
(`{side, price, quantity, orders}`: the level's new aggregate, quantity 0 once empty). A
`: heartbeat` comment is sent every 15 s without events. Reconnect and apply the new snapshot
after a disconnect (no replay)."""


@router.get(
    "/markets/{product}/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The event stream.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(ProductNotFound),
    },
    summary="Live stream of the product's trades and book changes as Server-Sent Events "
    "(public; snapshot first, heartbeat every 15 s)",
    description=STREAM_DESCRIPTION,
)
async def stream_market(product: str, request: Request) -> StreamingResponse:
    # Short sessions, not SessionDep: the request's pooled connection must not be held for the
    # life of the stream, which LISTENs on a dedicated connection of its own.
    sessionmaker: SessionMaker = request.app.state.sessionmaker
    async with sessionmaker() as session:
        found = await market_service.get_product(session, product)

    async def snapshot() -> dict[str, Any]:
        async with sessionmaker() as s:
            return (await _book_read(s, found.code, 100)).model_dump(mode="json")

    dsn = libpq_url(request.app.state.engine.url.render_as_string(hide_password=False))
    return StreamingResponse(
        market_events(dsn, found.id, snapshot),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
