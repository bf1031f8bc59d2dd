"""bench/orders: limit orders placed over HTTP on one product's book, beside GET /health.

Tanso runs under uvicorn with 2 workers on a throwaway durable embedded PostgreSQL; 32
keep-alive clients (16 buying, 16 selling, each its own organisation) place limit orders of
one credit at one price for a fixed time, so every order either rests or fills against the
oldest resting order of the other side: the book stays shallow and about half the orders
trade (hold, match, settle cash and serials, release, publish). Every 201 is sent after the
order's transaction committed. An unmeasured warm-up (a fifth of the phase's length) comes
first, so that the figure does not include each pooled connection preparing its statements.
The baseline is ``GET /health`` through the same server and clients in the same run (the
framework's ceiling). Goals: >= 1,000 orders/s, p99 < 50 ms, ratio to /health >= 0.25.

Afterwards it checks what the load could have broken: every acknowledged order is stored and
nothing else is, no order filled beyond its quantity, fills equal on both sides and equal to
the trades, no trade above the buy's limit or below the sell's, closed orders' holds released
and open orders' holds exactly what they may still need, the book uncrossed, and the ledger
and registry checkers find nothing.

    .venv/bin/python -m bench.orders            # full size, about a minute
    .venv/bin/python -m bench.orders --quick    # a few seconds (--clients N: fewer)
    .venv/bin/python -m bench.orders --groups   # and how the product lock was held
    .venv/bin/python -m bench.orders --depth 2000   # with 2,000 orders resting all along
    .venv/bin/python -m bench.orders --spread 5     # orders over ±5 ticks, not at one price

``--groups`` runs the server with ``app.market.group`` at DEBUG and reads its
``market.group_placed`` lines: how many groups each worker placed and their sizes, the share
of the orders phase the lock was held (from each lock call's answer to its commit's), the
hold fitted as F + c·n for a group of n orders, and how many resting orders each group read
(the part of the book its orders can reach and fill: ``app.market.reach``) and how many it
counted without reading them.

Each phase's connections are spread evenly over the two workers, and in the order phases each
worker serves half the buyers and half the sellers (``bench._http.open_connections``): left
to the kernel, one worker often accepted all 32, and the phase measured one core (``/health``
at half its rate, the orders one worker's groups).

Every run also reads the CPU time the server's workers, PostgreSQL and this process's clients
used in each measured phase (``bench._common.CpuMeter``): what a ``/health`` request and an
order cost the machine, how many cores were busy (and each worker's share), and the ceiling
the orders' cost sets: the orders per second all the cores could carry at that cost, beside
this run's ``/health``. A ratio goal above that ceiling needs a cheaper order, not a better
use of the cores.

``--spread K`` prices each order within ±K ticks of the price (a fixed sequence), so that a
group's orders ask for several levels, as in a market, and an order arriving while the lock
is awaited may reach beyond what its group's lock call read (it then waits for the next
group). ``--depth N`` rests N orders before the phases, half buys below the run's prices and
half sells above them, which the run's orders never reach: what a deep book costs every
group, beside the default run's shallow one (its own orders only, which rest or fill at the
one price).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import httpx
from sqlalchemy import text

from app.config import get_settings
from app.db.session import create_engine, create_sessionmaker
from app.ledger.verify import run_checks
from app.offsets.verify import run_registry_checks
from bench._common import (
    cpu_lines,
    cpu_summary,
    finish,
    format_table,
    ratio,
    run_async,
    setup_logging,
    throwaway_server,
)
from bench._http import (
    Connection,
    Served,
    check,
    cpu_meter,
    http_phase,
    registry_headers,
    served,
)

CLIENTS = 32
PRICE = 1_000  # JPY per t-CO2e: every order at this price, so each one crosses or rests
# Enough for any run on this machine kind: ~3,000 orders/s for 15 s is ~1,500 per client.
CREDITS_PER_SELLER = 20_000
CASH_PER_BUYER = CREDITS_PER_SELLER * PRICE
PRODUCT = "JCR-BENCH-ORDERS"
# ``--depth``: the first seller's credits and the first buyer's cash cover this many resting
# orders besides the run's own.
MAX_DEPTH = 10_000
# ``--spread``: within the price band, and cash enough for buys a little above the price.
MAX_SPREAD = 20


async def _member(c: httpx.AsyncClient, admin: dict[str, str], name: str) -> tuple[str, str]:
    """A company with a trading key: (organisation id, key)."""
    org = check(
        await c.post("/v1/organizations", json={"name": name, "kind": "company"}, headers=admin)
    )
    key = check(
        await c.post(
            f"/v1/organizations/{org['id']}/api-keys",
            json={"name": "bench", "scopes": ["trade", "read", "transfer"]},
            headers=admin,
        )
    )["key"]
    return org["id"], key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def prepare(server: Served, clients: int) -> list[dict[str, str]]:
    """One organisation per client, funded for the whole run; returns each client's headers
    (even workers buy, odd ones sell)."""
    admin = server.admin
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        registry = await registry_headers(c, admin)
        members = [await _member(c, admin, f"Trader {i}") for i in range(clients)]
        sellers = members[1::2]
        project = check(
            await c.post(
                "/v1/projects",
                json={
                    "name": "Forest",
                    "owner_organization_id": sellers[0][0],
                    "methodology": "FO-001",
                    "category": "forest",
                    "prefecture": "03",
                },
                headers=registry,
            )
        )
        batch = check(
            await c.post(
                "/v1/issuances",
                json={
                    "project_id": project["id"],
                    "holder_organization_id": sellers[0][0],
                    "quantity": CREDITS_PER_SELLER * len(sellers),
                    "monitoring_period_start": "2024-04-01",
                    "monitoring_period_end": "2025-03-31",
                },
                headers=registry,
            )
        )
        for org_id, _ in sellers[1:]:
            check(
                await c.post(
                    "/v1/credit-transfers",
                    json={
                        "to_organization_id": org_id,
                        "batch_id": batch["id"],
                        "quantity": CREDITS_PER_SELLER,
                    },
                    headers=_bearer(sellers[0][1]),
                )
            )
        for i, (org_id, _) in enumerate(members[0::2]):
            check(
                await c.post(
                    "/v1/deposits",
                    json={
                        "organization_id": org_id,
                        "amount": CASH_PER_BUYER,
                        "reference": f"d{i}",
                    },
                    headers=admin,
                )
            )
        check(
            await c.post(
                "/v1/products",
                json={
                    "code": PRODUCT,
                    "name": "J-Credit forest, benchmark",
                    "batch_id": batch["id"],
                    "reference_price": PRICE,
                },
                headers=admin,
            )
        )
    return [_bearer(key) for _, key in members]


def _offset(worker: int, i: int, spread: int) -> int:
    """The ``i``-th order's price of a client, in ticks from ``PRICE``: 0, or spread evenly
    over ±``spread`` (a fixed sequence, the same in every run)."""
    return (worker * 7 + i * 13) % (2 * spread + 1) - spread


async def rest_depth(
    server: Served, keys: list[dict[str, str]], depth: int, spread: int = 0
) -> None:
    """``depth`` orders that rest through the whole run, half buys below ``PRICE`` (by the
    first buyer) and half sells above it (by the first seller), on 50 price levels a side
    beyond the run's own prices: the run's orders never reach them, so the book every group
    reads is that deep."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:

        async def rest(i: int) -> None:
            side, away = ("buy", -1) if i % 2 == 0 else ("sell", 1)
            body = {
                "product": PRODUCT,
                "side": side,
                "price": PRICE + away * (spread + 1 + i // 2 % 50),
                "quantity": 1,
            }
            check(await c.post("/v1/orders", json=body, headers=keys[i % 2]))

        for start in range(0, depth, 16):
            await asyncio.gather(*(rest(i) for i in range(start, min(start + 16, depth))))


# Each query returns the ids of what breaks its rule (none when all is well).
INVARIANTS = {
    "fills_add_up": """
        SELECT o.id FROM market_orders o
          LEFT JOIN market_trades t ON o.id IN (t.buy_order_id, t.sell_order_id)
         GROUP BY o.id
        HAVING o.filled_quantity <> coalesce(sum(t.quantity), 0)
            OR o.filled_amount <> coalesce(sum(t.price * t.quantity), 0)
            OR o.filled_quantity > o.quantity
    """,
    "no_fill_beyond_limit": """
        SELECT t.id FROM market_trades t
          JOIN market_orders b ON b.id = t.buy_order_id
          JOIN market_orders s ON s.id = t.sell_order_id
         WHERE t.price > b.price OR t.price < s.price
    """,
    # An order's holds are found by their reference (``order:<id>``), whatever their number.
    "closed_order_holds_released": """
        SELECT o.id FROM market_orders o
          JOIN ledger_holds h ON h.organization_id = o.organization_id
                             AND h.reference = 'order:' || o.id
         WHERE o.status IN ('filled', 'cancelled', 'expired')
           AND (h.status <> 'closed' OR h.remaining <> 0)
    """,
    "open_order_holds_match": """
        SELECT o.id FROM market_orders o
          LEFT JOIN ledger_holds h ON h.organization_id = o.organization_id
                                  AND h.reference = 'order:' || o.id
         WHERE o.status IN ('open', 'partially_filled')
         GROUP BY o.id
        HAVING coalesce(sum(h.remaining), 0) <> CASE WHEN o.side = 'buy'
                                   THEN o.price * (o.quantity - o.filled_quantity)
                                   ELSE o.quantity - o.filled_quantity END
    """,
    "book_uncrossed": """
        SELECT 1 FROM market_orders b, market_orders s
         WHERE b.side = 'buy' AND s.side = 'sell' AND b.product_id = s.product_id
           AND b.status IN ('open', 'partially_filled')
           AND s.status IN ('open', 'partially_filled') AND b.price >= s.price
         LIMIT 1
    """,
}


async def invariants(url: str, acknowledged: int) -> tuple[list[str], dict[str, int]]:
    """The failures, and what the database holds (orders, trades, credits traded)."""
    engine = create_engine(get_settings(), url)
    failures: list[str] = []
    try:
        async with create_sessionmaker(engine)() as session:
            results = await run_checks(session) + await run_registry_checks(session)
            failures += [f"{r.name}: {r.violations[:3]}" for r in results if not r.ok]
            for name, sql in INVARIANTS.items():
                broken = (await session.execute(text(sql))).scalars().all()
                if broken:
                    failures.append(f"{name}: {list(broken)[:3]}")
            row = (
                await session.execute(
                    text(
                        "SELECT (SELECT count(*) FROM market_orders),"
                        " (SELECT count(*) FROM market_trades),"
                        " (SELECT coalesce(sum(quantity), 0) FROM market_trades),"
                        " (SELECT coalesce(sum(filled_quantity), 0) FROM market_orders"
                        "   WHERE side = 'buy'),"
                        " (SELECT coalesce(sum(filled_quantity), 0) FROM market_orders"
                        "   WHERE side = 'sell')"
                    )
                )
            ).one()
            orders, trades, traded, bought, sold = (int(v) for v in row)
            if orders != acknowledged:
                failures.append(f"{acknowledged} orders acknowledged, {orders} stored")
            if not bought == sold == traded:
                failures.append(f"fills: bought {bought}, sold {sold}, traded {traded}")
    finally:
        await engine.dispose()
    return failures, {"orders": orders, "trades": trades, "traded": traded}


def group_summary(lines: Iterable[str], start: datetime, end: datetime) -> dict[str, Any]:
    """The groups the server logged (``market.group_placed``) between ``start`` and ``end``:
    their number and orders, each worker's groups and mean size, the share of the time the
    lock was held (lock answer to commit answer), and the hold fitted as F + c·n."""
    groups: list[dict[str, Any]] = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # not one of the app's JSON lines
        if not isinstance(event, dict) or event.get("event") != "market.group_placed":
            continue
        if start <= datetime.fromisoformat(event["timestamp"]) < end:
            groups.append(event)
    if not groups:
        return {"groups": 0}
    by_worker: dict[int, list[int]] = {}
    for group in groups:
        by_worker.setdefault(group["worker"], []).append(group["orders"])
    sizes = [float(g["orders"]) for g in groups]
    held = [float(g["held_ms"]) for g in groups]
    summary: dict[str, Any] = {
        "groups": len(groups),
        "orders": int(sum(sizes)),
        "workers": [
            {"groups": len(n), "orders": sum(n), "mean_size": round(sum(n) / len(n), 1)}
            for n in sorted(by_worker.values(), key=sum, reverse=True)
        ],
        "lock_held_share": round(sum(held) / ((end - start).total_seconds() * 1e3), 3),
        "held_ms_per_order": round(sum(held) / sum(sizes), 3),
    }
    books = [int(g["book"]) for g in groups if "book" in g]
    if books:  # the resting orders each group's lock call read
        summary["book"] = {"mean": round(statistics.fmean(books), 1), "max": max(books)}
    hidden = [int(g["hidden"]) for g in groups if "hidden" in g]
    if hidden:  # and those it counted without reading them (``app.market.reach``)
        summary["hidden"] = {"mean": round(statistics.fmean(hidden), 1), "max": max(hidden)}
    if len(set(sizes)) > 1:
        slope, intercept = statistics.linear_regression(sizes, held)
        summary["fit_ms"] = {"F": round(intercept, 2), "c": round(slope, 3)}
    return summary


def _group_lines(summary: dict[str, Any]) -> str:
    if not summary["groups"]:
        return "\n\ngroups: none logged in the orders phase"
    workers = "; ".join(
        f"{w['groups']:,} of {w['mean_size']} orders on average" for w in summary["workers"]
    )
    fit = summary.get("fit_ms")
    book = summary.get("book")
    hidden = summary.get("hidden")
    return (
        f"\n\ngroups: {summary['groups']:,} (by worker: {workers});"
        f" lock held {summary['lock_held_share']:.0%} of the phase,"
        f" {summary['held_ms_per_order']} ms per order"
        + (f"; hold ≈ {fit['F']} + {fit['c']}·n ms" if fit else "")
        + (f"; book read {book['mean']} orders on average, {book['max']} at most" if book else "")
        + (
            f", counted without reading {hidden['mean']} on average, {hidden['max']} at most"
            if hidden
            else ""
        )
    )


def _side_of(client: int) -> str:
    """Half the clients buy and half sell (each its own organisation)."""
    return "sell" if client % 2 else "buy"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, not a minute")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument(
        "--clients", type=int, default=CLIENTS, help="an even number (half buy, half sell)"
    )
    parser.add_argument(
        "--groups", action="store_true", help="report how the product lock was held (module doc)"
    )
    parser.add_argument(
        "--spread",
        type=int,
        default=0,
        help="orders priced over ±N ticks around the price, not at it (module doc); 0 by default",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=0,
        help="orders resting away from the price all run long (module doc); 0 by default",
    )
    args = parser.parse_args(argv)
    if args.clients < 2 or args.clients % 2:
        parser.error("--clients must be an even number >= 2")
    if not 0 <= args.depth <= MAX_DEPTH:
        parser.error(f"--depth must be between 0 and {MAX_DEPTH}")
    if not 0 <= args.spread <= MAX_SPREAD:
        parser.error(f"--spread must be between 0 and {MAX_SPREAD}")
    setup_logging()
    with tempfile.TemporaryFile() as log:
        return _run(args, log if args.groups else None)


def _run(args: argparse.Namespace, debug_log: IO[bytes] | None) -> int:
    clients = args.clients
    seconds = args.seconds or (1.5 if args.quick else 15.0)
    window: list[datetime] = []  # the orders phase's start and end
    with throwaway_server(quick=args.quick) as pg:
        url = pg.migrated_database("orders")
        with served(url, debug=["app.market.group"] if debug_log else [], log=debug_log) as server:
            meter = cpu_meter(server, pg)

            async def run() -> dict[str, Any]:
                keys = await prepare(server, clients)
                await rest_depth(server, keys, args.depth, args.spread)

                async def health(c: Connection, worker: int, i: int) -> tuple[int, bytes]:
                    return await c.request("GET", "/health")

                async def place(c: Connection, worker: int, i: int) -> tuple[int, bytes]:
                    body = {
                        "product": PRODUCT,
                        "side": _side_of(worker),
                        "price": PRICE + _offset(worker, i, args.spread),
                        "quantity": 1,
                    }
                    return await c.request(
                        "POST", "/v1/orders", json.dumps(body).encode(), keys[worker]
                    )

                baseline, _ = await http_phase(
                    "GET /health", server, clients, seconds, health, meter=meter
                )
                # Unmeasured: each pooled connection prepares its statements on first use.
                warm, warm_statuses = await http_phase(
                    "warm-up", server, clients, seconds / 5, place, kind=_side_of
                )
                pg.checkpoint()
                window.append(datetime.now(UTC))
                orders, statuses = await http_phase(
                    "limit orders", server, clients, seconds, place, kind=_side_of, meter=meter
                )
                window.append(datetime.now(UTC))
                acknowledged = args.depth + warm_statuses.get(201, 0) + statuses.get(201, 0)
                return {
                    "baseline": baseline,
                    "orders": orders,
                    "errors": warm.errors + orders.errors,
                    "acknowledged": acknowledged,
                }

            out = run_async(run)
        failures = [f"order phase errors: {out['errors']}"] if out["errors"] else []
        found, stored = run_async(lambda: invariants(url, out["acknowledged"]))
        failures += found
        settings = pg.settings()

    baseline, orders = out["baseline"], out["orders"]
    report = format_table(
        ["phase", "clients", "requests", "per second", "p50 ms", "p99 ms", "ratio to /health"],
        [
            [baseline.name, clients, baseline.operations, baseline.rate, baseline.latency_ms(50), baseline.latency_ms(99), 1.0],
            [orders.name, clients, orders.operations, orders.rate, orders.latency_ms(50), orders.latency_ms(99), ratio(orders.rate, baseline.rate)],
        ],
    )  # fmt: skip
    report += (
        f"\n\nstored: {stored['orders']:,} orders, {stored['trades']:,} trades"
        f" ({stored['traded']:,} credits)"
    )
    used = cpu_summary(baseline, orders, "orders")
    report += cpu_lines(used, "orders", "an order")
    groups: dict[str, Any] | None = None
    if debug_log is not None:
        debug_log.seek(0)
        lines = debug_log.read().decode("utf-8", "replace").splitlines()
        groups = group_summary(lines, window[0], window[1])
        report += _group_lines(groups)
    return finish(
        report,
        {
            "name": "orders",
            "value": round(orders.rate, 1),
            "unit": "orders/s",
            "baseline": round(baseline.rate, 1),
            "ratio": ratio(orders.rate, baseline.rate),
            "p50_ms": orders.latency_ms(50),
            "p99_ms": orders.latency_ms(99),
            "trades": stored["trades"],
            "clients": clients,
            "depth": args.depth,
            "spread": args.spread,
            "goal": ">= 1000 orders/s, p99 < 50 ms, ratio >= 0.25",
            "server": settings,
            "cpu": used,
            **({"groups": groups} if groups is not None else {}),
        },
        failures,
    )


if __name__ == "__main__":
    raise SystemExit(main())
