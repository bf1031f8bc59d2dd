"""Call auctions (板寄せ, itayose): a call product's orders collect, then uncross at one price.

A product with ``trading_mode`` ``call`` takes limit orders (``gtc``/``gtd``) that rest without
matching (the book may cross meanwhile); they trade only at the product's ``call_times``
(wall-clock times in Asia/Tokyo, as the TSE carbon-credit market's 11:30 and 15:00 calls).
Following the TSE market, which takes limit orders only, a call product refuses market, ``ioc``,
``fok`` and post-only orders (422 ``order_not_for_call``): there is no "immediate" in a call,
and a market order's cash hold (band high × quantity) would have to guess the band at the call.

A call (``run_call``), under the product's advisory lock (the one ``place_order`` takes):

1. stops if a run of this call is recorded: the run is a ``market_call_runs`` row (UNIQUE
   ``(product_id, scheduled_at)``) written in the call's own transaction, so a second worker,
   or a restart, finds it under the lock and does nothing;
2. expires the due GTD orders, loads the open orders and runs ``app.market.uncross``: the one
   price that maximises volume, then minimises the imbalance, then is closest to the reference
   (the last trade price, else the product's reference price), then is the higher;
3. pairs the fills the uncross allocated (price-time priority, partial fills) buy against sell
   (``pair_fills``: never an organisation with itself) and settles each pair through
   ``service._settle`` at the one price: the buyer's improvement (its limit minus the price)
   is released from its hold. Of each pair the order that arrived later is reported as the
   taker (the order that made the cross), the earlier as the maker;
4. closes the orders filled completely (their holds released), keeps the rest open with
   their time priority, and publishes the trades and touched levels.

A ``call_then_continuous`` product has one call time, its daily opening (``app.market.phase``):
orders collect (as above) until the opening call has run, then match on arrival until midnight
(Tokyo). So that continuous matching can take the book the opening call leaves, an opening call
also cancels (``self_trade``) the orders it could not trade only because their counterparties
were their own organisation's: nothing else can still cross after an uncross at the volume-
maximising price.

Scheduling (``run_due_calls``, the ``market.run_calls`` task every minute): for each call
product, the latest call time that has come (not before the product was created) runs if it has
no run recorded. Calls missed while no worker ran are merged into the latest one (one uncross
covers every open order anyway), and calls run every day (no exchange holiday calendar).
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.ids import new_id
from app.core.time import TOKYO, utc_now
from app.ledger import service as ledger_service
from app.ledger.models import AccountKind
from app.market import service as market_service
from app.market.errors import NotACallProduct
from app.market.matching import CancelReason, Side, Trade
from app.market.models import (
    MarketCallRun,
    MarketOrder,
    MarketTrade,
    OrderStatus,
    Product,
    TradingMode,
)
from app.market.phase import calls_on
from app.market.repository import OrderRepository, ProductRepository
from app.market.uncross import CallOrder, UncrossResult, uncross
from app.worker.resources import job_session

log = structlog.get_logger()

SCHEDULED = "scheduled"
MANUAL = "manual"


# --- the schedule ------------------------------------------------------------------------


def latest_due_call(product: Product, now: datetime) -> datetime | None:
    """The latest call time at or before ``now`` (None for a continuous product, or when the
    product did not exist yet at that time)."""
    if product.trading_mode == TradingMode.continuous:
        return None
    today = now.astimezone(TOKYO).date()
    due = [t for day in (today - timedelta(days=1), today) for t in calls_on(product, day)]
    latest = max((t for t in due if t <= now), default=None)
    if latest is None or latest < product.created_at:
        return None
    return latest


def next_call_at(product: Product, now: datetime) -> datetime | None:
    """The first call time after ``now`` (None for a continuous product)."""
    if product.trading_mode == TradingMode.continuous:
        return None
    today = now.astimezone(TOKYO).date()
    later = [t for day in (today, today + timedelta(days=1)) for t in calls_on(product, day)]
    return min(t for t in later if t > now)


# --- pairing the fills -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallFill:
    """One order's fill in a call: its id, owner and the quantity the uncross gave it."""

    order_id: Hashable
    owner: Hashable
    quantity: int


@dataclass(frozen=True, slots=True)
class Pair:
    buy_id: Hashable
    sell_id: Hashable
    quantity: int


def pair_fills(buys: Sequence[CallFill], sells: Sequence[CallFill]) -> list[Pair]:
    """Pair the buy fills with the sell fills (each side in priority order), never an owner
    with itself.

    Greedy in priority order: each buy takes the earliest sells of other owners. What is left
    (one organisation's buys and sells, which only each other were left for) is then swapped
    into pairs of two other owners (b→s and own_b→own_s become b→own_s and own_b→s), which
    keeps every order's filled quantity. Linear unless owners collide. A remainder no swap can place is not traded (self-trade
    prevention): both orders keep it open. Pairs of the same two orders are merged.
    """
    sell_left = [s.quantity for s in sells]
    pairs: list[list[int]] = []  # [buy index, sell index, quantity]
    buy_left: list[int] = []
    first = 0  # the first sell with something left: the scan is linear unless owners collide
    for i, buy in enumerate(buys):
        want = buy.quantity
        for j in range(first, len(sells)):
            if not want:
                break
            if sell_left[j] and sells[j].owner != buy.owner:
                take = min(want, sell_left[j])
                pairs.append([i, j, take])
                sell_left[j] -= take
                want -= take
        buy_left.append(want)
        while first < len(sells) and not sell_left[first]:
            first += 1

    # A buy left over found only its owner's sells left, and sells only get used up: so what
    # is left on both sides (equal totals) is one owner's. Swap it into the pairs of others.
    left_buys = [i for i, left in enumerate(buy_left) if left]
    left_sells = [j for j, left in enumerate(sell_left) if left]
    if left_buys and left_sells:
        owner = buys[left_buys[0]].owner
        assert all(buys[i].owner == owner for i in left_buys)
        assert all(sells[j].owner == owner for j in left_sells)
        others = [p for p in pairs if buys[p[0]].owner != owner and sells[p[1]].owner != owner]
        k = n = 0
        for i in left_buys:
            while buy_left[i] and k < len(others) and n < len(left_sells):
                pair, j = others[k], left_sells[n]
                take = min(buy_left[i], sell_left[j], pair[2])
                pair[2] -= take
                pairs.append([pair[0], j, take])
                pairs.append([i, pair[1], take])
                buy_left[i] -= take
                sell_left[j] -= take
                k += not pair[2]
                n += not sell_left[j]

    merged: dict[tuple[int, int], int] = {}
    for i, j, quantity in pairs:
        if quantity:
            merged[i, j] = merged.get((i, j), 0) + quantity
    return [Pair(buys[i].order_id, sells[j].order_id, q) for (i, j), q in merged.items()]


# --- running a call ----------------------------------------------------------------------


async def lock_for_fills(
    session: AsyncSession,
    product: Product,
    orders: Iterable[MarketOrder],
    fills: Sequence[Trade],
    by_id: dict[uuid.UUID, MarketOrder],
) -> None:
    """Take ``service.lock_settlement`` for what settling ``fills`` and resizing or releasing
    the holds of ``orders`` (every party) touch, before any hold or posting."""
    orders = list(orders)
    holds = await market_service.credit_holds(
        session, [o.id for o in orders if o.side == Side.SELL]
    )
    batches = {oid: [h.batch_id for h in hs] for oid, hs in holds.items()}
    keys: set[market_service.AccountKey] = set()
    for o in orders:
        keys |= market_service._order_keys(o.organization_id, Side(o.side), batches.get(o.id, []))
    for fill in fills:
        taker, maker = by_id[fill.taker_id], by_id[fill.maker_id]  # type: ignore[index]
        buy, sell = (taker, maker) if fill.taker_side is Side.BUY else (maker, taker)
        keys.add((sell.organization_id, ledger_service.CASH, AccountKind.available))
        keys |= {
            (buy.organization_id, ledger_service.credit_asset(b), AccountKind.available)
            for b in batches.get(sell.id, [])
        }
    await market_service.lock_settlement(
        session,
        {b for bs in batches.values() for b in bs},
        keys,
        fee_scope=product.id
        if fills and (product.maker_fee_bps or product.taker_fee_bps)
        else None,
    )


def _unpaired(result: UncrossResult, pairs: Sequence[Pair]) -> list[Hashable]:
    """The orders the uncross gave a fill that pairing could not place (self-crosses)."""
    paired: dict[Hashable, int] = {}
    for pair in pairs:
        paired[pair.buy_id] = paired.get(pair.buy_id, 0) + pair.quantity
        paired[pair.sell_id] = paired.get(pair.sell_id, 0) + pair.quantity
    return [f.order_id for f in result.fills if paired.get(f.order_id, 0) < f.quantity]


def _call_order(order: MarketOrder) -> CallOrder:
    return CallOrder(
        order.id,
        Side(order.side),
        order.quantity - order.filled_quantity,
        order.price,
        order.sequence,
    )


def reference_of(product: Product) -> int | None:
    """The uncross tie-break reference, as the band's centre: last trade, else reference."""
    return product.last_trade_price or product.reference_price


async def _uncross_open_orders(
    session: AsyncSession, product: Product
) -> tuple[list[MarketOrder], UncrossResult]:
    resting = await OrderRepository(session).open_orders(product.id)
    return resting, uncross((_call_order(o) for o in resting), reference_of(product))


async def run_call(
    session: AsyncSession, product_id: uuid.UUID, scheduled_at: datetime, trigger: str
) -> MarketCallRun | None:
    """Run one call of one product (see the module docstring); None if it has already run."""
    products = ProductRepository(session)
    await products.lock(product_id)
    product = await products.reload(product_id)
    done = await session.scalar(
        select(MarketCallRun.id).where(
            MarketCallRun.product_id == product_id, MarketCallRun.scheduled_at == scheduled_at
        )
    )
    if done is not None:
        return None
    now = utc_now()
    await market_service.expire_product_orders(session, product.id, now)
    resting, result = await _uncross_open_orders(session, product)
    by_id = {o.id: o for o in resting}
    fills: dict[Side, list[CallFill]] = {Side.BUY: [], Side.SELL: []}
    for fill in result.fills:
        order = by_id[fill.order_id]  # type: ignore[index]
        fills[fill.side].append(CallFill(order.id, order.organization_id, fill.quantity))

    events: list[Trade] = []
    touched: set[tuple[str, int]] = set()
    pairs = pair_fills(fills[Side.BUY], fills[Side.SELL])
    for pair in pairs:
        assert result.price is not None
        buy, sell = by_id[pair.buy_id], by_id[pair.sell_id]  # type: ignore[index]
        assert buy.price is not None  # a call product's orders are limit orders
        assert sell.price is not None
        taker, maker = (buy, sell) if buy.sequence > sell.sequence else (sell, buy)
        events.append(
            Trade(
                maker_id=maker.id,
                taker_id=taker.id,
                price=result.price,
                quantity=pair.quantity,
                maker_owner=maker.organization_id,
                taker_owner=taker.organization_id,
                taker_side=Side(taker.side),
                buyer_improvement=(buy.price - result.price) * pair.quantity,
            )
        )
        touched.update({(str(buy.side), buy.price), (str(sell.side), sell.price)})
    parties = {
        o.id: o
        for e in events
        for o in (by_id[e.maker_id], by_id[e.taker_id])  # type: ignore[index]
    }
    self_crossed: set[uuid.UUID] = set()
    if product.trading_mode == TradingMode.call_then_continuous:  # an opening call
        self_crossed = {by_id[i].id for i in _unpaired(result, pairs)}  # type: ignore[index]
    parties |= {order_id: by_id[order_id] for order_id in self_crossed}
    await lock_for_fills(session, product, parties.values(), events, by_id)
    trades: list[MarketTrade] = []
    for event in events:
        trades.extend(await market_service._settle(session, product, event, by_id))
    for order in parties.values():
        if order.filled_quantity == order.quantity:
            market_service._close(order, OrderStatus.filled)
            await market_service._release_rest(session, order)
        elif order.id in self_crossed:
            # An opening call leaves a book continuous matching can take (it never crosses):
            # an organisation's own crossing orders that could not trade are cancelled.
            market_service._close(order, OrderStatus.cancelled, CancelReason.SELF_TRADE.value)
            await market_service._release_rest(session, order)
            assert order.price is not None
            touched.add((str(order.side), order.price))

    volume = sum(t.quantity for t in trades)
    run = MarketCallRun(
        id=new_id(),
        product_id=product.id,
        scheduled_at=scheduled_at,
        trigger=trigger,
        price=result.price if volume else None,
        volume=volume,
        surplus=result.surplus,
        trades=len(trades),
        ran_at=now,
    )
    session.add(run)
    await session.flush()
    await market_service._publish(session, product.id, trades, touched)
    return run


async def run_call_now(session: AsyncSession, code: str) -> tuple[Product, MarketCallRun]:
    """An admin's call of a call product, now (``trigger`` manual)."""
    product = await market_service.get_product(session, code)
    if product.trading_mode == TradingMode.continuous:
        raise NotACallProduct(
            "This product trades continuously: it has no calls.", product=product.code
        )
    run = await run_call(session, product.id, utc_now(), MANUAL)
    assert run is not None  # scheduled at a fresh now
    return product, run


async def run_due_calls(now: datetime | None = None) -> list[MarketCallRun]:
    """Run every call product's latest due call that has not run, one transaction each."""
    now = now or utc_now()
    async with job_session() as session:
        products = list(
            (
                await session.execute(
                    select(Product).where(Product.trading_mode != TradingMode.continuous)
                )
            )
            .scalars()
            .all()
        )
        due = [(p.id, at) for p in products if (at := latest_due_call(p, now)) is not None]
        rows = await session.execute(
            select(MarketCallRun.product_id, MarketCallRun.scheduled_at).where(
                MarketCallRun.scheduled_at.in_({at for _, at in due})
            )
        )
        ran = {(row.product_id, row.scheduled_at) for row in rows}
    runs: list[MarketCallRun] = []
    for product_id, at in due:
        if (product_id, at) in ran:
            continue
        async with job_session() as session:
            run = await run_call(session, product_id, at, SCHEDULED)
        if run is not None:
            runs.append(run)
            log.info(
                "market.call_ran",
                product_id=str(product_id),
                scheduled_at=at.isoformat(),
                price=run.price,
                volume=run.volume,
                trades=run.trades,
            )
    return runs


@dataclass(frozen=True, slots=True)
class Indicative:
    product: Product
    result: UncrossResult
    reference_price: int | None
    next_call_at: datetime | None


async def indicative(session: AsyncSession, code: str) -> Indicative:
    """What the product's book would uncross at now (read only, no lock: a snapshot)."""
    product = await market_service.get_product(session, code)
    _, result = await _uncross_open_orders(session, product)
    return Indicative(product, result, reference_of(product), next_call_at(product, utc_now()))
