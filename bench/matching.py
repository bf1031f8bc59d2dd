"""bench/matching: the pure order book against plain ``SortedDict`` insert/remove.

    .venv/bin/python -m bench.matching            # 1,000,000 operations (well under a minute)
    .venv/bin/python -m bench.matching --quick    # 20,000 operations, a second or two
    .venv/bin/python -m bench.matching --profile  # also cProfile the timed run (to stderr)

In memory only, one core, no database. Phases:

- generate (not timed): a seeded random stream of ``--operations`` commands, built against a
  live book so cancels name orders that are really resting: 70 % passive limit adds (GTC,
  1–100 t, within ¥1–100 of a ¥3,000 mid, near prices likelier), 20 % cancels of a random
  resting order, 10 % crossing orders (70 % IOC limits ¥1–20 through the mid, 25 % market
  orders with a ±¥30 band, 5 % FOK), 1–500 t; 50 owners, so self-trade prevention fires
  now and then. Every event of this run is checked (below).
- book: the same commands through a fresh ``OrderBook``, timed as a whole (no per-operation
  timer). Figure: operations per second.
- latency: the first 200,000 commands again through a fresh book with a timer around each
  (slower than the timed run; p50/p99/p99.9 in µs).
- baseline: the same count of operations on one plain ``sortedcontainers.SortedDict``
  (70 % inserts of price-time keys, 30 % deletes of a random present key, pre-generated),
  timed the same way. This is the floor a book built on one sorted map pays.

``ratio`` = book ops/s ÷ baseline ops/s = baseline time ÷ book time for the same count;
higher is better; the goal (docs/performance.md) is ≥ 300,000 ops/s and ≤ 3× the baseline's
time, i.e. ratio ≥ 0.333. Timings are not pass/fail (machines here are shared and noisy).

Checks (any failure: exit code 1 and no figure): no trade crosses the taker's limit or the
maker's resting price, a buyer never pays above its limit, no self-trade, the book is never
crossed (after every command of the generate run), every order's quantity is conserved
(filled + open + cancelled = original), level totals equal the open orders, the timed run
reproduces the generate run exactly (same event count, same resting orders) and the book
rebuilt from its resting orders is identical.

The last line of stdout is one JSON object::

    {"name": "matching", "value": <ops/s>, "unit": "ops/s", "baseline": <SortedDict ops/s>,
     "ratio": <value / baseline>, ...}
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sortedcontainers import SortedDict  # type: ignore[import-untyped]  # no stubs

from app.market.matching import (
    Accepted,
    Cancelled,
    Done,
    Order,
    OrderBook,
    OrderType,
    Rested,
    Side,
    TimeInForce,
    Trade,
)
from bench._common import finish, format_table, percentile, ratio

GOAL_OPS = 300_000
GOAL_RATIO = 1 / 3  # book time at most 3× the baseline's
MID = 3_000  # JPY per t-CO2e
BAND = 30
OWNERS = 50
LATENCY_OPS = 200_000

SUBMIT, CANCEL = 0, 1
Op = tuple[int, Any]  # (SUBMIT, Order) or (CANCEL, order id)


@dataclass(slots=True)
class Workload:
    ops: list[Op]
    mix: dict[str, int]
    events: int  # events the generate run produced
    trades: int
    traded: int  # tonnes
    resting: list[Order]
    failures: list[str] = field(default_factory=list)


# --- generate and check ------------------------------------------------------------------


def generate(n: int, seed: int) -> Workload:
    """Build the command stream against a live book, checking every event on the way."""
    rng = random.Random(seed)
    book = OrderBook()
    ops: list[Op] = []
    live: list[int] = []  # resting order ids, for O(1) random choice
    where: dict[int, int] = {}  # order id -> index in live
    original = [0] * (n + 1)
    filled = [0] * (n + 1)
    cancelled = [0] * (n + 1)
    limit_of = [0] * (n + 1)  # taker limit (band for market orders)
    mix = dict.fromkeys(("limit_add", "cancel", "ioc", "market", "fok"), 0)
    failures: list[str] = []
    trades = traded = events_total = 0
    prices = {p: p for p in range(MID - 200, MID + 201)}  # share the int objects
    owners = [f"org-{i:02d}" for i in range(OWNERS)]

    def fail(message: str) -> None:
        if len(failures) < 10:
            failures.append(message)

    def drop(oid: int) -> None:
        i = where.pop(oid)
        last = live.pop()
        if last != oid:
            live[i] = last
            where[last] = i

    for seq in range(1, n + 1):
        r = rng.random()
        if r < 0.2 and live:
            oid = live[rng.randrange(len(live))]
            ops.append((CANCEL, oid))
            mix["cancel"] += 1
            events = book.cancel(oid)
        else:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            sign = 1 if side is Side.BUY else -1
            owner = owners[rng.randrange(OWNERS)]
            if r < 0.9 or not live:  # passive add
                offset = min(100, 1 + int(rng.expovariate(1 / 8)))
                price = prices[MID - sign * offset]
                order = Order(seq, side, rng.randint(1, 100), price, owner, seq)
                mix["limit_add"] += 1
            else:  # crossing
                qty = rng.randint(1, 500)
                kind = rng.random()
                if kind < 0.7:
                    price = prices[MID + sign * rng.randint(1, 20)]
                    order = Order(seq, side, qty, price, owner, seq, time_in_force=TimeInForce.IOC)
                    mix["ioc"] += 1
                elif kind < 0.95:
                    order = Order(seq, side, qty, None, owner, seq, OrderType.MARKET)
                    mix["market"] += 1
                else:
                    price = prices[MID + sign * rng.randint(1, 20)]
                    order = Order(seq, side, qty, price, owner, seq, time_in_force=TimeInForce.FOK)
                    mix["fok"] += 1
            ops.append((SUBMIT, order))
            original[seq] = order.quantity
            limit_of[seq] = order.price if order.price is not None else MID + sign * BAND
            events = book.submit(order, band_low=MID - BAND, band_high=MID + BAND)
        events_total += len(events)
        for e in events:
            if type(e) is Trade:
                trades += 1
                traded += e.quantity
                maker, taker = cast(int, e.maker_id), cast(int, e.taker_id)  # ids are ints here
                filled[maker] += e.quantity
                filled[taker] += e.quantity
                if e.maker_owner == e.taker_owner:
                    fail(f"self-trade: {e}")
                if e.price != limit_of[maker]:
                    fail(f"trade not at the maker's price: {e}")
                buyer_pays_too_much = e.taker_side is Side.BUY and e.price > limit_of[taker]
                seller_gets_too_little = e.taker_side is Side.SELL and e.price < limit_of[taker]
                if buyer_pays_too_much or seller_gets_too_little:
                    fail(f"trade crosses the taker's limit {limit_of[taker]}: {e}")
            elif type(e) is Rested:
                where[cast(int, e.order_id)] = len(live)
                live.append(cast(int, e.order_id))
            elif type(e) is Done:
                oid = cast(int, e.order_id)
                if oid in where:
                    drop(oid)
                if e.filled != original[oid]:
                    fail(f"done with {e.filled} of {original[oid]}: {e}")
            elif type(e) is Cancelled:
                oid = cast(int, e.order_id)
                cancelled[oid] += e.remaining
                if oid in where:
                    drop(oid)
            elif type(e) is not Accepted:
                fail(f"unexpected event {e}")
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            fail(f"crossed book after command {seq}: bid {bid} >= ask {ask}")

    # Conservation, per order.
    for oid in range(1, n + 1):
        if original[oid]:
            open_qty = book.open_quantity(oid) or 0
            if filled[oid] + cancelled[oid] + open_qty != original[oid]:
                fail(
                    f"order {oid}: filled {filled[oid]} + cancelled {cancelled[oid]}"
                    f" + open {open_qty} != {original[oid]}"
                )
    if set(live) != {o.order_id for o in book.resting_orders()}:
        fail("the resting orders differ from what the events said")
    return Workload(ops, mix, events_total, trades, traded, book.resting_orders(), failures)


def check_book(book: OrderBook, workload: Workload, events: int) -> list[str]:
    """The timed book must equal the generate run's, and be consistent."""
    failures: list[str] = []
    resting = book.resting_orders()
    if events != workload.events:
        failures.append(
            f"the timed run produced {events} events, the generate run {workload.events}"
        )
    if resting != workload.resting:
        failures.append("the timed run's resting orders differ from the generate run's")
    bid, ask = book.best_bid(), book.best_ask()
    if bid is not None and ask is not None and bid >= ask:
        failures.append(f"crossed book at the end: bid {bid} >= ask {ask}")
    snap = book.snapshot()
    if sum(lv.quantity for lv in (*snap.bids, *snap.asks)) != sum(o.quantity for o in resting):
        failures.append("level totals differ from the open quantities")
    if sum(lv.orders for lv in (*snap.bids, *snap.asks)) != len(resting):
        failures.append("level order counts differ from the resting orders")
    restored = OrderBook.restore(resting)
    if restored.snapshot() != snap or restored.resting_orders() != resting:
        failures.append("the book rebuilt from its resting orders differs")
    return failures


# --- timed runs --------------------------------------------------------------------------


def run_book(ops: Sequence[Op]) -> tuple[OrderBook, int, float]:
    book = OrderBook()
    submit, cancel = book.submit, book.cancel
    low, high = MID - BAND, MID + BAND
    events = 0
    gc.collect()
    gc.disable()  # as a latency-sensitive engine would run; measured the same for the baseline
    try:
        started = time.perf_counter()
        for kind, arg in ops:
            if kind == SUBMIT:
                events += len(submit(arg, band_low=low, band_high=high))
            else:
                events += len(cancel(arg))
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    return book, events, elapsed


def run_latency(ops: Sequence[Op]) -> list[float]:
    book = OrderBook()
    submit, cancel = book.submit, book.cancel
    low, high = MID - BAND, MID + BAND
    clock = time.perf_counter_ns
    samples: list[float] = []
    gc.collect()
    gc.disable()
    try:
        for kind, arg in ops:
            started = clock()
            if kind == SUBMIT:
                submit(arg, band_low=low, band_high=high)
            else:
                cancel(arg)
            samples.append((clock() - started) / 1000)
    finally:
        gc.enable()
    return samples


def baseline_ops(n: int, seed: int) -> list[tuple[bool, int]]:
    """70 % inserts of price-time keys, 30 % deletes of a random present key."""
    rng = random.Random(seed + 1)
    present: list[int] = []
    ops: list[tuple[bool, int]] = []
    for seq in range(1, n + 1):
        if rng.random() < 0.3 and present:
            i = rng.randrange(len(present))
            present[i], present[-1] = present[-1], present[i]
            ops.append((False, present.pop()))
        else:
            price = MID + rng.randint(-100, 100)
            key = (price << 32) | seq
            present.append(key)
            ops.append((True, key))
    return ops


def run_baseline(ops: Sequence[tuple[bool, int]]) -> tuple[int, float]:
    sd: SortedDict[int, int] = SortedDict()
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for insert, key in ops:
            if insert:
                sd[key] = key
            else:
                del sd[key]
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    return len(sd), elapsed


# --- report ------------------------------------------------------------------------------


def report(
    n: int,
    workload: Workload,
    book: OrderBook,
    book_time: float,
    latencies: list[float],
    base_left: int,
    base_time: float,
) -> tuple[str, dict[str, Any]]:
    value = n / book_time
    base = n / base_time
    r = ratio(value, base)
    snap = book.snapshot()
    lat = {q: round(percentile(latencies, q), 2) for q in (50, 99, 99.9)} if latencies else {}
    rows = [
        ["OrderBook (mixed)", n, book_time, value, r, f">= {GOAL_OPS:,} ops/s"],
        ["SortedDict insert/remove", n, base_time, base, 1.0, "baseline"],
    ]
    table = format_table(["run", "operations", "seconds", "ops/s", "ratio", "goal"], rows)
    mix = ", ".join(f"{k} {v:,}" for k, v in workload.mix.items())
    detail = [
        f"mix: {mix}",
        f"trades: {workload.trades:,} ({workload.traded:,} t); events: {workload.events:,}",
        f"book at the end: {len(workload.resting):,} resting orders, "
        f"{len(snap.bids)} bid / {len(snap.asks)} ask levels; SortedDict keys: {base_left:,}",
        f"latency per operation (first {len(latencies):,}, timer around each): "
        + ", ".join(f"p{q} {v} µs" for q, v in lat.items()),
        f"ratio = book ops/s / SortedDict ops/s (= SortedDict time / book time); "
        f"goal >= {GOAL_RATIO:.3f}: {'met' if r >= GOAL_RATIO else 'NOT met'}; "
        f">= {GOAL_OPS:,} ops/s: {'met' if value >= GOAL_OPS else 'NOT met'}",
    ]
    text = "bench/matching\n\n" + table + "\n\n" + "\n".join(detail)
    result = {
        "name": "matching",
        "value": round(value),
        "unit": "ops/s",
        "baseline": round(base),
        "ratio": r,
        "ratio_definition": "value / baseline = baseline time / book time (higher is better)",
        "goal": {"ops_per_s": GOAL_OPS, "ratio_min": round(GOAL_RATIO, 3)},
        "operations": n,
        "seconds": round(book_time, 3),
        "baseline_seconds": round(base_time, 3),
        "mix": workload.mix,
        "trades": workload.trades,
        "resting": len(workload.resting),
        "latency_us": {f"p{q}": v for q, v in lat.items()},
        "python": platform.python_version(),
    }
    return text, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.matching", description=__doc__.split("\n")[0])
    parser.add_argument("--operations", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 operations")
    parser.add_argument("--seed", type=int, default=20231011)
    parser.add_argument("--profile", action="store_true", help="cProfile the book run (stderr)")
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else args.operations
    if n < 10:
        parser.error("--operations must be at least 10")

    print(f"generating {n:,} operations ...", file=sys.stderr)
    workload = generate(n, args.seed)
    base_ops = baseline_ops(n, args.seed)

    print("timing ...", file=sys.stderr)
    base_left, base_time = run_baseline(base_ops)
    book, events, book_time = run_book(workload.ops)
    latencies = run_latency(workload.ops[:LATENCY_OPS])
    failures = [*workload.failures, *check_book(book, workload, events)]

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_book(workload.ops)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)

    text, result = report(n, workload, book, book_time, latencies, base_left, base_time)
    return finish(text, result, failures)


if __name__ == "__main__":
    sys.exit(main())
