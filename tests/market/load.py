"""Real server processes, a load of concurrent clients, and what must hold afterwards.

- ``ServerProcess`` / ``running_servers``: uvicorn on a free loopback port, on the test
  database. One single-process uvicorn each (no ``--workers``: the pid is the server itself,
  so ``kill()`` is a real SIGKILL of the process serving requests, not of a supervisor whose
  children would live on). The job runner is off (``TANSO_WORKER_IN_PROCESS=false``): the
  tests drive only the API. ``running_servers`` stops every process it started when the test
  ends, however it ends.
- ``trader``: one client placing random orders (sides, prices around a mid, GTC/IOC/FOK,
  post-only, a few market orders) and cancelling some of its resting ones, recording what was
  acknowledged and what was in flight when the connection broke (``Load``).
- ``replay``: the orders and cancels as committed, fed through the pure ``OrderBook``: the
  book, the trades and every order's outcome must be what the service stored.
- ``assert_after_load``: every check a load ends with.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.market.matching import (
    BookSnapshot,
    Cancelled,
    Done,
    Order,
    OrderBook,
    OrderType,
    PriceLevel,
    Rejected,
    Side,
    TimeInForce,
    Trade,
)
from tests.conftest import ADMIN_KEY
from tests.factories import Org, deposit
from tests.market.helpers import (
    Json,
    Market,
    assert_market_clean,
    book_from_database,
    cash,
    credits,
)
from tests.offsets.helpers import transfer

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    database_url: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    data_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="tanso-test-server-"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "TANSO_DATABASE__URL": self.database_url,
            "TANSO_ADMIN_KEY": ADMIN_KEY,
            "TANSO_DATA_DIR": self.data_dir,
            "TANSO_WORKER_IN_PROCESS": "false",
            "TANSO_LOG_LEVEL": "WARNING",
            # Two servers and the test's own engine share one PostgreSQL: small pools.
            "TANSO_DATABASE__POOL_SIZE": "8",
            "TANSO_DATABASE__MAX_OVERFLOW": "4",
        }
        command = [sys.executable, "-m", "uvicorn", "app.main:app_factory", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "warning", "--no-access-log"]
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)

    async def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient(base_url=self.base_url, timeout=1) as c:
            while True:
                try:
                    if (await c.get("/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become ready")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, at once: no shutdown, no draining of in-flight requests."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL if it has not exited in 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


class Servers:
    """Starts servers on one database and remembers them, so all are stopped at the end."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.started: list[ServerProcess] = []

    def launch(self, count: int = 1) -> list[ServerProcess]:
        """Start ``count`` processes without waiting (they boot while the test sets up)."""
        new = [ServerProcess(self.database_url) for _ in range(count)]
        self.started += new
        for server in new:
            server.start()
        return new

    async def start(self, count: int = 1) -> list[ServerProcess]:
        """Start ``count`` processes and wait until each answers ``/ready``."""
        new = self.launch(count)
        await asyncio.gather(*(s.wait_ready() for s in new))
        return new

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)


@contextmanager
def running_servers(database_url: str) -> Iterator[Servers]:
    servers = Servers(database_url)
    try:
        yield servers
    finally:
        servers.stop_all()


# --- the participants ------------------------------------------------------------------


@dataclass
class Holdings:
    """What an organisation held before the load: it trades both sides."""

    org: Org
    cash: int
    credits: int


async def traders(client: httpx.AsyncClient, m: Market, cash_each: int) -> list[Holdings]:
    """``market()``'s sellers get cash and its buyers half a seller's credits, so every
    organisation can buy and sell (and self-trade prevention comes into play)."""
    held: list[Holdings] = []
    for seller, buyer in zip(m.sellers, m.buyers, strict=True):
        await deposit(client, seller, cash_each)
        available, _ = await credits(client, seller, m.batch_id)
        r = await transfer(client, seller, buyer, m.batch_id, available // 2)
        assert r.status_code == 201, r.text
        held.append(Holdings(seller, cash_each, available - available // 2))
        held.append(Holdings(buyer, cash_each, available // 2))
    return held


# --- the load --------------------------------------------------------------------------


@dataclass
class Load:
    """What the clients saw: acknowledged orders by ``client_order_id`` (the 201 body), the
    requests that got no answer (the server died under them), and the cancels."""

    acked: dict[str, Json] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)  # order ids a DELETE answered 200
    cancels_in_flight: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    # Set once ``milestone`` orders are acknowledged (e.g. to kill the server mid-load).
    milestone: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)


def order_body(m: Market, rng: random.Random, mid: int, client_order_id: str) -> Json:
    body: Json = {
        "product": m.code,
        "side": rng.choice(["buy", "sell"]),
        "quantity": rng.randint(1, 20),
        "client_order_id": client_order_id,
    }
    kind = rng.random()
    if kind < 0.04:
        body["type"] = "market"
        return body
    body["price"] = mid + rng.randint(-15, 15)
    if kind < 0.20:
        body["time_in_force"] = "ioc"
    elif kind < 0.30:
        body["time_in_force"] = "fok"
    elif kind < 0.35:
        body["post_only"] = True
    return body


async def trader(
    load: Load,
    base_url: str,
    org: Org,
    m: Market,
    *,
    name: str,
    orders: int,
    mid: int,
    seed: int,
    cancel_rate: float = 0.25,
) -> None:
    """Place ``orders`` orders, cancelling one of the client's resting orders now and then.

    Answers other than 201/200 and the expected 409s are recorded in ``load.unexpected``. A
    broken connection (the server was killed) ends the client, its request left in flight.
    """
    rng = random.Random(seed)
    resting: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, headers=org.headers, timeout=30) as c:
        for n in range(orders):
            if resting and rng.random() < cancel_rate:
                order_id = resting.pop(rng.randrange(len(resting)))
                load.cancels_in_flight.add(order_id)
                try:
                    r = await c.delete(f"/v1/orders/{order_id}")
                except httpx.TransportError:
                    return
                load.cancels_in_flight.discard(order_id)
                load.statuses[f"DELETE {r.status_code}"] += 1
                if r.status_code == 200:
                    load.cancelled.add(order_id)
                elif not (r.status_code == 409 and r.json()["code"] == "order_not_open"):
                    load.unexpected.append(f"DELETE {r.status_code} {r.text}")
            client_order_id = f"{name}-{n}"
            body = order_body(m, rng, mid, client_order_id)
            load.in_flight.add(client_order_id)
            try:
                r = await c.post("/v1/orders", json=body)
            except httpx.TransportError:
                return
            load.in_flight.discard(client_order_id)
            load.statuses[f"POST {r.status_code}"] += 1
            if r.status_code == 201:
                placed = r.json()
                load.acked[client_order_id] = placed
                if load.milestone and len(load.acked) >= load.milestone:
                    load.reached.set()
                if placed["status"] in ("open", "partially_filled"):
                    resting.append(placed["id"])
            elif not (r.status_code == 409 and r.json()["code"] == "order_rejected"):
                load.unexpected.append(f"POST {r.status_code} {r.text}")


# --- what the database holds -----------------------------------------------------------


async def stored_orders(session: AsyncSession, m: Market) -> list[Row[Any]]:
    rows = await session.execute(
        text(
            "SELECT o.* FROM market_orders o JOIN market_products p ON p.id = o.product_id"
            " WHERE p.code = :c ORDER BY o.sequence"
        ),
        {"c": m.code},
    )
    result = list(rows.all())
    await session.rollback()
    return result


async def stored_trades(session: AsyncSession, m: Market) -> list[Row[Any]]:
    rows = await session.execute(
        text(
            "SELECT t.* FROM market_trades t JOIN market_products p ON p.id = t.product_id"
            " WHERE p.code = :c"
        ),
        {"c": m.code},
    )
    result = list(rows.all())
    await session.rollback()
    return result


# --- the replay ------------------------------------------------------------------------

TradeKey = tuple[uuid.UUID, uuid.UUID, int, int, str]  # buy, sell, price, quantity, taker side


@dataclass
class Outcome:
    status: str
    cancel_reason: str | None = None
    filled_quantity: int = 0
    filled_amount: int = 0


@dataclass
class Replayed:
    trades: list[TradeKey]
    outcomes: dict[uuid.UUID, Outcome]
    book: BookSnapshot


def replay(orders: Sequence[Row[Any]], reference_price: int, band_bps: int) -> Replayed:
    """Feed the stored orders and cancels, in the order they were committed, through a fresh
    ``OrderBook``.

    Every change to a product's book runs under its advisory lock, and the service stamps it
    under that lock: an order's ``created_at`` (its sequence is taken in the same critical
    section) and a requested cancel's ``updated_at``. Those stamps therefore order the
    commands as they were serialised; the test checks that they agree with ``sequence``. The
    price band of a market order is recomputed as the service does, around the last trade
    price (the reference price before the first trade).
    """
    commands = [(o.created_at, o.sequence, "submit", o) for o in orders]
    commands += [
        (o.updated_at, o.sequence, "cancel", o) for o in orders if o.cancel_reason == "requested"
    ]
    commands.sort(key=lambda c: (c[0], c[1]))
    submitted = [c[1] for c in commands if c[2] == "submit"]
    assert submitted == sorted(submitted), "created_at and sequence disagree"

    book = OrderBook()
    outcomes: dict[uuid.UUID, Outcome] = {}
    trades: list[TradeKey] = []
    last_price: int | None = None
    for _, _, command, o in commands:
        if command == "cancel":
            events = book.cancel(o.id)
            assert isinstance(events[0], Cancelled), f"cancel of {o.id} in replay: {events}"
        else:
            centre = last_price or reference_price
            width = centre * band_bps // 10_000
            outcomes[o.id] = Outcome("open")
            events = book.submit(
                Order(
                    o.id,
                    Side(o.side),
                    o.quantity,
                    o.price,
                    o.organization_id,
                    o.sequence,
                    OrderType(o.type),
                    TimeInForce(o.time_in_force),
                    o.post_only,
                ),
                band_low=max(1, centre - width),
                band_high=centre + width,
            )
        for event in events:
            if isinstance(event, Trade):
                buy, sell = (
                    (event.taker_id, event.maker_id)
                    if event.taker_side is Side.BUY
                    else (event.maker_id, event.taker_id)
                )
                trades.append((buy, sell, event.price, event.quantity, str(event.taker_side)))  # type: ignore[arg-type]
                for order_id in (buy, sell):
                    outcome = outcomes[order_id]  # type: ignore[index]
                    outcome.status = "partially_filled"
                    outcome.filled_quantity += event.quantity
                    outcome.filled_amount += event.price * event.quantity
                last_price = event.price
            elif isinstance(event, Done):
                outcomes[event.order_id].status = "filled"  # type: ignore[index]
            elif isinstance(event, Cancelled):
                outcome = outcomes[event.order_id]  # type: ignore[index]
                outcome.status, outcome.cancel_reason = "cancelled", event.reason.value
            else:
                assert not isinstance(event, Rejected), f"a stored order was rejected: {event}"
    return Replayed(sorted(trades), outcomes, book.depth(None))


# --- the checks ------------------------------------------------------------------------


def book_json(m: Market, snapshot: BookSnapshot) -> Json:
    def levels(side: tuple[PriceLevel, ...]) -> list[Json]:
        return [{"price": lv.price, "quantity": lv.quantity, "orders": lv.orders} for lv in side]

    return {"product": m.code, "bids": levels(snapshot.bids), "asks": levels(snapshot.asks)}


async def assert_after_load(
    client: httpx.AsyncClient,
    session: AsyncSession,
    m: Market,
    holdings: list[Holdings],
    base_urls: Sequence[str],
) -> Replayed:
    """Everything a load must leave true; returns the replay for further checks.

    No order filled beyond its quantity; fills equal on both sides; no buy charged above its
    limit; each organisation's cash and credits (available and held, never negative) are what
    it started with moved by its fills, and its held amounts are exactly its resting orders';
    the trades and every order's outcome equal the replay's; every server's book, the book
    aggregated from the rows and the replay's book are one; then ``assert_market_clean`` (the
    ledger and registry checkers, closed orders' holds released, ...).
    """
    orders = await stored_orders(session, m)
    trades = await stored_trades(session, m)
    by_id = {o.id: o for o in orders}

    assert all(0 <= o.filled_quantity <= o.quantity for o in orders)
    buys = [o for o in orders if o.side == "buy"]
    sells = [o for o in orders if o.side == "sell"]
    traded = sum(t.quantity for t in trades)
    turnover = sum(t.price * t.quantity for t in trades)
    assert sum(o.filled_quantity for o in buys) == sum(o.filled_quantity for o in sells) == traded
    assert sum(o.filled_amount for o in buys) == sum(o.filled_amount for o in sells) == turnover
    for t in trades:
        buy, sell = by_id[t.buy_order_id], by_id[t.sell_order_id]
        assert buy.price is None or t.price <= buy.price
        assert sell.price is None or t.price >= sell.price
    for o in buys:
        if o.price is not None:
            assert o.filled_amount <= o.price * o.filled_quantity

    open_statuses = ("open", "partially_filled")
    for h in holdings:
        mine = [o for o in orders if str(o.organization_id) == h.org.id]
        spent = sum(o.filled_amount for o in mine if o.side == "buy")
        earned = sum(o.filled_amount for o in mine if o.side == "sell")
        bought = sum(o.filled_quantity for o in mine if o.side == "buy")
        sold = sum(o.filled_quantity for o in mine if o.side == "sell")
        cash_held = sum(
            o.price * (o.quantity - o.filled_quantity)
            for o in mine
            if o.side == "buy" and o.status in open_statuses
        )
        credits_held = sum(
            o.quantity - o.filled_quantity
            for o in mine
            if o.side == "sell" and o.status in open_statuses
        )
        fees = sum(  # zero unless the product charges fees
            getattr(t, "buyer_fee", 0) * (str(t.buyer_organization_id) == h.org.id)
            + getattr(t, "seller_fee", 0) * (str(t.seller_organization_id) == h.org.id)
            for t in trades
        )
        available, held = await cash(client, h.org)
        assert available >= 0
        assert (available, held) == (h.cash - spent + earned - fees - cash_held, cash_held)
        available, held = await credits(client, h.org, m.batch_id)
        assert available >= 0
        assert (available, held) == (h.credits + bought - sold - credits_held, credits_held)

    product = (await client.get("/v1/products", headers=holdings[0].org.headers)).json()
    (found,) = [p for p in product if p["code"] == m.code]
    replayed = replay(orders, int(found["reference_price"]), int(found["band_bps"]))
    stored = sorted(
        (t.buy_order_id, t.sell_order_id, t.price, t.quantity, t.taker_side) for t in trades
    )
    assert stored == replayed.trades
    outcomes = {
        o.id: Outcome(o.status, o.cancel_reason, o.filled_quantity, o.filled_amount) for o in orders
    }
    assert outcomes == replayed.outcomes

    expected = book_json(m, replayed.book)
    assert await book_from_database(session, m) == expected
    for base_url in base_urls:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
            r = await c.get(f"/v1/markets/{m.code}/book", params={"depth": 100})
        assert r.status_code == 200, r.text
        assert r.json() == {
            **expected,
            "bids": expected["bids"][:100],
            "asks": expected["asks"][:100],
        }
    await assert_market_clean(session)
    return replayed
