"""A group's deferred writes (``app.db.deferred``): placing orders as one group on a batch
product, with the holds, payments, fees and serial-block changes sent in one call, leaves
exactly what placing the same orders one at a time leaves: the same fills, balances, trade
serials and live blocks (serials counted from each batch's first), and clean checkers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.time import utc_now
from app.db.driver import DatabaseRefusal
from app.db.session import create_sessionmaker
from app.db.url import libpq_url
from app.ledger import service as ledger_service
from app.ledger.models import AccountKind
from app.market import service as market_service
from app.market.matching import OrderType, Side, TimeInForce
from app.market.reach import Reach
from app.market.schemas import OrderCreate
from tests.market.helpers import Market, assert_market_clean, cash, credits, market, order

# (buyer or seller, its index, side, price, quantity, extra fields): crossing both ways, partial
# fills, a sell spanning two resting buys, an IOC remainder cancelled, a market buy.
CASH = ledger_service.CASH

SCENARIO: list[tuple[str, int, str, int | None, int, dict[str, Any]]] = [
    ("buyer", 0, "buy", 990, 3, {}),
    ("seller", 0, "sell", 1_000, 4, {}),
    ("buyer", 1, "buy", 1_010, 2, {}),
    ("seller", 1, "sell", 985, 5, {}),
    ("buyer", 2, "buy", 1_000, 6, {}),
    ("seller", 2, "sell", 1_005, 1, {}),
    ("buyer", 0, "buy", 1_005, 2, {"time_in_force": "ioc"}),
    ("seller", 0, "sell", 995, 2, {}),
    ("buyer", 1, "buy", None, 1, {"type": "market"}),
    ("seller", 1, "sell", 990, 3, {}),
]


def _items(m: Market) -> list[tuple[uuid.UUID, OrderCreate]]:
    items = []
    for role, index, side, price, quantity, extra in SCENARIO:
        org = (m.buyers if role == "buyer" else m.sellers)[index]
        items.append(
            (
                uuid.UUID(org.id),
                OrderCreate(
                    product=m.code,
                    side=Side(side),
                    price=price,
                    quantity=quantity,
                    type=OrderType(extra.get("type", "limit")),
                    time_in_force=TimeInForce(extra.get("time_in_force", "gtc")),
                ),
            )
        )
    return items


async def _outcome(
    client: httpx.AsyncClient,
    session: AsyncSession,
    m: Market,
    placed: list[Any],
    wall: Sequence[str] = (),
) -> dict[str, Any]:
    """What placing left, with ids replaced by positions (``wall``: the ids of the orders
    rested before, in order) and serials counted from the batch's first serial."""
    base = (
        await session.execute(
            text("SELECT min(serial_start) FROM offset_blocks WHERE batch_id = :b"),
            {"b": m.batch_id},
        )
    ).scalar_one()
    position = {p.order.id: f"p{i:03}" for i, p in enumerate(placed)}
    position |= {uuid.UUID(i): f"w{n:03}" for n, i in enumerate(wall)}
    orgs = {uuid.UUID(o.id): f"{role}{i}" for role, group in (("b", m.buyers), ("s", m.sellers))
            for i, o in enumerate(group)}  # fmt: skip
    orders = (
        await session.execute(
            text(
                "SELECT id, status, filled_quantity, filled_amount, cancel_reason"
                " FROM market_orders WHERE product_id = :p"
            ),
            {"p": m.product["id"]},
        )
    ).all()
    trades = (
        await session.execute(
            text(
                "SELECT buy_order_id, sell_order_id, price, quantity, buyer_fee, seller_fee,"
                " serial_ranges FROM market_trades WHERE product_id = :p"
            ),
            {"p": m.product["id"]},
        )
    ).all()
    blocks = (
        await session.execute(
            text(
                "SELECT holder_organization_id, serial_start, serial_end, state,"
                " hold_id IS NOT NULL FROM offset_blocks"
                " WHERE batch_id = :b AND closed_at IS NULL"
            ),
            {"b": m.batch_id},
        )
    ).all()
    last_price = (
        await session.execute(
            text("SELECT last_trade_price FROM market_products WHERE id = :p"),
            {"p": m.product["id"]},
        )
    ).scalar_one()
    await session.rollback()
    return {
        "last_trade_price": last_price,
        "orders": sorted(
            (position[o.id], o.status, o.filled_quantity, o.filled_amount, o.cancel_reason)
            for o in orders
        ),
        "trades": sorted(
            (
                position[t.buy_order_id],
                position[t.sell_order_id],
                t.price,
                t.quantity,
                t.buyer_fee,
                t.seller_fee,
                [[a - base, b - base] for a, b in t.serial_ranges],
            )
            for t in trades
        ),
        "blocks": sorted((orgs[b[0]], b[1] - base, b[2] - base, b[3], b[4]) for b in blocks),
        "cash": {orgs[uuid.UUID(o.id)]: await cash(client, o) for o in m.buyers + m.sellers},
        "credits": {
            orgs[uuid.UUID(o.id)]: await credits(client, o, m.batch_id)
            for o in m.buyers + m.sellers
        },
    }


async def _place_group(
    s: AsyncSession,
    product_id: uuid.UUID,
    items: list[tuple[uuid.UUID, OrderCreate]],
    *,
    group_locks: bool,
    fills_only: bool = False,
    hidden: list[int] | None = None,
) -> list[market_service.PlacedOrder]:
    """``place_orders`` as ``app.market.group`` calls it (``group_locks``: the batch locked
    and the book and some sellers' live blocks read with the product lock, and the accounts
    it has seen locked by its write call; ``fills_only``: of the book, only what the items'
    quantities can fill, the rest counted, its orders added to ``hidden``), or alone."""
    if not group_locks:
        return await market_service.place_orders(s, product_id, items)
    sellers = sorted({org for org, body in items if body.side == Side.SELL})
    reach = None
    if fills_only:
        reach = replace(
            Reach.of((body.side, body.price) for _, body in items),
            asks_need=sum(body.quantity for _, body in items if body.side == Side.BUY),
            bids_need=sum(body.quantity for _, body in items if body.side == Side.SELL),
        )
    product, book, blocks, _ = await market_service.lock_product_and_read_book(
        s,
        product_id,
        sellers[: len(sellers) // 2],  # the others: read after matching
        reach=reach,
    )
    assert blocks is not None  # a batch product with few sellers: read with the lock
    if hidden is not None:
        hidden.append(sum(count for *_, count in book.hidden))
    return await market_service.place_orders(
        s,
        product_id,
        items,
        locked=product,
        batch_locked=True,
        read_book=book,
        read_blocks=blocks,
        reach=reach,
    )


def _count_lock_settlement(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call of ``lock_settlement`` (the long way to the accounts' ids and locks)."""
    calls: list[object] = []
    real = market_service.lock_settlement

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(market_service, "lock_settlement", counted)
    return calls


@pytest.mark.parametrize(
    ("group_locks", "fills_only"),
    [(False, False), (True, False), (True, True)],
    ids=["own-locks", "group-locks", "group-reads-what-it-can-fill"],
)
async def test_a_deferred_group_writes_what_one_by_one_writes(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    group_locks: bool,
    fills_only: bool,
) -> None:
    sessions = create_sessionmaker(engine)
    fees = {"maker_fee_bps": 10, "taker_fee_bps": 30}
    grouped = await market(client, sellers=3, buyers=3, **fees)
    alone = await market(client, sellers=3, buyers=3, **fees)
    walls: dict[str, list[str]] = {}
    for m in (grouped, alone):  # deeper than the scenario fills, at the edges of its reach
        walls[m.product["id"]] = []
        for i in range(6):
            for side, orgs, price in (("sell", m.sellers, 1_020), ("buy", m.buyers, 985)):
                r = await order(client, orgs[i % 3], m, side, price, 5)
                assert r.status_code == 201, r.text
                walls[m.product["id"]].append(r.json()["id"])

    # What each product's channel hears: the same events, in the same order.
    heard: dict[str, list[dict[str, Any]]] = {grouped.product["id"]: [], alone.product["id"]: []}
    listener = await asyncpg.connect(libpq_url(engine.url.render_as_string(hide_password=False)))
    for m in (grouped, alone):

        def hear(_c: object, _p: int, _ch: str, payload: str, key: str = m.product["id"]) -> None:
            event = json.loads(payload)
            event.pop("id", None)  # a trade's id and time differ
            event.pop("executed_at", None)
            heard[key].append(event)

        await listener.add_listener(market_service.channel(uuid.UUID(m.product["id"])), hear)
    # Three rounds: in the second and third the buyers already hold blocks from the first,
    # which the deliveries must merge with (read as the blocks touching the sellers', not
    # every block); by the third every account the group touches has been seen, so with the
    # group's locks its write call locks them by id (0020).
    placed_grouped = []
    placed_alone = []
    long_way = _count_lock_settlement(monkeypatch)
    rounds_the_long_way = []
    hidden: list[int] = []
    for _ in range(3):
        async with sessions() as s:  # one group: the writes deferred and sent at once
            before = len(long_way)
            placed_grouped += await _place_group(
                s,
                uuid.UUID(grouped.product["id"]),
                _items(grouped),
                group_locks=group_locks,
                fills_only=fills_only,
                hidden=hidden,
            )
            rounds_the_long_way.append(len(long_way) > before)
            await s.commit()
        for item in _items(alone):  # one order per transaction: the writes as they go
            async with sessions() as s:
                placed_alone += await market_service.place_orders(
                    s, uuid.UUID(alone.product["id"]), [item]
                )
                await s.commit()

    assert rounds_the_long_way[-1] is not group_locks
    # Reading only what they can fill, the later rounds left resting orders unread (counted,
    # and their levels' events still exact: compared below).
    assert (sum(hidden) > 0) is fills_only
    assert await _outcome(
        client, session, grouped, placed_grouped, walls[grouped.product["id"]]
    ) == await _outcome(client, session, alone, placed_alone, walls[alone.product["id"]])
    for _ in range(100):  # notices arrive after their commits
        if len(heard[grouped.product["id"]]) >= len(heard[alone.product["id"]]) > 0:
            break
        await asyncio.sleep(0.02)
    await listener.close()
    assert heard[grouped.product["id"]] == heard[alone.product["id"]]
    assert {e["type"] for e in heard[alone.product["id"]]} == {"trade", "level"}
    # The answers carry the sequences the rows got, rising in arrival order.
    stored: dict[uuid.UUID, int] = dict(
        (
            await session.execute(
                text("SELECT id, sequence FROM market_orders WHERE product_id = :p"),
                {"p": grouped.product["id"]},
            )
        ).all()
    )
    await session.rollback()
    sequences = [p.order.sequence for p in placed_grouped]
    assert sequences == [stored[p.order.id] for p in placed_grouped]
    assert sequences == sorted(set(sequences))
    # Something traded, and a sell's held blocks were made and closed within the group.
    assert sum(len(p.trades) for p in placed_grouped) >= 10
    # Both ways merged every delivery with the touching blocks of its buyer: no two live blocks
    # with one merge key touch (a missed neighbour would leave two).
    touching = (
        await session.execute(
            text(
                "SELECT count(*) FROM offset_blocks a JOIN offset_blocks b"
                " ON a.batch_id = b.batch_id AND a.serial_end + 1 = b.serial_start"
                " AND a.holder_organization_id = b.holder_organization_id"
                " AND a.state = b.state AND a.hold_id IS NOT DISTINCT FROM b.hold_id"
                " WHERE a.closed_at IS NULL AND b.closed_at IS NULL AND a.state <> 'retired'"
            )
        )
    ).scalar_one()
    await session.rollback()
    assert touching == 0
    for m in (grouped, alone):  # fewer blocks than deliveries: some of them merged
        buyers = [uuid.UUID(o.id) for o in m.buyers]
        blocks, deliveries = (
            await session.execute(
                text(
                    "SELECT (SELECT count(*) FROM offset_blocks WHERE closed_at IS NULL"
                    " AND batch_id = :b AND holder_organization_id = ANY(:buyers)),"
                    " (SELECT count(*) FROM market_trades WHERE batch_id = :b)"
                ),
                {"b": m.batch_id, "buyers": buyers},
            )
        ).one()
        await session.rollback()
        assert 0 < blocks < deliveries
    await assert_market_clean(session)


async def test_a_shortfall_inside_a_group_is_refused_and_leaves_nothing(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
) -> None:
    """A buy that its buyer's cash cannot cover at its turn is refused even though a later
    sale of the same buyer, in the same group, would have paid it enough by the end (the
    ledger checks each balance after each leg, in order, as one call per order would), and
    the whole group is rolled back."""
    m = await market(client, sellers=2, buyers=1)
    buyer = uuid.UUID(m.buyers[0].id)
    trader = uuid.UUID(m.sellers[1].id)  # holds credits, no cash

    def body(side: str, price: int) -> OrderCreate:
        return OrderCreate(product=m.code, side=Side(side), price=price, quantity=1)

    items = [
        (buyer, body("buy", 1_000)),  # rests
        (trader, body("buy", 999)),  # no cash at its turn: refused
        (trader, body("sell", 1_000)),  # fills the first buy: 1,000 to the trader
    ]
    orgs = [m.buyers[0], m.sellers[1]]
    before = [await cash(client, o) for o in orgs] + [
        await credits(client, o, m.batch_id) for o in orgs
    ]
    async with create_sessionmaker(engine)() as s:
        with pytest.raises(DatabaseRefusal) as refused:
            await market_service.place_orders(s, uuid.UUID(m.product["id"]), items)
        await s.rollback()
    assert refused.value.sqlstate == "TN001"  # insufficient balance
    after = [await cash(client, o) for o in orgs] + [
        await credits(client, o, m.batch_id) for o in orgs
    ]
    assert after == before
    stored = (await session.execute(text("SELECT count(*) FROM market_orders"))).scalar_one()
    await session.rollback()
    assert stored == 0
    await assert_market_clean(session)


async def test_a_group_naming_an_account_that_is_gone_writes_nothing_and_forgets_the_ids(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group's write call locks the accounts by the ids the process has seen (0020). One
    that does not exist (remembered from a transaction that rolled back) refuses the call
    (TN016) before anything is written; the ids are forgotten, and the same group placed
    again takes the long way and succeeds."""
    m = await market(client, sellers=3, buyers=3)
    product_id = uuid.UUID(m.product["id"])
    sessions = create_sessionmaker(engine)
    for _ in range(2):  # the accounts made by the first are seen by the second
        async with sessions() as s:
            await _place_group(s, product_id, _items(m), group_locks=True)
            await s.commit()
    seen = market_service._SEEN_ACCOUNTS
    long_way = _count_lock_settlement(monkeypatch)
    buyer_cash = (uuid.UUID(m.buyers[0].id), CASH, AccountKind.available)
    assert buyer_cash in seen
    seen[buyer_cash] = uuid.uuid4()  # as if it had been created by a rolled-back transaction
    count = text(
        "SELECT (SELECT count(*) FROM market_orders), (SELECT count(*) FROM ledger_entries)"
    )
    before = (await session.execute(count)).one()
    await session.rollback()
    async with sessions() as s:
        with pytest.raises(DatabaseRefusal) as refused:
            await _place_group(s, product_id, _items(m), group_locks=True)
        await s.rollback()
    assert refused.value.sqlstate == market_service.ACCOUNTS_GONE_SQLSTATE
    assert long_way == []  # the ids seen were used, not looked up
    assert (await session.execute(count)).one() == before
    await session.rollback()
    assert not seen  # forgotten: the next group finds and locks the accounts by key
    async with sessions() as s:
        placed = await _place_group(s, product_id, _items(m), group_locks=True)
        await s.commit()
    assert len(placed) == len(SCENARIO)
    assert long_way  # the long way, this time
    real = await ledger_service.account_id(session, *buyer_cash)
    await session.rollback()
    assert seen[buyer_cash] == real
    await assert_market_clean(session)


async def test_a_group_that_expires_a_due_order_first_reads_the_blocks_again(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
) -> None:
    """The lock call reads the book's sellers' live blocks; a due GTD order in that book is
    expired first, which releases its seller's held blocks, so those rows are stale and the
    group reads the blocks again after matching (else its writes would close blocks that are
    closed already, and be refused)."""
    m = await market(client, sellers=2, buyers=1)
    product_id = uuid.UUID(m.product["id"])
    seller, buyer = uuid.UUID(m.sellers[0].id), uuid.UUID(m.buyers[0].id)
    sessions = create_sessionmaker(engine)

    def body(side: str, price: int, **extra: Any) -> OrderCreate:
        return OrderCreate(product=m.code, side=Side(side), price=price, quantity=1, **extra)

    due = utc_now() + timedelta(milliseconds=300)
    async with sessions() as s:
        [gtd] = await market_service.place_orders(
            s, product_id, [(seller, body("sell", 1_010, time_in_force="gtd", expires_at=due))]
        )
        await s.commit()
    await asyncio.sleep(0.4)
    async with sessions() as s:
        placed = await _place_group(
            s,
            product_id,
            [
                (seller, body("sell", 1_000)),
                (buyer, body("buy", 1_000)),
                (seller, body("sell", 990)),
            ],
            group_locks=True,
        )
        await s.commit()
    assert [len(p.trades) for p in placed] == [0, 1, 0]
    status = await session.execute(
        text("SELECT status FROM market_orders WHERE id = :id"), {"id": gtd.order.id}
    )
    assert status.scalar_one() == "expired"
    await session.rollback()
    await assert_market_clean(session)


async def test_the_group_call_is_written_with_the_functions_own_parameter_types(
    session: AsyncSession,
) -> None:
    """``call_and_commit`` writes each argument cast to the type ``_GROUP_TYPES`` names: the
    types must be ``market_apply_group``'s own, in order (a wrong one fails the call, or
    finds no function)."""
    for function, extra in (
        ("market_apply_group", ()),
        ("market_lock_accounts_and_apply_group", ("uuid[]",)),
    ):
        arguments = await session.scalar(
            text(f"SELECT pg_get_function_identity_arguments('{function}'::regproc)")
        )
        types = [argument.split(" ", 1)[1] for argument in arguments.split(", ")]
        assert types == [*extra, *market_service._GROUP_TYPES]
