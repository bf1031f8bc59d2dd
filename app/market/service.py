"""The continuous order book: products, orders with their holds, matching and settlement.

Placing an order (one transaction; ``place_orders`` places several, of one product, in one
transaction and under one lock, exactly as one after the other: ``app.market.group``):

1. Take the product's advisory lock (``pg_advisory_xact_lock(hashtextextended('market:' ||
   product_id, 0))``). Everything below runs under it, so one product's orders are matched one
   at a time, and the lock is taken *before* any ledger or registry row lock (settling a fill
   locks the batch row and the parties' accounts; taking those before the product lock could
   deadlock with the transaction holding it).
2. Rebuild the book from the open orders in the database (``OrderBook.restore`` in ``sequence``
   order) and submit the order to it, in memory, with a provisional sequence above every
   resting one (its real one, taken on insert from the identity column, is larger still). A
   rejection (post-only that would cross) raises before anything is written.
3. Lock, in one global order, everything the fills and holds will touch (``lock_settlement``):
   the batches (by id), then every cash and credit account (by id), in one statement. Two
   orders on different products between the same organisations then queue instead of
   deadlocking. A lone order without fills (a buy, or a sell of a batch product) skips the
   accounts: its hold call locks its own two accounts, of one asset, by id, itself.
4. Hold what the order may need: a buy limit holds ``buy_hold(price, quantity)`` JPY (the
   amount plus the largest fee), a market buy the same at the band high; a sell holds
   ``quantity`` of the seller's eligible credits (``eligible_holdings``: the product's batch,
   or a category product's batches, oldest vintage first, then by batch id), one credit hold
   per batch (``market_order_credit_holds``). A shortfall raises (409) and nothing is written.
   The order row is added, and inserted (taking its sequence) by the flush after step 5,
   with its fills applied.
5. Persist the events: every ``Trade`` is settled at once (``_settle``), one ``market_trades``
   row per batch its credits come from: cash from the buyer's hold to the seller's available
   JPY at the trade price, the fees to the platform's fee account, credits from the seller's
   holds to the buyer (the serial ranges delivered are stored on the trade), and the buyer's
   hold brought down to what its open quantity may still need. An order that ends (filled or
   cancelled) has what remains of its holds released (a filled buy's hold is used up: its
   last fill brought it to zero).
6. Publish (``pg_notify('market_<product id hex>', json)``, same transaction, so delivered only
   if it commits): one ``trade`` event per fill and one ``level`` event per price level the
   order touched (its new aggregate, ``quantity`` 0 once empty). Cancels and expiries publish
   their level too. ``app.market.stream`` relays them as Server-Sent Events. When the orders
   traded, the same statement writes the product's ``last_trade_price``.

GTD orders rest like GTC; ``expire_product_orders`` (run every minute by
``app.market.tasks``) closes the due ones with status ``expired`` through the cancel path.
Placing an order runs it first for its product (under the lock), so a due order never trades;
those releases lock their own accounts before step 3 (all of them in the global order too, but
as a first round): only a GTD order due and not yet expired by the minute task makes that
window.

Fees (``maker_fee_bps``, ``taker_fee_bps`` per product) are charged on each trade row's amount
(price × quantity), rounded down to the yen: the buyer pays its fee on top of the amount (out
of its hold), the seller's is deducted from its proceeds; both go to the ledger's system JPY
``fees`` account (no organisation: the platform's revenue, like ``external`` and ``retired``)
in the fill's own entries. Every fill with a fee locks that one account, so fee-charging fills
of different products commit one after the other; sharding it is the next step if that shows.

Throughput on one product is one over the time an order holds the product lock, and on this
path that time is round trips to the database and the Python between them, so the path under
the lock keeps them few (``bench/orders`` measures it): the lock and the product row come in
one call (``market_lock_product``); due GTD orders are found among the open orders already
loaded (the expiry path runs only if there is one); ``lock_settlement`` locks the batches and
finds and locks the accounts in one statement once they are known to exist and returns their
ids, which the fills use instead of looking them up; every hold, settlement and release is
one SQL call (``ledger_service.reserve``, ``settle_hold``, ``release``, ``release_rest``; the
credit side through ``offsets_service.*_locked``, under the batch locks already taken, one
block read and one block write each); the credit holds of the orders involved are read once
and kept in memory for the fills and releases; the level events are read from the book in
memory; the order row is written once; the product's new last price goes with the NOTIFY.
Every entry still goes through ``ledger_post_entries``. Group commit (``app.market.group``)
then shares the lock, the book, the account locks, the flush, the NOTIFY and the commit among
the orders that queue in one process.

Holds cannot be taken before the product lock: a hold locks the owner's accounts until
commit, and the transaction holding the product lock may need those accounts to settle a fill
against that owner's resting order, a deadlock. Rebuilding the book costs O(open orders of the
product) per lock acquisition. A group (``app.market.group``) reads only the part of the book
its orders can reach (``app.market.reach``, migration 0028), through the driver
(``ProductRepository.lock_and_read_book``): the resting orders are plain instances outside the
session, and only those its fills and closes name are made the session's (``stored_row``)
before anything is set on them, so a flush or the group's write call writes exactly those.
Within the reach, a group reads of each side only what its orders' quantities (and room for
late arrivals) can fill, in priority order, and the rest is counted per level (migration
0029, ``Book.hidden``): the engine holds those counts behind the orders read, so the
``level`` events stay exact, and raises ``BookIncomplete`` (the group is then placed one by
one) if it ever needed more. An order placed alone (the one-by-one path, an
``Idempotency-Key`` request) reads the same way, with the same call, what it can fill.

In a group of orders on a batch product, the holds, payments, fees and serial-block changes
are not sent one by one: ``app.db.deferred`` records them in order while the group is placed
(the registry works on its own copy of the live blocks: the active blocks of the group's
sellers and the blocks of the resting sells' holds it fills, with the blocks touching them,
read in one statement, not every block of every seller: migration 0029) and sends them in
one call of ``tanso_apply_deferred`` (migration 0015), which writes the hold rows in order,
posts every entry in one ``ledger_post_entries`` call (balances checked after each leg, in
order: the refusals of one call per operation) and the blocks' net change in two
statements. A refusal then surfaces from that call; the group
is rolled back and placed one order at a time, where each refusal has its own answer. A
category product's groups still write as they go (a sell there reads its balances between
the writes). ``tests/market/test_deferred_group.py`` checks that a group leaves exactly what
the same orders placed one at a time leave.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Uuid, any_, bindparam, inspect, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from app.core.ids import new_id
from app.core.pagination import Page, PageParams
from app.core.time import utc_now
from app.db import deferred as deferred_writes
from app.db.base import new_row, stored_row
from app.db.driver import CommitOutcomeUnknown, DatabaseRefusal, call_and_commit, fetch_rows
from app.ledger import service as ledger_service
from app.ledger.errors import LedgerInvariantViolated
from app.ledger.models import Account, AccountKind, Hold, HoldStatus
from app.ledger.posting import transfer
from app.market import phase
from app.market.errors import (
    DuplicateClientOrderId,
    InvalidProduct,
    NoReferencePrice,
    OrderNotForCall,
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
    PriceLevel,
    Rejected,
    Rested,
    Side,
    TimeInForce,
    Trade,
)
from app.market.models import (
    OPEN_STATUSES,
    MarketOrder,
    MarketOrderCreditHold,
    MarketTrade,
    OrderStatus,
    OrderTimeInForce,
    Product,
    TradingMode,
)
from app.market.reach import Reach
from app.market.repository import (
    Book,
    HiddenLevel,
    LiveBlocks,
    OrderRepository,
    ProductRepository,
    TradeRepository,
)
from app.market.schemas import OrderCreate, ProductCreate
from app.offsets import service as offsets_service
from app.offsets.errors import InsufficientCredits
from app.offsets.models import Batch

FEES = AccountKind.fees  # the platform's fee accounts: the ledger's system JPY "fees" accounts
CLIENT_ORDER_ID_CONSTRAINT = "market_orders_organization_id_client_order_id_key"
PRODUCT_CODE_CONSTRAINT = "market_products_code_key"


# --- products --------------------------------------------------------------------------


def _check_source(body: ProductCreate) -> None:
    """A product trades one batch, or a category narrowed by a vintage window and labels."""
    if (body.batch_id is None) == (body.category is None):
        raise InvalidProduct(
            "A product names exactly one of batch_id (the credits of one batch) or category "
            "(category products: any eligible batch, oldest vintage first).",
            field="category" if body.batch_id is None else "batch_id",
        )
    if body.batch_id is not None:
        for name in ("vintage_min", "vintage_max", "labels"):
            if getattr(body, name):
                raise InvalidProduct(f"{name} is only valid for a category product.", field=name)
    if (
        body.vintage_min is not None
        and body.vintage_max is not None
        and body.vintage_min > body.vintage_max
    ):
        raise InvalidProduct("vintage_min must not be after vintage_max.", field="vintage_min")


async def create_product(session: AsyncSession, body: ProductCreate) -> Product:
    _check_source(body)
    if body.batch_id is not None:
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
            category=body.category,
            vintage_min=body.vintage_min,
            vintage_max=body.vintage_max,
            labels=body.labels,
            reference_price=body.reference_price,
            band_bps=body.band_bps,
            maker_fee_bps=body.maker_fee_bps,
            taker_fee_bps=body.taker_fee_bps,
            trading_mode=body.trading_mode,
            call_times=body.call_times,
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


# Product code -> (id, trading mode), for the order path's first look: neither ever changes
# once a product exists (no endpoint changes or deletes one), so one read per process and
# code suffices. ``place_orders`` locks and reads the product itself; an id gone from the
# database (tests truncate tables: they call ``forget_products``) is a 404 and is forgotten.
_PRODUCT_IDS: dict[str, tuple[uuid.UUID, TradingMode]] = {}


async def product_id_and_mode(session: AsyncSession, code: str) -> tuple[uuid.UUID, TradingMode]:
    """The product's id and trading mode by its code (404 if none), read once per process."""
    found = _PRODUCT_IDS.get(code)
    if found is None:
        product = await get_product(session, code)
        found = _PRODUCT_IDS[code] = (product.id, TradingMode(product.trading_mode))
    return found


def known_product(code: str) -> tuple[uuid.UUID, TradingMode] | None:
    """``product_id_and_mode`` if this process has read it already (no session needed)."""
    return _PRODUCT_IDS.get(code)


def forget_products() -> None:
    _PRODUCT_IDS.clear()


def price_band(product: Product) -> tuple[int, int] | None:
    """(low, high) around the last trade price, else the reference price; None without either."""
    return price_band_at(product, product.last_trade_price)


def price_band_at(product: Product, last_trade_price: int | None) -> tuple[int, int] | None:
    """``price_band`` with this last trade price."""
    centre = last_trade_price or product.reference_price
    if centre is None:
        return None
    width = centre * product.band_bps // 10_000
    return max(1, centre - width), centre + width


# --- the book ----------------------------------------------------------------------------


# The engine's enums by their stored values: a look-up, where calling the enum costs about
# 0.3 µs (every resting order goes through ``_engine_order`` on every group).
_SIDES: dict[str, Side] = {s.value: s for s in Side}
_TYPES: dict[str, OrderType] = {t.value: t for t in OrderType}
_TIMES_IN_FORCE: dict[str, TimeInForce] = {t.value: t for t in TimeInForce}


def _engine_order(order: MarketOrder) -> Order:
    return Order(
        order_id=order.id,
        side=_SIDES[order.side],
        quantity=order.quantity - order.filled_quantity,
        price=order.price,
        owner=order.organization_id,
        sequence=order.sequence,
        order_type=_TYPES[order.type],
        time_in_force=_TIMES_IN_FORCE[order.time_in_force],
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
    book: OrderBook | None = None,
) -> None:
    """NOTIFY the trades and the new state of the touched levels (after a flush), read from
    ``book`` when the caller has the product's current book in memory (else from the open
    orders)."""
    events = [trade_event(t) for t in trades]
    if levels and book is not None:
        events += _level_events(book, levels)
    elif levels:
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
    await _notify(session, product_id, events)


async def _notify(
    session: AsyncSession,
    product_id: uuid.UUID,
    events: list[dict[str, Any]],
    traded: Product | None = None,
) -> None:
    """NOTIFY ``events`` on the product's channel, in one statement. ``traded``: a product
    whose new ``last_trade_price`` and ``updated_at`` (set by ``_settle``) the caller kept out
    of its flush (``_defer_product_write``): the same statement writes them, one round trip
    fewer under the product lock."""
    if traded is not None:
        # A data-modifying WITH runs once, to completion, whether or not the query reads it.
        await session.execute(
            text(
                "WITH p AS (UPDATE market_products SET last_trade_price = :price,"
                " updated_at = :at WHERE id = :id)"
                " SELECT pg_notify(:c, e) FROM unnest(CAST(:events AS text[])) AS e"
            ),
            {
                "price": traded.last_trade_price,
                "at": traded.updated_at,
                "id": traded.id,
                "c": channel(product_id),
                "events": [_json(e) for e in events],
            },
        )
    elif events:
        await session.execute(
            text("SELECT pg_notify(:c, e) FROM unnest(CAST(:events AS text[])) AS e"),
            {"c": channel(product_id), "events": [_json(e) for e in events]},
        )


def _defer_product_write(product: Product) -> None:
    """Keep the product's new last trade price and ``updated_at`` out of the next flush: the
    caller writes them with ``_publish(..., traded=product)`` in the same transaction."""
    for name in ("last_trade_price", "updated_at"):
        set_committed_value(product, name, getattr(product, name))


def restore_book(open_orders: list[MarketOrder], hidden: Sequence[HiddenLevel] = ()) -> OrderBook:
    """The engine's book of ``open_orders``, with ``hidden``'s orders counted behind them
    (``OrderBook.restore``)."""
    return OrderBook.restore((_engine_order(o) for o in open_orders), hidden=hidden)


async def book_snapshot(session: AsyncSession, code: str, depth: int) -> BookSnapshot:
    product = await get_product(session, code)
    open_orders = await OrderRepository(session).open_orders(product.id)
    if product.trading_mode != TradingMode.continuous:  # may cross until a call
        return _aggregate(open_orders, depth)
    return restore_book(open_orders).depth(depth)


def _aggregate(open_orders: list[MarketOrder], depth: int) -> BookSnapshot:
    """Price levels straight from the open orders (best first): a call product's book, which
    may cross until the call, so the matching engine cannot rebuild it."""
    levels: dict[tuple[Side, int], list[int]] = {}
    for o in open_orders:
        assert o.price is not None  # only limit orders rest
        level = levels.setdefault((Side(o.side), o.price), [0, 0])
        level[0] += o.quantity - o.filled_quantity
        level[1] += 1

    def side(which: Side, best_first: bool) -> tuple[PriceLevel, ...]:
        prices = sorted((p for s, p in levels if s is which), reverse=best_first)[:depth]
        return tuple(PriceLevel(p, *levels[which, p]) for p in prices)

    return BookSnapshot(bids=side(Side.BUY, True), asks=side(Side.SELL, False))


def _check_call_order(body: OrderCreate, collecting: bool) -> None:
    """Orders collecting for a call are limit gtc/gtd only (``app.market.calls``)."""
    if not collecting:
        return
    if body.type == OrderType.MARKET:
        field, what = "type", "market orders"
    elif body.time_in_force in (OrderTimeInForce.ioc, OrderTimeInForce.fok):
        field, what = "time_in_force", f"{body.time_in_force} orders"
    elif body.post_only:
        field, what = "post_only", "post-only orders"
    else:
        return
    raise OrderNotForCall(
        f"This product's orders are collecting for a call auction: {what} are not accepted "
        "(limit gtc or gtd orders only).",
        field=field,
    )


# --- orders ----------------------------------------------------------------------------


@dataclass(slots=True)
class PlacedOrder:
    order: MarketOrder
    product: Product
    trades: list[MarketTrade] = field(default_factory=list)


class GroupOutcomeUnknown(Exception):
    """The connection failed while a group's write call and commit were on their way
    (``place_orders(commit=True)``): the group was placed as ``placed`` if and only if its
    orders are in the database now."""

    def __init__(self, placed: list[PlacedOrder]) -> None:
        super().__init__(f"the commit of a group of {len(placed)} orders may have failed")
        self.placed = placed


# --- fees ------------------------------------------------------------------------------

BPS = 10_000


def fee(amount: int, bps: int) -> int:
    """The fee on a fill's ``amount`` (JPY) at ``bps``, rounded down to the yen.

    Rounding down keeps every fee within its rate and makes the fees of a buy order's fills
    (each at most its limit) add up to no more than the fee on its limit × quantity, which is
    what its hold covers (``buy_hold``).
    """
    return amount * bps // BPS


def buy_hold(product: Product, limit: int, quantity: int) -> int:
    """What a buy order holds for ``quantity`` at ``limit``: the amount plus the largest fee it
    may pay (it may fill as taker and, once resting, as maker)."""
    amount = limit * quantity
    return amount + fee(amount, max(product.maker_fee_bps, product.taker_fee_bps))


# --- credit holds and settlement locks ---------------------------------------------------

AccountKey = tuple[uuid.UUID, str, AccountKind]
# What ``lock_settlement`` locked: account id by (organisation, asset, kind); a product's fee
# account under ``fee_key(product id)``.
LockedAccounts = dict[tuple[uuid.UUID | None, str, AccountKind], uuid.UUID]


@dataclass(frozen=True, slots=True)
class CreditHold:
    """What is left of one of a sell order's credit holds."""

    order_id: uuid.UUID
    position: int
    batch_id: uuid.UUID
    hold_id: uuid.UUID
    remaining: int


async def credit_holds(
    session: AsyncSession, order_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[CreditHold]]:
    """The sell orders' credit holds with something left, in delivery (``position``) order."""
    if not order_ids:
        return {}
    rows = await session.execute(
        select(
            MarketOrderCreditHold.order_id,
            MarketOrderCreditHold.position,
            MarketOrderCreditHold.batch_id,
            MarketOrderCreditHold.hold_id,
            Hold.remaining,
        )
        .join(Hold, Hold.id == MarketOrderCreditHold.hold_id)
        .where(
            # An array parameter, not an IN list (rendered again on every execution).
            MarketOrderCreditHold.order_id
            == any_(bindparam("ids", list(order_ids), ARRAY(Uuid()))),
            Hold.status == HoldStatus.active,
            Hold.remaining > 0,
        )
        .order_by(MarketOrderCreditHold.order_id, MarketOrderCreditHold.position)
    )
    out: dict[uuid.UUID, list[CreditHold]] = {}
    for row in rows:
        out.setdefault(row.order_id, []).append(CreditHold(*row))
    return out


async def eligible_holdings(
    session: AsyncSession, product: Product, organization_id: uuid.UUID
) -> list[tuple[uuid.UUID, int]]:
    """(batch id, available credits) of the organisation's holdings a sell order on the product
    may deliver: its batch, or the category's batches in the vintage window carrying every
    label; oldest vintage first, then by batch id (the delivery order)."""
    stmt = (
        select(Batch.id, Account.balance)
        .join(
            Account,
            (Account.asset == Batch.asset)
            & (Account.organization_id == organization_id)
            & (Account.kind == AccountKind.available),
        )
        .where(Account.balance > 0)
        .order_by(Batch.vintage, Batch.id)
    )
    if product.batch_id is not None:
        stmt = stmt.where(Batch.id == product.batch_id)
    else:
        stmt = stmt.where(Batch.category == product.category)
        if product.vintage_min is not None:
            stmt = stmt.where(Batch.vintage >= product.vintage_min)
        if product.vintage_max is not None:
            stmt = stmt.where(Batch.vintage <= product.vintage_max)
        if product.labels:
            stmt = stmt.where(Batch.labels.contains(product.labels))
    return [(row.id, int(row.balance)) for row in await session.execute(stmt)]


def take_oldest_first(
    holdings: Sequence[tuple[uuid.UUID, int]], quantity: int
) -> list[tuple[uuid.UUID, int]]:
    """(batch id, quantity) to hold for ``quantity``, from ``holdings`` in their order (each
    batch used up before the next); what is short is simply not covered (the caller checks)."""
    out = []
    need = quantity
    for batch_id, available in holdings:
        if need <= 0:
            break
        take = min(need, available)
        if take > 0:
            out.append((batch_id, take))
            need -= take
    return out


def _order_keys(
    order_org: uuid.UUID, side: Side, batch_ids: Iterable[uuid.UUID]
) -> set[AccountKey]:
    """The accounts holding, releasing or settling an order's hold(s) touches."""
    kinds = (AccountKind.available, AccountKind.held)
    if side is Side.BUY:
        return {(order_org, ledger_service.CASH, kind) for kind in kinds}
    return {
        (order_org, ledger_service.credit_asset(batch_id), kind)
        for batch_id in batch_ids
        for kind in kinds
    }


# Accounts seen to exist: key -> id (an account's id never changes). A hint, checked where it
# is used. When every account a step needs is in it, ``lock_settlement`` finds and locks them
# by key in one statement (in id order, as the long way does) instead of reading them,
# creating the missing ones, then locking them; the ids come from that statement. A group of
# orders on a batch product takes the ids from here and has them locked by its write call
# (``market_lock_accounts_and_apply_group``, migration 0020), which refuses (TN016) before
# writing anything if one does not exist. Either way a hint that is wrong (an account created
# by a transaction that then rolled back, or a test's TRUNCATE) hands out no id that is
# used: the hint is dropped and the long way runs.
_SEEN_ACCOUNTS: dict[tuple[uuid.UUID | None, str, AccountKind], uuid.UUID] = {}
_SEEN_ACCOUNTS_MAX = 100_000  # then start over: a hint, not a copy of the table

# The ids of the accounts named by (:orgs, :assets, :kinds), and the fee account of the
# product :fee_scope if not NULL; the rows keyed as ``LockedAccounts`` (a fee account by its
# scope: ``fee_key``).
_ACCOUNT_IDS = (
    "SELECT a.id FROM ledger_accounts a"
    " JOIN unnest(CAST(:orgs AS uuid[]), CAST(:assets AS text[]), CAST(:kinds AS text[]))"
    " AS k(org, asset, kind)"
    " ON a.organization_id = k.org AND a.asset = k.asset AND a.kind = k.kind"
    " UNION ALL SELECT a.id FROM ledger_accounts a WHERE a.organization_id IS NULL"
    " AND a.asset = :fee_asset AND a.kind = :fee_kind AND a.scope_id = CAST(:fee_scope AS uuid)"
)
_KEYED = "id, coalesce(organization_id, scope_id) AS organization_id, asset, kind"
_FIND_AND_LOCK_ACCOUNTS = text(
    f"SELECT {_KEYED} FROM ledger_accounts WHERE id IN ({_ACCOUNT_IDS}) ORDER BY id FOR UPDATE"
)
# The same, with the batches locked first in the same statement: the uncorrelated sub-select
# is evaluated (once) before any account row comes out of the sort below the row locks, so the
# batches are locked, by id, before any account, as the global order wants.
_LOCK_BATCHES_FIND_AND_LOCK_ACCOUNTS = text(
    "WITH b AS MATERIALIZED (SELECT id FROM offset_batches"
    " WHERE id = ANY(CAST(:batches AS uuid[])) ORDER BY id FOR NO KEY UPDATE)"
    f" SELECT {_KEYED} FROM ledger_accounts"
    f" WHERE (SELECT count(*) FROM b) >= 0 AND id IN ({_ACCOUNT_IDS}) ORDER BY id FOR UPDATE"
)


def _remember_accounts(found: LockedAccounts) -> None:
    if len(_SEEN_ACCOUNTS) + len(found) > _SEEN_ACCOUNTS_MAX:
        _SEEN_ACCOUNTS.clear()
    _SEEN_ACCOUNTS.update(found)


def fee_key(product_id: uuid.UUID) -> AccountKey:
    """Where ``lock_settlement`` and the seen accounts keep a product's fee account: the
    ledger's ``fees`` JPY account scoped by the product (migration 0031), under the product's
    id in the organisation's place (ids are unique across tables: no organisation's key is
    one)."""
    return (product_id, ledger_service.CASH, FEES)


def _seen_accounts(
    keys: Iterable[AccountKey], fee_scope: uuid.UUID | None
) -> LockedAccounts | None:
    """The ids of these accounts (and the product ``fee_scope``'s fee account) if all were
    seen, else None."""
    wanted: set[tuple[uuid.UUID | None, str, AccountKind]] = set(keys)
    if fee_scope is not None:
        wanted.add(fee_key(fee_scope))
    if not wanted <= _SEEN_ACCOUNTS.keys():
        return None
    return {key: _SEEN_ACCOUNTS[key] for key in wanted}


def forget_accounts() -> None:
    _SEEN_ACCOUNTS.clear()


async def lock_settlement(
    session: AsyncSession,
    batch_ids: Iterable[uuid.UUID],
    keys: Iterable[AccountKey],
    *,
    fee_scope: uuid.UUID | None = None,
) -> LockedAccounts:
    """Lock, before any hold or posting, every batch and then every ledger account a step will
    touch: the batches in one statement by id, then the accounts in one statement by id.
    Returns the accounts' ids, so that the step looks none of them up again.

    Every writer of credits locks a batch before its accounts (``app.offsets.service``), and
    ``ledger_post_entries`` locks accounts by id; taking all of them at once in that global
    order means two transactions (e.g. orders on two products between the same two
    organisations, each buying on one and selling on the other) queue instead of deadlocking.
    Accounts are created on first use, as ``ledger_service.account_id`` would. When every
    account is known to exist, the batches and the accounts are locked in one statement.
    """
    batches = sorted(set(batch_ids))
    wanted = set(keys)
    fee_account = fee_scope is not None
    fast = bool(wanted or fee_account) and _seen_accounts(wanted, fee_scope) is not None
    if batches and not fast:
        await session.execute(
            text(
                "SELECT id FROM offset_batches WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"
            ),
            {"ids": batches},
        )
    if fast:
        rows = await session.execute(
            _LOCK_BATCHES_FIND_AND_LOCK_ACCOUNTS if batches else _FIND_AND_LOCK_ACCOUNTS,
            {
                **({"batches": batches} if batches else {}),
                "orgs": [org for org, _, _ in wanted],
                "assets": [asset for _, asset, _ in wanted],
                "kinds": [kind.value for _, _, kind in wanted],
                "fee_scope": fee_scope,
                "fee_asset": ledger_service.CASH,
                "fee_kind": FEES.value,
            },
        )
        locked: LockedAccounts = {
            (row.organization_id, row.asset, AccountKind(row.kind)): row.id for row in rows
        }
        if len(locked) == len(wanted) + fee_account:
            _remember_accounts(locked)
            return locked
        _SEEN_ACCOUNTS.clear()  # a hint went stale (a test's TRUNCATE): take the long way
    accounts: LockedAccounts = {}
    if wanted:
        rows = await session.execute(
            select(Account.id, Account.organization_id, Account.asset, Account.kind).where(
                tuple_(Account.organization_id, Account.asset, Account.kind).in_(
                    [(org, asset, kind.value) for org, asset, kind in sorted(wanted)]
                )
            )
        )
        found = {(row.organization_id, row.asset, AccountKind(row.kind)): row.id for row in rows}
        _remember_accounts(found)
        for key in sorted(wanted):
            accounts[key] = found.get(key) or await ledger_service.account_id(session, *key)
    if fee_scope is not None:
        key = fee_key(fee_scope)
        accounts[key] = await ledger_service.account_id(
            session, None, ledger_service.CASH, FEES, scope_id=fee_scope
        )
        _remember_accounts({key: accounts[key]})
    if accounts:
        await session.execute(
            text("SELECT id FROM ledger_accounts WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
            {"ids": sorted(set(accounts.values()))},
        )
    return accounts


async def _lock_for_release(session: AsyncSession, orders: Sequence[MarketOrder]) -> None:
    """Lock what releasing these orders' holds touches (cancel, expiry), in the global order."""
    holds = await credit_holds(session, [o.id for o in orders if o.side == Side.SELL])
    batches = {h.batch_id for hs in holds.values() for h in hs}
    keys: set[AccountKey] = set()
    for o in orders:
        keys |= _order_keys(
            o.organization_id, Side(o.side), [h.batch_id for h in holds.get(o.id, [])]
        )
    await lock_settlement(session, batches, keys)


def _after_delivering(holds: list[CreditHold], quantity: int) -> list[CreditHold]:
    """A sell's credit holds with something left after delivering ``quantity`` (in position
    order, as ``_settle`` delivers)."""
    out = []
    for held in holds:
        take = min(quantity, held.remaining)
        quantity -= take
        if held.remaining > take:
            out.append(dataclasses.replace(held, remaining=held.remaining - take))
    return out


async def _release_rest(
    session: AsyncSession,
    order: MarketOrder,
    held_credits: dict[uuid.UUID, list[CreditHold]] | None = None,
) -> None:
    """Give back what remains of a closed order's hold(s) (nothing if they are used up). The
    caller has locked the order's batches and accounts (``lock_settlement``); it may pass the
    credit holds it keeps up to date (``_settle``'s ``held_credits``) instead of reading them."""
    if order.cash_hold_id is not None:
        await ledger_service.release_rest(session, order.cash_hold_id)
        return
    if held_credits is None:
        holds = (await credit_holds(session, [order.id])).get(order.id, [])
    else:
        holds = held_credits.pop(order.id, [])
    # By batch id: the order in which batches are locked everywhere.
    for held in sorted(holds, key=lambda h: h.batch_id):
        await offsets_service.release_credits_locked(session, held.batch_id, held.hold_id)


def _close(order: MarketOrder, status: OrderStatus, reason: str | None = None) -> None:
    order.status = status
    order.cancel_reason = reason
    order.updated_at = utc_now()


async def _settle(
    session: AsyncSession,
    product: Product,
    event: Trade,
    orders: dict[uuid.UUID, MarketOrder],
    accounts: LockedAccounts | None = None,
    held_credits: dict[uuid.UUID, list[CreditHold]] | None = None,
) -> list[MarketTrade]:
    """Settle one fill: one ``market_trades`` row per batch its credits come from.

    The sell order's holds deliver in position order (a fill may span two batches of a
    category product); each trade row pays the seller ``price × quantity`` out of the buyer's
    hold, moves the buyer's fee (on top) and the seller's fee (out of its proceeds) to the
    platform's fee account, and delivers the serial blocks. Then the buyer's hold is brought
    down to what its open quantity may still need (``buy_hold`` at its limit): the price
    improvement and the unused fee headroom are released. The caller has taken
    ``lock_settlement`` for the fill's accounts and batches, and may pass what it returned
    (``accounts``) to spare looking them up again. ``held_credits``: what is left of the sell
    orders' credit holds (``credit_holds``), kept up to date here, instead of reading them.
    """
    known = accounts or {}

    async def account(org: uuid.UUID | None, asset: str, kind: AccountKind) -> uuid.UUID:
        return known.get((org, asset, kind)) or await ledger_service.account_id(
            session, org, asset, kind
        )

    taker = orders[event.taker_id]  # type: ignore[index]
    maker = orders[event.maker_id]  # type: ignore[index]
    buy, sell = (taker, maker) if event.taker_side is Side.BUY else (maker, taker)
    assert buy.cash_hold_id is not None
    buyer_bps, seller_bps = (
        (product.taker_fee_bps, product.maker_fee_bps)
        if event.taker_side is Side.BUY
        else (product.maker_fee_bps, product.taker_fee_bps)
    )
    seller_cash = await account(sell.organization_id, ledger_service.CASH, AccountKind.available)
    fee_account = (
        (
            known.get(fee_key(product.id))
            or await ledger_service.account_id(
                session, None, ledger_service.CASH, FEES, scope_id=product.id
            )
        )
        if buyer_bps or seller_bps
        else None
    )
    now = utc_now()
    trades: list[MarketTrade] = []
    paid = 0
    need = event.quantity
    if held_credits is None:
        holds = (await credit_holds(session, [sell.id])).get(sell.id, [])
    else:
        holds = held_credits.get(sell.id, [])
        held_credits[sell.id] = _after_delivering(holds, need)
    for held in holds:
        if need == 0:
            break
        quantity = min(need, held.remaining)
        need -= quantity
        trade_id = new_id()
        reference = f"trade:{trade_id}"
        amount = event.price * quantity
        buyer_fee, seller_fee = fee(amount, buyer_bps), fee(amount, seller_bps)
        await ledger_service.settle_hold(
            session, buy.cash_hold_id, seller_cash, amount, kind="trade", reference=reference
        )
        if fee_account is not None and buyer_fee:
            await ledger_service.settle_hold(
                session,
                buy.cash_hold_id,
                fee_account,
                buyer_fee,
                kind="trade_fee",
                reference=reference,
            )
        if fee_account is not None and seller_fee:
            await ledger_service.post_entry(
                session,
                ledger_service.EntrySpec(
                    kind="trade_fee",
                    legs=transfer(seller_cash, fee_account, ledger_service.CASH, seller_fee),
                    reference=reference,
                ),
            )
        paid += amount + buyer_fee
        ranges = await offsets_service.settle_credits_locked(
            session,
            held.batch_id,
            held.hold_id,
            buy.organization_id,
            await account(
                buy.organization_id,
                ledger_service.credit_asset(held.batch_id),
                AccountKind.available,
            ),
            quantity,
            reference=reference,
        )
        trade = new_row(
            MarketTrade,
            id=trade_id,
            product_id=product.id,
            batch_id=held.batch_id,
            price=event.price,
            quantity=quantity,
            taker_side=event.taker_side,
            buy_order_id=buy.id,
            sell_order_id=sell.id,
            buyer_organization_id=buy.organization_id,
            seller_organization_id=sell.organization_id,
            serial_ranges=ranges,
            buyer_fee=buyer_fee,
            seller_fee=seller_fee,
            executed_at=now,
        )
        _add_rows(session, trade)
        trades.append(trade)
    if need:  # the holds always cover the open quantity: a broken invariant, never input
        raise LedgerInvariantViolated(f"sell order {sell.id} holds {need} credits too few")

    # The limit the buyer's hold was taken at: its price, or a market buy's band high (which
    # the engine reports through the improvement).
    limit = (
        buy.price
        if buy.price is not None
        else event.price + event.buyer_improvement // event.quantity
    )
    open_before = buy.quantity - buy.filled_quantity
    release = (
        buy_hold(product, limit, open_before)
        - paid
        - buy_hold(product, limit, open_before - event.quantity)
    )
    if release:
        await ledger_service.release(
            session, buy.cash_hold_id, release, reference=f"trade:{trades[0].id}"
        )
    amount = event.price * event.quantity
    for order in (buy, sell):
        order.filled_quantity += event.quantity
        order.filled_amount += amount
        order.status = OrderStatus.partially_filled
        order.updated_at = now
    product.last_trade_price = event.price
    product.updated_at = now
    return trades


@dataclass(slots=True)
class _Incoming:
    """One order of those ``place_orders`` places under one lock: what matching it found."""

    organization_id: uuid.UUID
    body: OrderCreate
    order_id: uuid.UUID
    sequence: int | None  # taken with the lock, if it was (``place_orders(sequences=…)``)
    band: tuple[int, int] | None
    events: list[Any]
    fills: list[Trade]
    touched: set[tuple[str, int]]  # the price levels it changed
    levels: list[dict[str, Any]]  # their ``level`` events, as the book stood right after it


def _check_against_band(product: Product, body: OrderCreate, band: tuple[int, int] | None) -> None:
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


def _level_events(book: OrderBook, levels: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """The ``level`` events of the touched levels, as they stand in ``book``."""
    events = []
    for side, price in sorted(levels):
        level = book.level(_SIDES[side], price)
        events.append(
            {
                "type": "level",
                "side": side,
                "price": price,
                "quantity": 0 if level is None else level.quantity,
                "orders": 0 if level is None else level.orders,
            }
        )
    return events


def _maker(fill: Trade) -> uuid.UUID:
    """A fill's maker: an order id (the book is built from ``MarketOrder`` ids)."""
    assert isinstance(fill.maker_id, uuid.UUID)
    return fill.maker_id


async def place_order(
    session: AsyncSession, organization_id: uuid.UUID, body: OrderCreate
) -> PlacedOrder:
    products = ProductRepository(session)
    found = await products.by_code(body.product)
    if found is None:
        raise ProductNotFound("No such product.", product=body.product)
    [placed] = await place_orders(session, found.id, [(organization_id, body)])
    return placed


async def lock_product(session: AsyncSession, product_id: uuid.UUID) -> Product:
    """Take the product's lock (every change to its book is serialised on it) and read the
    product as of the lock."""
    product = await ProductRepository(session).lock_and_reload(product_id)
    if product is None:
        _forget_product_id(product_id)
        raise ProductNotFound("No such product.", product=str(product_id))
    return product


def _forget_product_id(product_id: uuid.UUID) -> None:
    """An id from ``product_id_and_mode`` that is no more (tests only)."""
    for code, (cached, _) in list(_PRODUCT_IDS.items()):
        if cached == product_id:
            del _PRODUCT_IDS[code]


async def lock_product_and_read_book(
    session: AsyncSession,
    product_id: uuid.UUID,
    sellers: Sequence[uuid.UUID] | None = (),
    reserve: int = 0,
    reach: Reach | None = None,
) -> tuple[Product, Book, LiveBlocks | None, list[int]]:
    """``lock_product``, then the product's batch lock (a batch product's group settles on
    it: ``place_orders(batch_locked=True)``), and the book as of the locks (the resting orders
    and the sell orders' credit holds, as ``place_orders`` reads them), in one round trip;
    on a batch product, with the live blocks the group's serial operations can take from (the
    active blocks of ``sellers``, the queued sell orders' organisations, and the blocks of
    the credit holds of the sells read), unless there are too many of them or ``sellers`` is
    None (a caller that does not defer its writes has no use for them); and ``reserve``
    sequences for new orders (``place_orders(sequences=…)``), taken after the lock.
    ``reach``: only the part of the book that orders within it can touch
    (``app.market.reach``); ``place_orders`` then takes the same ``reach`` and refuses
    orders it does not cover."""
    product, book, blocks, sequences = await ProductRepository(session).lock_and_read_book(
        product_id, sellers, reserve, reach
    )
    if product is None:
        _forget_product_id(product_id)
        raise ProductNotFound("No such product.", product=str(product_id))
    return product, book, blocks, sequences


async def place_orders(
    session: AsyncSession,
    product_id: uuid.UUID,
    items: Sequence[tuple[uuid.UUID, OrderCreate]],
    *,
    locked: Product | None = None,
    batch_locked: bool = False,
    read_book: Book | None = None,
    read_blocks: LiveBlocks | None = None,
    sequences: Sequence[int] | None = None,
    commit: bool = False,
    reach: Reach | None = None,
) -> list[PlacedOrder]:
    """Place orders on one product, in the given order, under one acquisition of its lock, in
    the caller's transaction: what placing them one after the other would do (the same checks,
    matching, holds, fills, rows and notifications, in the same order), with what does not
    depend on the order done once (the lock, reading the book, locking the accounts, the
    flush, the NOTIFY). A refusal of any of them raises: the caller rolls the transaction back
    (``app.market.group`` then places that group's orders one at a time). ``locked``: the
    product as ``lock_product`` returned it in this transaction (the lock is held already);
    ``batch_locked``: with its batch (``lock_product_and_read_book``); ``read_book`` and
    ``read_blocks``: the book and live blocks read with the lock
    (``lock_product_and_read_book``); ``sequences``: the new orders' sequences, taken with
    it, one per order at least; ``reach``: the part of the book ``read_book`` is (every order
    must be covered by it: matched against a part of the book that leaves out what it can
    touch, an order would trade wrongly).

    ``commit``: the caller began the transaction on the driver (``app.market.group``), and a
    group whose writes are deferred commits it with its one write call
    (``app.db.driver.call_and_commit``); otherwise the caller commits. If the connection
    fails during that call, ``GroupOutcomeUnknown`` raises with the orders as placed."""
    if sequences is not None and len(sequences) < len(items):
        raise ValueError(f"{len(items)} orders, {len(sequences)} sequences")
    if reach is not None and not (
        all(reach.covers(b.side, b.price) for _, b in items)
        and reach.fits((b.side, b.quantity) for _, b in items)
    ):
        raise ValueError("an order reaches beyond the part of the book read")
    orders = OrderRepository(session)
    # Read before the lock (it needs no book; the unique constraint backstops a race, below)
    # and refused at its usual place, after the band and call checks.
    duplicates = [
        body.client_order_id is not None
        and await orders.by_client_id(organization_id, body.client_order_id) is not None
        for organization_id, body in items
    ]
    # Read with the lock when the caller read nothing: only the part of the book these orders
    # can reach and fill (``app.market.reach``), in the group's lock call (one round trip
    # for the lock, the product and the book; no live blocks: nothing is deferred here).
    if read_book is None:
        reach = (reach or Reach.of((body.side, body.price) for _, body in items)).filling(
            (body.side, body.quantity) for _, body in items
        )
        found, read_book, _, _ = await lock_product_and_read_book(
            session, product_id, None, reach=reach
        )
        locked = locked or found
    product = locked or await lock_product(session, product_id)
    # A call product's orders rest without matching until the call (``app.market.calls``).
    collecting = await phase.collects_orders(session, product, utc_now())

    def check(body: OrderCreate, band: tuple[int, int] | None, duplicate: bool) -> None:
        _check_against_band(product, body, band)
        _check_call_order(body, collecting)
        if duplicate:
            raise DuplicateClientOrderId(
                "An order with this client_order_id exists.", client_order_id=body.client_order_id
            )

    if len(items) == 1:  # refused before matching
        check(items[0][1], price_band(product), duplicates[0])

    # A GTD order past its expiry never trades, even before the minute task has run. The due
    # ones are among the open orders loaded anyway: only if one is there does the expiry path
    # (its own statements) run, and the book is read again after it.
    # The resting sell orders' credit holds come with the book (one round trip): the fills
    # below name the makers whose holds the settlement takes from.
    now = utc_now()
    reach = reach or Reach.of((body.side, body.price) for _, body in items)
    resting, book_holds, hidden = read_book
    if any(_is_due(o, now) for o in resting):
        await expire_product_orders(session, product.id, now, locked=True)
        resting, book_holds, hidden = await orders.open_orders_with_credit_holds(product.id, reach)
        read_blocks = None  # the releases changed them: read after matching instead
    if collecting:
        resting, book_holds, hidden = [], {}, ()
    by_id: dict[uuid.UUID, MarketOrder] = {o.id: o for o in resting}

    # Match first, in memory (the book is rebuilt from the database and thrown away): the fills
    # tell which orders, batches and accounts the orders touch, so all of them are locked up
    # front in the global order (``lock_settlement``) before any hold or posting. An order's
    # real sequence, taken on insert, is larger than any resting one, like its provisional one.
    book = restore_book(resting, hidden)
    sequence = max((o.sequence for o in resting), default=0)
    last_price = product.last_trade_price
    incoming: list[_Incoming] = []
    # (organisation, side, price) of every order that may be a maker here.
    known = {o.id: (o.organization_id, _SIDES[o.side], o.price) for o in resting}
    for (organization_id, body), duplicate in zip(items, duplicates, strict=True):
        band = price_band_at(product, last_price)  # as the previous orders' trades left it
        if len(items) > 1:
            check(body, band, duplicate)
        order_id = new_id()
        sequence = sequence + 1 if sequences is None else sequences[len(incoming)]
        events = book.submit(
            Order(
                order_id=order_id,
                side=body.side,
                quantity=body.quantity,
                price=body.price,
                owner=organization_id,
                sequence=sequence,
                order_type=body.type,
                time_in_force=TimeInForce(body.time_in_force),
                post_only=body.post_only,
            ),
            band_low=band[0] if band else None,
            band_high=band[1] if band else None,
        )
        for event in events:
            if isinstance(event, Rejected):
                raise OrderRejected(
                    f"The order was rejected: {event.reason.value}.", reason=event.reason.value
                )
        fills = [e for e in events if isinstance(e, Trade)]
        touched: set[tuple[str, int]] = set()
        if body.price is not None:
            touched.add((str(body.side), body.price))
        for fill in fills:
            last_price = fill.price
            _, maker_side, maker_price = known[_maker(fill)]
            if maker_price is not None:
                touched.add((str(maker_side), maker_price))
        known[order_id] = (organization_id, body.side, body.price)
        incoming.append(
            _Incoming(
                organization_id,
                body,
                order_id,
                None if sequences is None else sequence,
                band,
                events,
                fills,
                touched,
                [] if collecting else _level_events(book, touched),
            )
        )

    # The resting orders the fills and closes name are the only ones written: the session's
    # from here on (``stored_row``; the lock call reads the book without loading it into the
    # session).
    named: set[object] = {
        event.maker_id if isinstance(event, Trade) else event.order_id
        for i in incoming
        for event in i.events
        if isinstance(event, Trade | Done | Cancelled)
    }
    written = [stored_row(session, o) for o in resting if o.id in named]
    by_id.update((o.id, o) for o in written)

    # What the fills and holds touch: the makers' credit holds (read with the book), the sell
    # orders' batches (a category product's: an unlocked first look at the holdings, re-read below
    # under the locks), and every account, all locked at once.
    placed_here = {i.order_id for i in incoming}
    sellers_from_book = {
        _maker(fill)
        for i in incoming
        for fill in i.fills
        if _maker(fill) not in placed_here and known[_maker(fill)][1] == Side.SELL
    }
    held_credits = {
        oid: [CreditHold(oid, *hold) for hold in book_holds[oid]]
        for oid in sorted(sellers_from_book)
        if oid in book_holds
    }
    sell_batches = {oid: [h.batch_id for h in hs] for oid, hs in held_credits.items()}
    for i in incoming:
        if i.body.side == Side.SELL:
            sell_batches[i.order_id] = (
                [product.batch_id]
                if product.batch_id is not None
                else [b for b, _ in await eligible_holdings(session, product, i.organization_id)]
            )
    keys: set[AccountKey] = set()
    for i in incoming:
        keys |= _order_keys(i.organization_id, i.body.side, sell_batches.get(i.order_id, []))
        for fill in i.fills:
            maker_org, maker_side, _ = known[_maker(fill)]
            keys |= _order_keys(maker_org, maker_side, sell_batches.get(_maker(fill), []))
            buyer, seller, sell_id = (
                (i.organization_id, maker_org, _maker(fill))
                if fill.taker_side is Side.BUY
                else (maker_org, i.organization_id, i.order_id)
            )
            keys.add((seller, ledger_service.CASH, AccountKind.available))
            keys |= {
                (buyer, ledger_service.credit_asset(b), AccountKind.available)
                for b in sell_batches.get(sell_id, [])
            }
    any_fills = any(i.fills for i in incoming)
    # Without fills, a buy or a batch product's sell touches only its own two accounts of one
    # asset, which its hold call locks itself, by id, in one statement (``ledger_post_entries``,
    # under the batch lock for a sell): locking them here first would be one more round trip
    # under the product lock for the same locks in the same order.
    if (
        len(incoming) == 1
        and not any_fills
        and (incoming[0].body.side == Side.BUY or product.batch_id is not None)
    ):
        keys = set()
    fee_scope = (
        product.id if any_fills and (product.maker_fee_bps or product.taker_fee_bps) else None
    )
    # A group on one batch sends its writes in one call at the end (module docstring). If its
    # batch is locked already and every account it touches was seen before, that call locks
    # the accounts too (by the ids seen: one round trip fewer under the product lock).
    defer = len(incoming) > 1 and product.batch_id is not None and not collecting
    seen = _seen_accounts(keys, fee_scope) if defer and batch_locked else None
    if seen is not None:
        accounts, lock_in_write = seen, sorted(set(seen.values()))
    else:
        accounts, lock_in_write = (
            await lock_settlement(
                session,
                {b for bs in sell_batches.values() for b in bs},
                keys,
                fee_scope=fee_scope,
            ),
            [],
        )

    # Then each order in turn: its holds (a shortfall raises: the transaction rolls back,
    # nothing is written), its row, its fills and what ends.
    placed_orders: list[PlacedOrder] = []
    notify: list[dict[str, Any]] = []
    async with deferred_writes.deferring(session) if defer else nullcontext():
        if defer:
            assert product.batch_id is not None
            # What the serial operations can touch: the new sells' sellers' active blocks, and
            # the blocks of the resting sells' holds the fills deliver from (a buyer only
            # receives: see ``read_live_blocks``).
            sellers = {i.organization_id for i in incoming if i.body.side == Side.SELL}
            holds = {h.hold_id for hs in held_credits.values() for h in hs}
            if read_blocks is not None:  # read with the lock: only those it did not read
                offsets_service.add_live_blocks(session, product.batch_id, *read_blocks)
            await offsets_service.read_live_blocks(
                session, product.batch_id, sorted(sellers), sorted(holds)
            )
        for i in incoming:
            placed = await _hold_and_settle(
                session, product, i, sell_batches, by_id, accounts, held_credits
            )
            placed_orders.append(placed)
            notify += [trade_event(t) for t in placed.trades] + i.levels
        traded = any(p.trades for p in placed_orders)
        if defer:  # every write and the NOTIFY in one call: no flush
            try:
                await _send_group(
                    session, product, written, notify, traded, lock_in_write, commit=commit
                )
            except CommitOutcomeUnknown as exc:
                raise GroupOutcomeUnknown(placed_orders) from exc
            return placed_orders
    if traded:
        _defer_product_write(product)
    try:
        await session.flush()
    except IntegrityError as exc:
        if CLIENT_ORDER_ID_CONSTRAINT in str(exc.orig):
            raise DuplicateClientOrderId(
                "An order with this client_order_id exists.",
                client_order_id=items[0][1].client_order_id if len(items) == 1 else None,
            ) from exc
        raise
    if collecting:  # no book in memory: the levels are read from the open orders
        await _publish(session, product.id, [], incoming[0].touched)
    else:
        await _notify(session, product.id, notify, product if traded else None)
    return placed_orders


# While a group defers its writes, the rows it adds (orders, their credit holds, trades), sent
# by ``_send_group``; the key of its list in the deferred writes' caches.
_GROUP_ROWS = "market.rows"
# Every column of each row as the model defines it (the order's ``sequence`` is the identity
# the call assigns): the keys of the JSON objects the call reads its rows from.
_ORDER_COLUMNS = tuple(c.name for c in MarketOrder.__table__.columns if c.name != "sequence")
# With the sequences taken with the lock (migration 0027).
_ORDER_COLUMNS_SEQUENCED = (*_ORDER_COLUMNS, "sequence")
_CREDIT_HOLD_COLUMNS = tuple(c.name for c in MarketOrderCreditHold.__table__.columns)
_TRADE_COLUMNS = tuple(c.name for c in MarketTrade.__table__.columns)
# What a fill or a close changes on a resting order.
_FILL_COLUMNS = ("id", "filled_quantity", "filled_amount", "status", "cancel_reason", "updated_at")
_GROUP_SQL = (
    "SELECT order_id, order_sequence FROM market_apply_group("
    + ", ".join(f"${i}" for i in range(1, 33))
    + ")"
)
# The same, the accounts named by $1 locked first (migration 0020).
_LOCK_AND_GROUP_SQL = (
    "SELECT order_id, order_sequence FROM market_lock_accounts_and_apply_group("
    + ", ".join(f"${i}" for i in range(1, 34))
    + ")"
)
# ``market_apply_group``'s parameter types (migration 0017), for ``call_and_commit``; the
# other's are the accounts' ids and these.
_GROUP_TYPES = (
    *("text[]", "uuid[]", "uuid[]", "uuid[]", "text[]", "bigint[]", "uuid[]", "uuid[]"),
    *("text[]", "text[]", "boolean[]", "timestamp with time zone", "uuid[]", "uuid[]"),
    *("uuid[]", "uuid[]", "bigint[]", "bigint[]", "text[]", "uuid[]", "uuid[]", "text[]"),
    *("boolean[]", "jsonb", "jsonb", "jsonb", "jsonb", "uuid", "bigint"),
    *("timestamp with time zone", "text", "text[]"),
)
ACCOUNTS_GONE_SQLSTATE = "TN016"


def _add_rows(
    session: AsyncSession, *rows: MarketOrder | MarketOrderCreditHold | MarketTrade
) -> None:
    """New rows: into the session, or, while a group defers its writes, into the group's."""
    if (writes := deferred_writes.deferred(session)) is not None:
        writes.caches.setdefault(_GROUP_ROWS, []).extend(rows)
    else:
        session.add_all(rows)


def _json(value: Any) -> str:
    """``value`` as JSON text, UUIDs and datetimes as PostgreSQL reads them (orjson: several
    times faster than ``json.dumps``, and this runs under the product lock)."""
    return orjson.dumps(value, default=_json_value).decode()


def _json_value(value: object) -> str:
    """What orjson does not write itself: a UUID read by asyncpg (its own ``uuid.UUID``
    subclass; orjson writes only the exact type)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value here")


def _json_rows(rows: Iterable[Any], columns: Sequence[str]) -> str:
    return _json([{c: getattr(row, c) for c in columns} for row in rows])


async def _send_group(
    session: AsyncSession,
    product: Product,
    written: Sequence[MarketOrder],
    events: list[dict[str, Any]],
    traded: bool,
    lock_accounts: list[uuid.UUID],
    *,
    commit: bool = False,
) -> None:
    """A deferring group's end: its ledger and block writes, its rows, the resting orders'
    fills (``written``: the resting orders its fills and closes named), the product's last
    price and the NOTIFY of ``events``, in one call of ``market_apply_group`` (migration 0017)
    instead of a flush and a NOTIFY statement. The new orders get their ``sequence`` from it;
    the resting orders and the product are marked as written (the session has nothing left to
    flush). ``lock_accounts``: the accounts the call locks first, by id (0020), when
    ``lock_settlement`` did not; if one of them does not exist, nothing is written, the ids
    seen are forgotten and ``DatabaseRefusal`` (TN016) raises.

    ``commit``: the call commits the transaction too, in the same round trip
    (``call_and_commit``); the orders carry their sequences already (``place_orders``)."""
    writes = deferred_writes.deferred(session)
    assert writes is not None
    rows = writes.caches.pop(_GROUP_ROWS, [])
    orders = [r for r in rows if isinstance(r, MarketOrder)]
    filled = [o for o in written if inspect(o).modified]
    sequenced = any(o.sequence is not None for o in orders)
    if commit and not all(o.sequence is not None for o in orders):
        raise ValueError("a group that commits with its write call has its sequences already")
    arguments = [
        *deferred_writes.take_arguments(session),
        _json_rows(orders, _ORDER_COLUMNS_SEQUENCED if sequenced else _ORDER_COLUMNS),
        _json_rows((r for r in rows if isinstance(r, MarketOrderCreditHold)), _CREDIT_HOLD_COLUMNS),
        _json_rows((r for r in rows if isinstance(r, MarketTrade)), _TRADE_COLUMNS),
        _json_rows(filled, _FILL_COLUMNS),
        product.id,
        product.last_trade_price if traded else None,
        product.updated_at,
        channel(product.id),
        [_json(e) for e in events],
    ]
    # Written by the call: nothing is left for the session to flush.
    for order in filled:
        for name in _FILL_COLUMNS[1:]:
            set_committed_value(order, name, getattr(order, name))
    if traded:
        _defer_product_write(product)
    try:
        if commit:
            # (``dirty`` is every object an attribute was set on; ``is_modified``: to a
            # new value.)
            if session.new or session.deleted or any(map(session.is_modified, session.dirty)):
                raise RuntimeError("the group's session has writes its call would not make")
            if lock_accounts:
                await call_and_commit(
                    session,
                    "market_lock_accounts_and_apply_group",
                    ("uuid[]", *_GROUP_TYPES),
                    [lock_accounts, *arguments],
                )
            else:
                await call_and_commit(session, "market_apply_group", _GROUP_TYPES, arguments)
            return
        found = await (
            fetch_rows(session, _LOCK_AND_GROUP_SQL, [lock_accounts, *arguments])
            if lock_accounts
            else fetch_rows(session, _GROUP_SQL, arguments)
        )
    except DatabaseRefusal as exc:
        if exc.sqlstate == ACCOUNTS_GONE_SQLSTATE:
            forget_accounts()
        raise
    sequences = dict(found)
    for order in orders:
        order.sequence = sequences[order.id]


async def _hold_and_settle(
    session: AsyncSession,
    product: Product,
    incoming: _Incoming,
    sell_batches: dict[uuid.UUID, list[uuid.UUID]],
    by_id: dict[uuid.UUID, MarketOrder],
    accounts: LockedAccounts,
    held_credits: dict[uuid.UUID, list[CreditHold]],
) -> PlacedOrder:
    """Take one matched order's holds, add its row, settle its fills and release what ends:
    ``place_orders``' second pass, under the locks it took. ``by_id`` and ``held_credits``
    (every credit hold the fills and releases touch, kept in memory: under the product lock
    nothing else changes a resting order's holds) gain the order."""
    organization_id, body, order_id, band = (
        incoming.organization_id,
        incoming.body,
        incoming.order_id,
        incoming.band,
    )
    reference = f"order:{order_id}"
    cash_hold_id: uuid.UUID | None = None
    taken: list[tuple[uuid.UUID, int, uuid.UUID]] = []  # (batch, quantity, hold) by position
    if body.side == Side.BUY:
        limit = body.price if body.price is not None else band[1] if band else None
        assert limit is not None
        cash_hold_id = await ledger_service.reserve(
            session,
            organization_id,
            ledger_service.CASH,
            buy_hold(product, limit, body.quantity),
            reference=reference,
        )
    elif product.batch_id is not None:
        # One batch: holding the credits checks them (the seller's live blocks, which count
        # what its available balance counts) and refuses a shortfall the same way.
        hold_id = await offsets_service.hold_credits_locked(
            session, organization_id, product.batch_id, body.quantity, reference=reference
        )
        taken.append((product.batch_id, body.quantity, hold_id))
    else:
        locked = set(sell_batches[order_id])
        holdings = [
            (batch_id, available)
            for batch_id, available in await eligible_holdings(session, product, organization_id)
            if batch_id in locked
        ]
        available = sum(n for _, n in holdings)
        if available < body.quantity:
            raise InsufficientCredits(
                f"{body.quantity} credits asked, {available} available.",
                requested=body.quantity,
                available=available,
            )
        for batch_id, quantity in take_oldest_first(holdings, body.quantity):
            hold_id = await offsets_service.hold_credits_locked(
                session, organization_id, batch_id, quantity, reference=reference
            )
            taken.append((batch_id, quantity, hold_id))

    # The order row is written by the last flush, with its fills already applied (one INSERT,
    # rather than an INSERT now and an UPDATE after the fills); that flush reads its
    # ``sequence`` back (INSERT … RETURNING: the mapper's eager defaults), writing the rows in
    # the order they were added, and writes the credit hold and trade rows after the orders
    # (the unit of work orders the tables by foreign key).
    now = utc_now()
    order = new_row(
        MarketOrder,
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
        created_at=now,
        updated_at=now,
        **({} if incoming.sequence is None else {"sequence": incoming.sequence}),
    )
    _add_rows(
        session,
        order,
        *(
            new_row(
                MarketOrderCreditHold,
                order_id=order.id,
                position=i,
                batch_id=batch_id,
                hold_id=hold_id,
                quantity=quantity,
            )
            for i, (batch_id, quantity, hold_id) in enumerate(taken)
        ),
    )
    by_id[order.id] = order
    held_credits[order.id] = [
        CreditHold(order.id, i, batch_id, hold_id, quantity)
        for i, (batch_id, quantity, hold_id) in enumerate(taken)
    ]
    placed = PlacedOrder(order=order, product=product)
    for event in incoming.events:
        if isinstance(event, Trade):
            placed.trades.extend(
                await _settle(session, product, event, by_id, accounts, held_credits)
            )
        elif isinstance(event, Done):
            done = by_id[event.order_id]  # type: ignore[index]
            _close(done, OrderStatus.filled)
            # A filled buy's cash hold is used up: its last fill brought it down to what no
            # open quantity needs (``buy_hold(limit, 0)`` = 0), which closed it.
            if done.side != Side.BUY:
                await _release_rest(session, done, held_credits)
        elif isinstance(event, Cancelled):
            cancelled = by_id[event.order_id]  # type: ignore[index]
            _close(cancelled, OrderStatus.cancelled, event.reason.value)
            await _release_rest(session, cancelled, held_credits)
        elif isinstance(event, Accepted | Rested | Amended | Rejected):
            pass
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
    await _lock_for_release(session, [order])
    _close(order, status, reason)
    await _release_rest(session, order)
    await session.flush()
    if order.price is not None:
        await _publish(session, order.product_id, [], {(str(order.side), order.price)})


def _is_due(order: MarketOrder, now: datetime) -> bool:
    """``_due`` for a loaded open order."""
    return (
        order.time_in_force == OrderTimeInForce.gtd
        and order.expires_at is not None
        and order.expires_at <= now
    )


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
    session: AsyncSession, product_id: uuid.UUID, now: datetime, *, locked: bool = False
) -> list[MarketOrder]:
    """Expire the product's due GTD orders, under the product lock (as a cancel); ``locked``:
    the caller holds it already.

    The due orders are selected after the lock is taken, so an order another worker (or a
    cancel, or a fill) closed meanwhile is no longer open and is skipped: each order is expired
    exactly once however many workers run this, and a second run finds nothing.
    """
    if not locked:
        await ProductRepository(session).lock(product_id)
    stmt = (
        select(MarketOrder)
        .where(MarketOrder.product_id == product_id, _due(now))
        .order_by(MarketOrder.sequence)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    due = list((await session.execute(stmt)).scalars().all())
    await _lock_for_release(session, due)  # all of them at once, in the global order
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
