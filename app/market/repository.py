"""Every query on the order book tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    Uuid,
    bindparam,
    column,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect

from app.core.pagination import Page, PageParams
from app.core.repository import Repository
from app.db.base import new_row, row_maker, stored_row
from app.db.driver import fetch_rows
from app.market.matching import Side
from app.market.models import OPEN_STATUSES, MarketOrder, MarketTrade, Product
from app.market.reach import Reach

# The order path's statements, built once: building one (its column comparisons) costs more
# Python than running it, and these run on every order.
_PRODUCT_BY_CODE = select(Product).where(Product.code == bindparam("code"))
_LOCK_AND_RELOAD = (
    select(Product)
    .from_statement(text("SELECT * FROM market_lock_product(:id)"))
    .execution_options(populate_existing=True)
)
# ``status = … OR status = …`` rather than ``IN``: an IN list is an expanding parameter, whose
# SQL is rendered again on every execution.
_OPEN_ORDERS = (
    select(MarketOrder)
    .where(
        MarketOrder.product_id == bindparam("product_id"),
        or_(*(MarketOrder.status == status for status in OPEN_STATUSES)),
    )
    .order_by(MarketOrder.sequence)
    .execution_options(populate_existing=True)
)
# The same book, each resting sell order with what is left of its credit holds (active, with
# something remaining), in delivery order, as parallel arrays: the order path reads the
# makers' holds with the book, in the same round trip, instead of once the fills name them.
# Under the product lock nothing else changes a resting order's holds. Each ledger hold is
# looked up by its key (LATERAL with OFFSET 0): as a join, a plan made while ``ledger_holds``
# was small scanned the whole table (one row per order ever placed) on every later read
# (migration 0026 fixes the lock call's copy of this query the same way).
_HOLD_COLUMNS = (
    column("hold_positions", ARRAY(Integer)),
    column("hold_batches", ARRAY(Uuid())),
    column("hold_ids", ARRAY(Uuid())),
    column("hold_remaining", ARRAY(BigInteger)),
)
_OPEN = " OR ".join(f"status = '{status.value}'" for status in OPEN_STATUSES)
_OPEN_ORDERS_WITH_CREDIT_HOLDS = (
    select(MarketOrder, *_HOLD_COLUMNS)
    .from_statement(
        text(
            "SELECT "
            + ", ".join(f"o.{c.name}" for c in MarketOrder.__table__.columns)
            + ", h.hold_positions, h.hold_batches, h.hold_ids, h.hold_remaining"
            # The resting orders within a reach (``app.market.reach``), each side one range
            # of ``ix_market_orders_book`` (migration 0028), as the group's lock call reads.
            " FROM (SELECT * FROM market_orders"
            "        WHERE product_id = :product_id AND (" + _OPEN + ")"
            "          AND side = 'sell' AND price <= :asks_to"
            "       UNION ALL"
            "       SELECT * FROM market_orders"
            "        WHERE product_id = :product_id AND (" + _OPEN + ")"
            "          AND side = 'buy' AND price >= :bids_from) o"
            " LEFT JOIN LATERAL ("
            "  SELECT array_agg(c.position ORDER BY c.position) AS hold_positions,"
            "         array_agg(c.batch_id ORDER BY c.position) AS hold_batches,"
            "         array_agg(c.hold_id ORDER BY c.position) AS hold_ids,"
            "         array_agg(l.remaining ORDER BY c.position) AS hold_remaining"
            "    FROM market_order_credit_holds c CROSS JOIN LATERAL ("
            "         SELECT remaining, status FROM ledger_holds WHERE id = c.hold_id OFFSET 0) l"
            "   WHERE c.order_id = o.id AND o.side = 'sell'"
            "     AND l.status = 'active' AND l.remaining > 0"
            " ) h ON true"
            " ORDER BY o.sequence"
        ).columns(*MarketOrder.__table__.columns, *_HOLD_COLUMNS)
    )
    .execution_options(populate_existing=True)
)
# The product lock (with the batch's), the book and the live blocks a group can take from in
# one call (migrations 0021, 0022, 0029): the product and each resting order column by
# column, in the models' order; on the first row only, the product, the
# ``offset_live_copy_of`` rows (as the driver decodes them) with the holders and holds they
# are of, the levels of the orders it counted but did not read (0029), and the sequences it
# reserved (0027).
# Read through the driver (``fetch_rows``): loading every resting order through the ORM cost
# more than the read itself under the product lock (a book of 70: 3.83–3.97 ms for the call
# and the engine's rebuild, 3.16–3.21 this way), and a group writes few of them (see
# ``lock_and_read_book``).
_PRODUCT_COLUMNS = tuple(Product.__table__.columns)
_ORDER_KEYS = tuple(
    inspect(MarketOrder).get_property_by_column(c).key for c in MarketOrder.__table__.columns
)
_ORDER_ID = _ORDER_KEYS.index("id")
_BOOK_ORDER = row_maker(MarketOrder, _ORDER_KEYS)
_LOCK_PRODUCT_AND_BOOK = (
    "SELECT "
    # The product on the first row only: spelling a composite's fields out costs a look-up
    # each.
    + ", ".join(
        f"CASE WHEN g.ordinality = 1 THEN (g.product).{c.name} END" for c in _PRODUCT_COLUMNS
    )
    + ", "
    + ", ".join(f"(g.book_order).{c.name}" for c in MarketOrder.__table__.columns)
    + ", g.hold_positions, g.hold_batches, g.hold_ids, g.hold_remaining, g.blocks, g.blocks_of,"
    " g.blocks_of_holds,"
    " g.hidden_sides, g.hidden_prices, g.hidden_quantities, g.hidden_counts,"
    # Projected after the function ran to its end (a PL/pgSQL function's rows are all made
    # before the first is read), so after the product lock it takes.
    " CASE WHEN g.ordinality = 1 AND $3::integer > 0"
    "      THEN market_reserve_order_sequences($3::integer) END"
    " FROM market_lock_product_and_book($1::uuid, $2::uuid[], $4::boolean, $5::bigint,"
    "      $6::boolean, $7::bigint, $8::bigint, $9::bigint) WITH ORDINALITY AS g"
)


def _bounds(reach: Reach) -> tuple[int | None, int | None]:
    """The highest sell price and the lowest buy price ``reach`` reads (``None``: no order of
    that side), as the queries compare them."""
    return (
        _ALL_ASKS if reach.asks_all else reach.asks_to,
        _ALL_BIDS if reach.bids_all else reach.bids_from,
    )


_ALL_ASKS = 2**63 - 1  # above every price (a BIGINT)
_ALL_BIDS = 0  # below every price (prices are positive)


# Per dialect, the product's columns' attribute names and what the ORM does to each value read
# (a ``StringEnum``'s enum, an array's list): the rest come from the driver as the ORM has them.
_PRODUCT_LOADERS: dict[str, list[tuple[str, Any]]] = {}


def _product_values(dialect: Dialect, values: Sequence[Any]) -> dict[str, Any]:
    loaders = _PRODUCT_LOADERS.get(dialect.name)
    if loaders is None:
        mapper = inspect(Product)
        loaders = _PRODUCT_LOADERS[dialect.name] = [
            (
                mapper.get_property_by_column(c).key,
                c.type.dialect_impl(dialect).result_processor(dialect, None),
            )
            for c in _PRODUCT_COLUMNS
        ]
    return {
        key: value if load is None or value is None else load(value)
        for (key, load), value in zip(loaders, values, strict=True)
    }


_BY_CLIENT_ID = select(MarketOrder).where(
    MarketOrder.organization_id == bindparam("organization_id"),
    MarketOrder.client_order_id == bindparam("client_order_id"),
)


class ProductRepository(Repository[Product]):
    model = Product

    async def by_code(self, code: str) -> Product | None:
        result: Product | None = (
            await self.session.execute(_PRODUCT_BY_CODE, {"code": code})
        ).scalar_one_or_none()
        return result

    async def reload(self, product_id: uuid.UUID) -> Product:
        """The product row as it is now (after the product lock), replacing a stale copy."""
        stmt = (
            select(Product)
            .where(Product.id == product_id)
            .execution_options(populate_existing=True)
        )
        return (await self.session.execute(stmt)).scalar_one()

    async def lock(self, product_id: uuid.UUID) -> None:
        """Serialise every change to one product's book (orders, fills, cancels)."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('market:' || :k, 0))"),
            {"k": str(product_id)},
        )

    async def lock_and_reload(self, product_id: uuid.UUID) -> Product | None:
        """``lock`` then ``reload`` in one round trip (``market_lock_product``, migration 0013:
        a PL/pgSQL function whose query, run after the lock, sees the row as it is now)."""
        product: Product | None = (
            await self.session.execute(_LOCK_AND_RELOAD, {"id": product_id})
        ).scalar_one_or_none()
        return product

    async def lock_and_read_book(
        self,
        product_id: uuid.UUID,
        sellers: Sequence[uuid.UUID] | None,
        reserve: int = 0,
        reach: Reach | None = None,
    ) -> tuple[Product | None, Book, LiveBlocks | None, list[int]]:
        """``lock_and_reload`` (and the product's batch locked after it, migration 0020) and
        ``open_orders_with_credit_holds`` in one round trip (``market_lock_product_and_book``,
        migrations 0021 and 0022), with the active blocks of ``sellers`` and the blocks of the
        credit holds of the sells it read (migration 0029), if it read them (``sellers``
        None: it reads no live blocks), and ``reserve``
        order sequences taken after the lock
        (migration 0027), rising. ``reach``: only the resting orders within it
        (``app.market.reach``, migration 0028), and with its ``asks_need`` and
        ``bids_need`` only as many of each side as those quantities can fill, the rest
        counted per level (``Book.hidden``, migration 0029); by default, all.

        The product is the session's (``stored_row``); the resting orders are *not* in the
        session: each is a new instance with the row's values (``row_maker``), which
        ``stored_row`` makes the session's before anything is set on it (the order path
        does so for the orders its fills and closes name: ``service.place_orders``)."""
        r = reach or Reach(asks_all=True, bids_all=True)
        rows = await fetch_rows(
            self.session,
            _LOCK_PRODUCT_AND_BOOK,
            [
                product_id,
                None if sellers is None else list(sellers),
                reserve,
                r.asks_all,
                r.asks_to,
                r.bids_all,
                r.bids_from,
                r.asks_need,
                r.bids_need,
            ],
        )
        if not rows:
            return None, Book([], {}), None, []
        first = rows[0]
        products, orders = len(_PRODUCT_COLUMNS), len(_ORDER_KEYS)
        dialect = (await self.session.connection()).dialect
        product = stored_row(
            self.session, new_row(Product, **_product_values(dialect, first[:products]))
        )
        book: list[tuple[MarketOrder, Any, Any, Any, Any]] = []
        holds = products + orders
        for row in rows:
            if row[products + _ORDER_ID] is not None:  # none: no resting order, one row
                book.append((_BOOK_ORDER(row[products:holds]), *row[holds : holds + 4]))
        copy, of, of_holds, sides, prices, quantities, counts, sequences = first[
            products + orders + 4 :
        ]
        blocks = None if of is None else (of, of_holds or [], copy or [])
        hidden = [
            (_SIDES_BY_NAME[side], price, quantity, count)
            for side, price, quantity, count in zip(
                sides or (), prices or (), quantities or (), counts or (), strict=True
            )
        ]
        return product, _book(book, hidden), blocks, list(sequences or [])

    async def list_all(self) -> Sequence[Product]:
        return (await self.session.execute(select(Product).order_by(Product.code))).scalars().all()


# Hidden levels: (side, price, open quantity, orders) of resting orders the call counted but
# did not read (migration 0029), behind those it read.
HiddenLevel = tuple[Side, int, int, int]


class Book(NamedTuple):
    """The resting orders read, in time priority; each sell order's credit holds with
    something left, as (position, batch, hold, remaining) in delivery order; and the levels
    of the orders counted, not read (``Reach.asks_need``, ``bids_need``)."""

    orders: list[MarketOrder]
    holds: dict[uuid.UUID, list[tuple[int, uuid.UUID, uuid.UUID, int]]]
    hidden: Sequence[HiddenLevel] = ()


# The holders whose active blocks a call read, the holds whose blocks it read, and the
# ``offset_live_copy_of`` rows it read (migration 0029).
LiveBlocks = tuple[list[uuid.UUID], list[uuid.UUID], list[Any]]


def _book(rows: Iterable[Any], hidden: Sequence[HiddenLevel] = ()) -> Book:
    """A ``Book`` from (order, positions, batches, holds, remaining) rows."""
    orders: list[MarketOrder] = []
    holds: dict[uuid.UUID, list[tuple[int, uuid.UUID, uuid.UUID, int]]] = {}
    for order, positions, batches, hold_ids, remaining in rows:
        orders.append(order)
        if positions:
            holds[order.id] = list(zip(positions, batches, hold_ids, remaining, strict=True))
    return Book(orders, holds, hidden)


_SIDES_BY_NAME = {str(side): side for side in Side}


class OrderRepository(Repository[MarketOrder]):
    model = MarketOrder

    async def open_orders(self, product_id: uuid.UUID) -> list[MarketOrder]:
        """The product's resting orders in sequence (time priority) order."""
        result = await self.session.execute(_OPEN_ORDERS, {"product_id": product_id})
        return list(result.scalars().all())

    async def open_orders_with_credit_holds(
        self, product_id: uuid.UUID, reach: Reach | None = None
    ) -> Book:
        """``open_orders``, and each resting sell order's credit holds with something left, as
        (position, batch, hold, remaining) in delivery order, in one round trip. ``reach``:
        only the resting orders within it (``app.market.reach``); by default, all."""
        asks_to, bids_from = _bounds(reach or Reach(asks_all=True, bids_all=True))
        result = await self.session.execute(
            _OPEN_ORDERS_WITH_CREDIT_HOLDS,
            {"product_id": product_id, "asks_to": asks_to, "bids_from": bids_from},
        )
        return _book(result)

    async def own(
        self, organization_id: uuid.UUID, order_id: uuid.UUID, *, for_update: bool = False
    ) -> MarketOrder | None:
        stmt: Select[Any] = select(MarketOrder).where(
            MarketOrder.id == order_id, MarketOrder.organization_id == organization_id
        )
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        result: MarketOrder | None = (await self.session.execute(stmt)).scalar_one_or_none()
        return result

    async def by_client_id(
        self, organization_id: uuid.UUID, client_order_id: str
    ) -> MarketOrder | None:
        result: MarketOrder | None = (
            await self.session.execute(
                _BY_CLIENT_ID,
                {"organization_id": organization_id, "client_order_id": client_order_id},
            )
        ).scalar_one_or_none()
        return result

    async def list_own(self, organization_id: uuid.UUID, params: PageParams) -> Page[MarketOrder]:
        return await self.page(
            select(MarketOrder).where(MarketOrder.organization_id == organization_id), params
        )


class TradeRepository(Repository[MarketTrade]):
    model = MarketTrade

    async def of_orders(self, order_ids: Sequence[uuid.UUID]) -> list[MarketTrade]:
        if not order_ids:
            return []
        stmt = (
            select(MarketTrade)
            .where(
                or_(
                    MarketTrade.buy_order_id.in_(order_ids),
                    MarketTrade.sell_order_id.in_(order_ids),
                )
            )
            .order_by(MarketTrade.id)
        )
        return list((await self.session.execute(stmt)).scalars().all())

    async def list_own(self, organization_id: uuid.UUID, params: PageParams) -> Page[MarketTrade]:
        return await self.page(
            select(MarketTrade).where(
                or_(
                    MarketTrade.buyer_organization_id == organization_id,
                    MarketTrade.seller_organization_id == organization_id,
                )
            ),
            params,
        )

    async def tape(self, product_id: uuid.UUID, params: PageParams) -> Page[MarketTrade]:
        return await self.page(
            select(MarketTrade).where(MarketTrade.product_id == product_id), params
        )
