"""bench/ledger: the service's own posting function against pgbench TPC-B on the same server.

    .venv/bin/python -m bench.ledger            # full size (about a minute; under two)
    .venv/bin/python -m bench.ledger --quick    # tiny size, a few seconds

One throwaway embedded PostgreSQL with production durability (fsync and synchronous_commit
on); its ``postgres`` database is migrated to head and also holds pgbench's tables. Phases:

- baseline: ``pgbench -M prepared -c 8 -j 2 -T <s>`` (TPC-B, scale 10), run before the ledger
  phases and again after them; the baseline is the mean of the runs.
- single: ``app.ledger.service.post_entry`` with one transfer between two random accounts of
  ``--accounts`` (10,000) funded participant ``available`` JPY accounts, from 8 concurrent
  workers, each call in its own session (a pooled connection, as a request gets) and committed.
- hot: the same among only 10 of those accounts.
- batched: ``post_entries`` with 100 transfer entries per call (one transaction), 2 workers.

Each ledger phase is preceded by a short warm-up (connections open, statements prepared) and a
CHECKPOINT. After the phases: ``app.ledger.verify.run_checks`` (every check must pass),
conservation per asset, and the number of entries and postings per phase must equal what the
workers saw committed. Any error in a phase or any broken check fails the run (exit code 1).

The last line of stdout is one JSON object::

    {"name": "ledger", "value": <single entries/s>, "unit": "entries/s", "baseline": <tps>,
     "ratio": ..., "hot": {...}, "batched": {...}, ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import app.db.registry  # noqa: F401  (every model, and every domain's registered checks)
from app.accounts.models import Organization, OrganizationKind
from app.config import Settings
from app.core.ids import new_id
from app.db.session import SessionMaker, create_engine, create_sessionmaker
from app.ledger.models import Account, AccountKind
from app.ledger.posting import transfer
from app.ledger.service import CASH, EntrySpec, account_id, post_entries, post_entry
from app.ledger.verify import run_checks
from bench._common import (
    BenchFailure,
    Operation,
    PgbenchResult,
    PhaseResult,
    Server,
    finish,
    format_table,
    pgbench_init,
    pgbench_run,
    ratio,
    run_async,
    run_phase,
    setup_logging,
    throwaway_server,
)

GOALS = {"single": 1.2, "hot": 0.7, "batched": 5.0}
KIND = {"single": "bench_single", "hot": "bench_hot", "batched": "bench_batched"}
FUND_KIND = "bench_fund"
FUNDING = 10**9  # JPY per account: no transfer in the run can come near it
MAX_TRANSFER = 1_000
SMOKE_PGBENCH_TRANSACTIONS = 25  # per client, when a phase is shorter than a second


@dataclass(frozen=True, slots=True)
class Config:
    accounts: int = 10_000
    hot_accounts: int = 10
    workers: int = 8
    batch_workers: int = 2
    batch_size: int = 100
    seconds: float = 10.0
    warmup: float = 1.0
    pgbench_scale: int = 10
    pgbench_threads: int = 2
    baseline_runs: int = 2  # before and after the ledger phases
    seed: int = 20261128


QUICK = Config(accounts=200, seconds=1.0, warmup=0.2, pgbench_scale=1, baseline_runs=1)


# --- set-up ------------------------------------------------------------------------------


async def create_funded_accounts(sessionmaker: SessionMaker, count: int) -> list[uuid.UUID]:
    """``count`` organisations with an ``available`` JPY account each, funded with ``FUNDING``
    from the external account by one entry each (posted by the service, 500 per call).

    Organisations and accounts are inserted in bulk (the set-up is not what is measured); one
    is then looked up through ``account_id`` to prove the service finds the rows it would have
    created itself."""
    org_ids = [new_id() for _ in range(count)]
    account_ids = [new_id() for _ in range(count)]
    async with sessionmaker() as session:
        external = await account_id(session, None, CASH, AccountKind.external)
        for start in range(0, count, 1_000):
            chunk = range(start, min(start + 1_000, count))
            await session.execute(
                insert(Organization),
                [
                    {"id": org_ids[i], "name": f"bench org {i}", "kind": OrganizationKind.company}
                    for i in chunk
                ],
            )
            await session.execute(
                insert(Account),
                [
                    {
                        "id": account_ids[i],
                        "organization_id": org_ids[i],
                        "asset": CASH,
                        "kind": AccountKind.available,
                        "is_non_negative": True,
                    }
                    for i in chunk
                ],
            )
        for start in range(0, count, 500):
            await post_entries(
                session,
                [
                    EntrySpec(kind=FUND_KIND, legs=transfer(external, acct, CASH, FUNDING))
                    for acct in account_ids[start : start + 500]
                ],
            )
        await session.commit()
        found = await account_id(session, org_ids[0], CASH, AccountKind.available)
        if found != account_ids[0]:
            raise BenchFailure("account_id does not find the benchmark's accounts")
        await session.commit()
    return account_ids


# --- the measured operations --------------------------------------------------------------


def single_transfer(
    sessionmaker: SessionMaker, accounts: Sequence[uuid.UUID], kind: str, rng: random.Random
) -> Operation:
    """One transfer between two random accounts, in its own session, committed."""

    async def operation(worker: int) -> int:
        source, destination = rng.sample(accounts, 2)
        entry = EntrySpec(
            kind=kind,
            legs=transfer(source, destination, CASH, rng.randint(1, MAX_TRANSFER)),
        )
        async with sessionmaker() as session:
            await post_entry(session, entry)
            await session.commit()
        return 1

    return operation


def batched_transfers(
    sessionmaker: SessionMaker, accounts: Sequence[uuid.UUID], size: int, rng: random.Random
) -> Operation:
    """``size`` transfer entries between random accounts, one call, one transaction."""

    async def operation(worker: int) -> int:
        entries = []
        for _ in range(size):
            source, destination = rng.sample(accounts, 2)
            entries.append(
                EntrySpec(
                    kind=KIND["batched"],
                    legs=transfer(source, destination, CASH, rng.randint(1, MAX_TRANSFER)),
                )
            )
        async with sessionmaker() as session:
            written = await post_entries(session, entries)
            await session.commit()
        return len(written)

    return operation


@dataclass(slots=True)
class LedgerPhase:
    name: str
    measured: PhaseResult
    committed: int  # units committed including the warm-up, for the database cross-check


async def run_ledger_phase(
    server: Server,
    name: str,
    workers: int,
    config: Config,
    operation: Operation,
) -> LedgerPhase:
    warm = await run_phase(f"{name} warm-up", workers, config.warmup, operation)
    server.checkpoint()
    measured = await run_phase(name, workers, config.seconds, operation)
    measured.errors = warm.errors + measured.errors
    return LedgerPhase(name, measured, warm.units + measured.units)


# --- checks ------------------------------------------------------------------------------


async def check_invariants(
    sessionmaker: SessionMaker, phases: Sequence[LedgerPhase], funded: int
) -> tuple[list[str], list[str]]:
    """Returns (lines for the report, failures)."""
    lines: list[str] = []
    failures: list[str] = []
    async with sessionmaker() as session:
        for check in await run_checks(session):
            status = "ok" if check.ok else "FAILED"
            lines.append(f"{check.name:<26} {status:<7} ({check.checked:,} checked)")
            if not check.ok:
                failures.append(f"check {check.name}: {check.description}: {check.violations}")

        sums = (
            await session.execute(
                text("SELECT asset, sum(balance) FROM ledger_accounts GROUP BY asset")
            )
        ).all()
        totals = {str(asset): int(total) for asset, total in sums}
        bad = {asset: total for asset, total in totals.items() if total != 0}
        lines.append(f"{'conservation (Σ balance)':<26} {'FAILED' if bad else 'ok':<7} {totals}")
        if bad:
            failures.append(f"conservation: balances do not sum to zero: {bad}")

        expected = {KIND[p.name]: p.committed for p in phases} | {FUND_KIND: funded}
        counts = await _counts(session)
        for kind, want in expected.items():
            entries, postings = counts.get(kind, (0, 0))
            ok = entries == want and postings == 2 * want
            lines.append(
                f"{'committed = written':<26} {'ok' if ok else 'FAILED':<7}"
                f" {kind}: {entries:,} entries, {postings:,} postings, {want:,} committed"
            )
            if not ok:
                failures.append(
                    f"{kind}: the workers saw {want} committed, the database has {entries}"
                    f" entries and {postings} postings"
                )
        unexpected = sorted(set(counts) - set(expected))
        if unexpected:
            failures.append(f"entries of unexpected kinds: {unexpected}")
    return lines, failures


async def _counts(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """Entries and postings per entry kind."""
    rows = (
        await session.execute(
            text(
                "SELECT e.kind, count(DISTINCT e.id), count(p.id) FROM ledger_entries e"
                " LEFT JOIN ledger_postings p ON p.entry_id = e.id GROUP BY e.kind"
            )
        )
    ).all()
    return {str(kind): (int(entries), int(postings)) for kind, entries, postings in rows}


# --- the run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    settings: dict[str, str]
    baselines: list[PgbenchResult]
    phases: list[LedgerPhase]
    check_lines: list[str]
    failures: list[str]
    setup_seconds: dict[str, float]

    @property
    def baseline(self) -> float:
        return sum(b.tps for b in self.baselines) / len(self.baselines)


def _engine(url: str, pool: int) -> AsyncEngine:
    settings = Settings(_env_file=None)
    settings.database.pool_size = pool
    settings.database.max_overflow = 0
    settings.database.echo = False
    return create_engine(settings, url)


async def measure(server: Server, ledger_url: str, config: Config) -> Outcome:
    outcome = Outcome(server.settings(), [], [], [], [], {})
    rng = random.Random(config.seed)

    def baseline() -> None:
        server.checkpoint()
        outcome.baselines.append(
            pgbench_run(
                ledger_url,
                clients=config.workers,
                threads=config.pgbench_threads,
                seconds=round(config.seconds),
                # pgbench's -T takes whole seconds; a sub-second smoke run counts transactions.
                transactions=SMOKE_PGBENCH_TRANSACTIONS if config.seconds < 1 else None,
            )
        )

    engine = _engine(ledger_url, config.workers)
    try:
        sessionmaker = create_sessionmaker(engine)
        started = time.perf_counter()
        accounts = await create_funded_accounts(sessionmaker, config.accounts)
        server.psql("VACUUM ANALYZE ledger_accounts, ledger_entries, ledger_postings")
        outcome.setup_seconds["ledger accounts"] = time.perf_counter() - started

        baseline()
        hot = accounts[: config.hot_accounts]
        plan = [
            (
                "single",
                config.workers,
                single_transfer(sessionmaker, accounts, KIND["single"], rng),
            ),
            ("hot", config.workers, single_transfer(sessionmaker, hot, KIND["hot"], rng)),
            (
                "batched",
                config.batch_workers,
                batched_transfers(sessionmaker, accounts, config.batch_size, rng),
            ),
        ]
        for name, workers, operation in plan:
            phase = await run_ledger_phase(server, name, workers, config, operation)
            outcome.phases.append(phase)
            for error in phase.measured.errors:
                outcome.failures.append(f"{name}: {error}")
        for _ in range(config.baseline_runs - 1):
            baseline()

        started = time.perf_counter()
        outcome.check_lines, failures = await check_invariants(
            sessionmaker, outcome.phases, config.accounts
        )
        outcome.failures.extend(failures)
        outcome.setup_seconds["checks"] = time.perf_counter() - started
    finally:
        await engine.dispose()
    return outcome


def report(outcome: Outcome, config: Config) -> tuple[str, dict[str, Any]]:
    base = outcome.baseline
    rows: list[list[object]] = []
    for b in outcome.baselines:
        rows.append(
            [
                "pgbench TPC-B",
                f"{b.clients} clients",
                f"{b.tps:,.0f} tps",
                None,
                None,
                b.latency_ms,
                None,
                b.transactions,
            ]
        )
    result: dict[str, Any] = {"name": "ledger"}
    for phase in outcome.phases:
        m = phase.measured
        unit = "entries/s" if phase.name != "batched" else "transfers/s"
        r = ratio(m.rate, base)
        rows.append(
            [
                phase.name,
                f"{m.workers} sessions",
                f"{m.rate:,.0f} {unit}",
                f"{r:.2f}×",
                f"≥ {GOALS[phase.name]}× {'met' if r >= GOALS[phase.name] else 'MISSED'}",
                m.latency_ms(50),
                m.latency_ms(99),
                m.units,
            ]
        )
        figures = {
            "value": round(m.rate, 1),
            "unit": unit,
            "ratio": r,
            "goal": GOALS[phase.name],
            "p50_ms": _round(m.latency_ms(50)),
            "p99_ms": _round(m.latency_ms(99)),
            "count": m.units,
            "seconds": round(m.elapsed, 3),
            "sessions": m.workers,
        }
        if phase.name == "single":
            result.update(
                value=figures["value"], unit=unit, baseline=round(base, 1), ratio=r, single=figures
            )
        else:
            result[phase.name] = figures
    result["baseline_runs"] = [round(b.tps, 1) for b in outcome.baselines]
    result["config"] = {
        "accounts": config.accounts,
        "hot_accounts": config.hot_accounts,
        "batch_size": config.batch_size,
        "seconds": config.seconds,
        "pgbench_scale": config.pgbench_scale,
    }
    result["server"] = outcome.settings

    table = format_table(
        ["phase", "concurrency", "rate", "ratio", "goal", "p50 ms", "p99 ms", "count"], rows
    )
    settings = ", ".join(f"{k}={v}" for k, v in sorted(outcome.settings.items()))
    setup = ", ".join(f"{k} {v:.1f} s" for k, v in outcome.setup_seconds.items())
    text_report = "\n".join(
        [
            f"bench/ledger — baseline {base:,.0f} tps (mean of {len(outcome.baselines)} pgbench"
            f" run(s)); {config.accounts:,} accounts, {config.seconds:g} s per phase",
            f"server: {settings}",
            f"timings: {setup}",
            "",
            table,
            "",
            "invariants:",
            *(f"  {line}" for line in outcome.check_lines),
        ]
    )
    return text_report, result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny size: seconds, not minutes")
    parser.add_argument("--seconds", type=float, help="length of each measured phase")
    parser.add_argument("--accounts", type=int, help="number of funded accounts")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else Config()
    if args.seconds is not None:
        config = dataclasses.replace(
            config, seconds=args.seconds, warmup=min(config.warmup, args.seconds / 5)
        )
    if args.accounts is not None:
        if args.accounts < max(config.hot_accounts, 2):
            parser.error(f"--accounts must be at least {max(config.hot_accounts, 2)}")
        config = dataclasses.replace(config, accounts=args.accounts)

    setup_logging()
    try:
        with throwaway_server(prefix="tanso-bench-ledger-", quick=args.quick) as server:
            started = time.perf_counter()
            ledger_url = server.migrate()
            migrate_seconds = time.perf_counter() - started
            started = time.perf_counter()
            pgbench_init(ledger_url, config.pgbench_scale)
            pgbench_seconds = time.perf_counter() - started
            outcome = run_async(lambda: measure(server, ledger_url, config))
    except BenchFailure as exc:
        return finish("bench/ledger could not run", {"name": "ledger"}, [str(exc)])
    outcome.setup_seconds = {
        "pgbench -i": pgbench_seconds,
        "migrate": migrate_seconds,
        **outcome.setup_seconds,
    }
    text_report, result = report(outcome, config)
    return finish(text_report, result, outcome.failures)


if __name__ == "__main__":
    sys.exit(main())
