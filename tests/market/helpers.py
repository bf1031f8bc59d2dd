"""Order book test helpers: a product with sellers holding its batch and funded buyers, orders
through the API, and the checks every scenario ends with (``assert_market_clean``)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Any

import httpx
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.market import service as market_service
from app.market.repository import OrderRepository, ProductRepository
from tests.factories import ADMIN, Org, create_org, deposit
from tests.offsets.helpers import assert_books_clean, new_batch, transfer

Json = dict[str, Any]
_seq = count(1)


@dataclass
class Market:
    product: Json
    sellers: list[Org]
    buyers: list[Org]

    @property
    def code(self) -> str:
        return str(self.product["code"])

    @property
    def batch_id(self) -> str:
        return str(self.product["batch_id"])


async def create_product(
    client: httpx.AsyncClient, batch_id: str | None, **fields: Any
) -> httpx.Response:
    body: Json = {"code": f"JCR-FOREST-{next(_seq)}", "name": "J-Credit forest 2024", **fields}
    if batch_id is not None:
        body["batch_id"] = batch_id
    return await client.post("/v1/products", json=body, headers=ADMIN)


async def market(
    client: httpx.AsyncClient,
    *,
    sellers: int = 2,
    buyers: int = 2,
    credits: int = 1_000,
    cash: int = 1_000_000,
    **product: Any,
) -> Market:
    """A product on one batch; each seller holds ``credits`` of it, each buyer ``cash`` JPY."""
    selling = [await create_org(client) for _ in range(sellers)]
    issued = await new_batch(client, selling[0], credits * sellers)
    for other in selling[1:]:
        r = await transfer(client, selling[0], other, issued.batch_id, credits)
        assert r.status_code == 201, r.text
    buying = [await create_org(client) for _ in range(buyers)]
    for org in buying:
        await deposit(client, org, cash)
    r = await create_product(client, issued.batch_id, **product)
    assert r.status_code == 201, r.text
    return Market(dict(r.json()), selling, buying)


async def order(
    client: httpx.AsyncClient,
    org: Org,
    m: Market,
    side: str,
    price: Any,
    quantity: Any,
    **extra: Any,
) -> httpx.Response:
    body: Json = {"product": m.code, "side": side, "quantity": quantity, **extra}
    if price is not None:
        body["price"] = price
    return await client.post("/v1/orders", json=body, headers=org.headers)


async def ordered(
    client: httpx.AsyncClient,
    org: Org,
    m: Market,
    side: str,
    price: Any,
    quantity: Any,
    **extra: Any,
) -> Json:
    r = await order(client, org, m, side, price, quantity, **extra)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def cash(client: httpx.AsyncClient, org: Org) -> tuple[int, int]:
    """(available, held) JPY."""
    r = await client.get("/v1/balances", headers=org.headers)
    assert r.status_code == 200, r.text
    c = r.json()["cash"]
    return int(c["available"]), int(c["held"])


async def credits(client: httpx.AsyncClient, org: Org, batch_id: str) -> tuple[int, int]:
    """(available, held) credits of one batch."""
    r = await client.get("/v1/balances", headers=org.headers)
    assert r.status_code == 200, r.text
    for c in r.json()["credits"]:
        if c["batch_id"] == batch_id:
            return int(c["available"]), int(c["held"])
    return 0, 0


async def book(client: httpx.AsyncClient, m: Market, depth: int = 100) -> Json:
    r = await client.get(f"/v1/markets/{m.code}/book", params={"depth": depth})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def book_from_database(session: AsyncSession, m: Market) -> Json:
    """The book aggregated straight from the open orders' rows (not through the engine)."""
    rows = (
        await session.execute(
            text(
                "SELECT o.side, o.price, sum(o.quantity - o.filled_quantity), count(*)"
                " FROM market_orders o JOIN market_products p ON p.id = o.product_id"
                " WHERE p.code = :c AND o.status IN ('open', 'partially_filled')"
                " GROUP BY o.side, o.price"
            ),
            {"c": m.code},
        )
    ).all()
    await session.rollback()
    levels: dict[str, list[Json]] = {"buy": [], "sell": []}
    for side, price, quantity, orders in rows:
        levels[side].append({"price": price, "quantity": int(quantity), "orders": orders})
    return {
        "product": m.code,
        "bids": sorted(levels["buy"], key=lambda lv: -lv["price"]),
        "asks": sorted(levels["sell"], key=lambda lv: lv["price"]),
    }


INVARIANTS = {
    # A closed order keeps nothing held (a buy's cash hold, a sell's credit holds).
    "closed_order_holds_released": """
        SELECT o.id FROM market_orders o
          LEFT JOIN market_order_credit_holds c ON c.order_id = o.id
          JOIN ledger_holds h ON h.id = coalesce(o.cash_hold_id, c.hold_id)
         WHERE o.status IN ('filled', 'cancelled', 'expired')
           AND (h.status <> 'closed' OR h.remaining <> 0)
    """,
    # An open limit order holds exactly what its open quantity may still need: a buy its
    # amount plus the largest fee (rounded down), a sell its credits (over all its holds).
    "open_order_holds_match": """
        SELECT o.id FROM market_orders o
          JOIN market_products p ON p.id = o.product_id
          LEFT JOIN market_order_credit_holds c ON c.order_id = o.id
          JOIN ledger_holds h ON h.id = coalesce(o.cash_hold_id, c.hold_id)
         WHERE o.status IN ('open', 'partially_filled')
         GROUP BY o.id, p.id
        HAVING sum(h.remaining) <> CASE
                 WHEN o.side = 'buy'
                 THEN o.price * (o.quantity - o.filled_quantity)
                      + o.price * (o.quantity - o.filled_quantity)
                        * greatest(p.maker_fee_bps, p.taker_fee_bps) / 10000
                 ELSE o.quantity - o.filled_quantity END
    """,
    # A sell order's holds are each on a batch the product may deliver.
    "sell_holds_eligible": """
        SELECT c.order_id FROM market_order_credit_holds c
          JOIN market_orders o ON o.id = c.order_id
          JOIN market_products p ON p.id = o.product_id
          JOIN offset_batches b ON b.id = c.batch_id
         WHERE NOT (CASE WHEN p.batch_id IS NOT NULL THEN b.id = p.batch_id
                         ELSE b.category = p.category
                              AND b.vintage >= coalesce(p.vintage_min, b.vintage)
                              AND b.vintage <= coalesce(p.vintage_max, b.vintage)
                              AND b.labels @> p.labels END)
    """,
    # Fees: what each product's fee account holds is what its trades say was charged (and
    # the unscoped fee account took none of it).
    "fees_add_up": """
        SELECT a.id FROM ledger_accounts a
         WHERE a.kind = 'fees' AND a.asset = 'JPY'
           AND a.balance <> (SELECT coalesce(sum(t.buyer_fee + t.seller_fee), 0)
                               FROM market_trades t WHERE t.product_id = a.scope_id)
    """,
    "open_orders_are_limit_gtc_or_gtd": """
        SELECT id FROM market_orders WHERE status IN ('open', 'partially_filled')
           AND (type <> 'limit' OR time_in_force NOT IN ('gtc', 'gtd')
                OR filled_quantity >= quantity)
    """,
    "filled_orders_are_complete": """
        SELECT id FROM market_orders WHERE status = 'filled' AND filled_quantity <> quantity
    """,
    "no_fill_beyond_limit": """
        SELECT t.id FROM market_trades t
          JOIN market_orders b ON b.id = t.buy_order_id
          JOIN market_orders s ON s.id = t.sell_order_id
         WHERE t.price > b.price OR t.price < s.price
    """,
    "fills_add_up": """
        SELECT o.id FROM market_orders o
          LEFT JOIN market_trades t ON o.id IN (t.buy_order_id, t.sell_order_id)
         GROUP BY o.id
        HAVING o.filled_quantity <> coalesce(sum(t.quantity), 0)
            OR o.filled_amount <> coalesce(sum(t.price * t.quantity), 0)
    """,
    "delivered_serials_match": """
        SELECT t.id FROM market_trades t,
               LATERAL (SELECT sum((r->>1)::bigint - (r->>0)::bigint + 1) AS n
                          FROM jsonb_array_elements(t.serial_ranges) r) d
         WHERE d.n IS DISTINCT FROM t.quantity
    """,
}


async def assert_market_clean(session: AsyncSession) -> None:
    """The ledger's and registry's checkers, and the order book's own invariants."""
    await assert_books_clean(session)
    broken: dict[str, list[Any]] = {}
    for name, sql in INVARIANTS.items():
        rows = (await session.execute(text(sql))).scalars().all()
        if rows:
            broken[name] = list(rows)
    await assert_book_reads_agree(session)
    await session.rollback()
    assert broken == {}


def _columns(row: object) -> dict[str, Any]:
    return {a.key: getattr(row, a.key) for a in inspect(type(row)).column_attrs}


async def assert_book_reads_agree(session: AsyncSession) -> None:
    """The order path's book reads (the resting orders with their sells' credit holds, one
    statement; and the same with the product, in the group's lock call) find what the
    separate reads find, for every product, column for column."""
    products = (await session.execute(text("SELECT id FROM market_products"))).scalars().all()
    repository = OrderRepository(session)
    for product_id in products:
        # Taken apart at once: the reads below refresh the same objects (identity map).
        locked, book, blocks, _ = await ProductRepository(session).lock_and_read_book(
            product_id, []
        )
        in_lock, in_lock_holds, in_lock_hidden = book
        assert in_lock_hidden == []  # no reach: every resting order is read
        assert locked is not None
        with_lock = (_columns(locked), [_columns(o) for o in in_lock], in_lock_holds)
        if blocks is not None:  # the holders' active blocks and the holds' blocks it read
            holders, block_holds, rows = blocks
            live = await session.execute(
                text(
                    "SELECT id FROM offset_blocks WHERE batch_id = :b AND closed_at IS NULL"
                    " AND ((holder_organization_id = ANY(CAST(:h AS uuid[]))"
                    "       AND state = 'active') OR hold_id = ANY(CAST(:holds AS uuid[])))"
                ),
                {"b": locked.batch_id, "h": holders, "holds": block_holds},
            )
            assert {r[0] for r in rows if r[9]} == set(live.scalars())
            # Every credit hold of the sells it read.
            assert {
                h[2] for o in in_lock if o.side == "sell" for h in in_lock_holds.get(o.id, [])
            } <= set(block_holds)
        await session.rollback()  # the locks
        session.expunge_all()
        resting, holds, hidden = await repository.open_orders_with_credit_holds(product_id)
        assert not hidden
        assert [_columns(o) for o in resting] == [
            _columns(o) for o in await repository.open_orders(product_id)
        ]
        sells = [o.id for o in resting if o.side == "sell"]
        expected = await market_service.credit_holds(session, sells)
        assert {
            order_id: [(h.position, h.batch_id, h.hold_id, h.remaining) for h in found]
            for order_id, found in expected.items()
        } == holds
        product = await ProductRepository(session).get(product_id)
        assert product is not None
        assert with_lock == (_columns(product), [_columns(o) for o in resting], holds)
        await session.rollback()
