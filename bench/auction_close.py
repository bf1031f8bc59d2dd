"""bench/auction_close: close an auction of 100,000 bids from 1,000 bidders, end to end.

    .venv/bin/python -m bench.auction_close            # full size (about a minute)
    .venv/bin/python -m bench.auction_close --quick    # tiny size, a few seconds

One throwaway embedded PostgreSQL with production durability (fsync and synchronous_commit
on), its ``postgres`` database migrated to head. Set-up (not measured):

- ``--bidders`` (1,000) organisations, each funded with JPY by the ledger service, and an
  auctioneer holding two batches of credits issued by the registry service;
- a uniform-price auction created by ``auction.service.create_auction`` (its supply held from
  the two batches), the bids of the second seller consigned into it before it opens
  (``auction.consignment.consign``, so the close splits supply and proceeds pro rata);
- ``--bids`` (100,000) bids, ``bids / bidders`` per bidder, prices ¥2,000-4,000 on a ¥10 tick
  (many ties at the margin), 10-500 t, demand about twice the supply. They are inserted in
  bulk: per bidder one ledger entry moves the cash of all its bids from available to held
  (``post_entries``) and one ``ledger_holds`` row records the hold its bids share, as placing
  them one by one leaves it, with the bids' commitments computed as the service does. (Placing is not what is measured; the ledger
  check ``holds_match_held`` proves the holds and the held balances agree before the close.)

Measured: ``settlement.close_auction`` in one session, its commit, then the published results
read back in a new session (``service.get_results``): "results published" as a client sees it.

Baseline, in the same run and database: ``bench/ledger``'s batched posting phase (100
transfer entries per ``post_entries`` call, 2 workers), in transfers/s; settling an auction is
batched posting. Reported: the close's time (the goal is < 5 s), and its rate in settled bids
per second beside the baseline.

After the close: ``app.ledger.verify.run_checks`` and the registry checks
(``app.offsets.verify.run_registry_checks``) must all pass, no hold may be left active, every
bid must have taken part (still ``active``: ``won``/``lost`` are derived from the
allocations), every allocation must name an active bid of its bidder, the allocations must
add up to the sold quantity, the winners' credits to their allocations, and the sellers' cash
to the revenue. A broken check fails the run.

The last line of stdout is one JSON object::

    {"name": "auction_close", "value": <s>, "unit": "s", "baseline": <transfers/s>,
     "ratio": <settled bids/s ÷ baseline>, "goal_seconds": 5, ...}
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
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, text

import app.db.registry  # noqa: F401  (every model)
from app.accounts.models import Organization, OrganizationKind
from app.auction import commitments, consignment, settlement
from app.auction import service as auction_service
from app.auction.schemas import AuctionCreate, ConsignmentCreate, SupplyItem
from app.core.ids import new_id
from app.db.session import SessionMaker, create_sessionmaker
from app.ledger.models import Account, AccountKind
from app.ledger.posting import Leg
from app.ledger.service import CASH, EntrySpec, post_entries
from app.ledger.verify import run_checks
from app.offsets import service as offsets_service
from app.offsets.models import Category
from app.offsets.schemas import IssuanceCreate, ProjectCreate
from app.offsets.verify import run_registry_checks
from bench._common import (
    BenchFailure,
    Server,
    finish,
    format_table,
    ratio,
    run_async,
    setup_logging,
    throwaway_server,
)
from bench.ledger import (
    FUNDING,
    _engine,
    batched_transfers,
    create_funded_accounts,
    run_ledger_phase,
)
from bench.ledger import Config as LedgerConfig

GOAL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Config:
    bidders: int = 1_000
    bids: int = 100_000
    baseline_seconds: float = 5.0
    seed: int = 20261128


QUICK = Config(bidders=20, bids=400, baseline_seconds=0.5)


@dataclass(slots=True)
class Setup:
    auction_id: uuid.UUID
    auctioneer: uuid.UUID
    consignor: uuid.UUID
    bidders: list[uuid.UUID]
    supply: int
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


# --- set-up ------------------------------------------------------------------------------


async def _issue(sessionmaker: SessionMaker, holder: uuid.UUID, quantity: int) -> uuid.UUID:
    async with sessionmaker() as session:
        project = await offsets_service.create_project(
            session,
            ProjectCreate(
                name="bench forest",
                owner_organization_id=holder,
                methodology="FO-001",
                category=Category.forest,
                prefecture="13",
            ),
        )
        batch, _ = await offsets_service.issue(
            session,
            IssuanceCreate(
                project_id=project.id,
                holder_organization_id=holder,
                quantity=quantity,
                monitoring_period_start=date(2024, 4, 1),
                monitoring_period_end=date(2025, 3, 31),
            ),
        )
        await session.commit()
        return batch.id


async def prepare(sessionmaker: SessionMaker, config: Config, rng: random.Random) -> Setup:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    accounts = await create_funded_accounts(sessionmaker, config.bidders)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(Account.id, Account.organization_id).where(Account.id.in_(accounts))
            )
        ).all()
        org_of = {acct: org for acct, org in rows if org is not None}
        bidders = [org_of[a] for a in accounts]
        auctioneer, consignor = new_id(), new_id()
        await session.execute(
            insert(Organization),
            [
                {"id": auctioneer, "name": "bench auctioneer", "kind": OrganizationKind.government},
                {"id": consignor, "name": "bench consignor", "kind": OrganizationKind.municipality},
            ],
        )
        await session.commit()
    seconds["bidders"] = time.perf_counter() - started

    # Demand ≈ bids × 255 t on average; supply about half of it, a multiple of the 10 t step.
    demand = config.bids * 255
    supply = max(30, demand // 2 // 30 * 30)
    own, consigned = supply * 2 // 3, supply // 3
    started = time.perf_counter()
    batches = [await _issue(sessionmaker, auctioneer, own // 2) for _ in range(2)]
    consigned_batch = await _issue(sessionmaker, consignor, consigned)
    now = datetime.now(UTC)
    async with sessionmaker() as session:
        auction = await auction_service.create_auction(
            session,
            auctioneer,
            AuctionCreate(
                title="bench tender",
                format="uniform",
                supply=[SupplyItem(batch_id=b, quantity=own // 2) for b in batches],
                opens_at=now + timedelta(hours=1),
                closes_at=now + timedelta(hours=2),
                quantity_step=10,
                price_tick=10,
                reserve_price=2_000,
            ),
        )
        await consignment.consign(
            session,
            consignor,
            auction.id,
            ConsignmentCreate(batch_id=consigned_batch, quantity=consigned),
        )
        # Bidding opens now (the supply is final): the window moves, as a clock would.
        await session.execute(
            text("UPDATE auctions SET opens_at = :o, status = 'open' WHERE id = :id"),
            {"o": now - timedelta(minutes=1), "id": auction.id},
        )
        await session.commit()
        auction_id = auction.id
    seconds["auction"] = time.perf_counter() - started

    started = time.perf_counter()
    await place_bids(sessionmaker, auction_id, bidders, config, rng)
    seconds["bids"] = time.perf_counter() - started
    return Setup(auction_id, auctioneer, consignor, bidders, supply, seconds)


# One statement per 10,000 rows (an INSERT per row would take the set-up past two minutes).
_INSERT_HOLDS = text(
    "INSERT INTO ledger_holds"
    " (id, organization_id, asset, amount, remaining, status, reference, created_at, updated_at)"
    " SELECT id, org, 'JPY', amount, amount, 'active', ref, now(), now()"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:orgs AS uuid[]), CAST(:amounts AS bigint[]),"
    " CAST(:refs AS text[])) AS h(id, org, amount, ref)"
)
_INSERT_BIDS = text(
    "INSERT INTO auction_bids (id, auction_id, bidder_organization_id, price, quantity, status,"
    " cash_hold_id, commitment, nonce, created_at, updated_at)"
    " SELECT id, :auction, org, price, quantity, 'active', hold, commitment, nonce, now(), now()"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:orgs AS uuid[]), CAST(:prices AS bigint[]),"
    " CAST(:quantities AS bigint[]), CAST(:holds AS uuid[]), CAST(:commits AS text[]),"
    " CAST(:nonces AS text[])) WITH ORDINALITY"
    " AS b(id, org, price, quantity, hold, commitment, nonce, n) ORDER BY n"
)


async def place_bids(
    sessionmaker: SessionMaker,
    auction_id: uuid.UUID,
    bidders: list[uuid.UUID],
    config: Config,
    rng: random.Random,
) -> None:
    """The bids in bulk: per bidder one hold entry and one hold row for all its bids, as
    placing them one by one leaves it (the bidder's hold is the sum of its bids)."""
    per_bidder = config.bids // len(bidders)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(Account.organization_id, Account.kind, Account.id).where(
                    Account.organization_id.in_(bidders), Account.asset == CASH
                )
            )
        ).all()
        available = {org: acct for org, kind, acct in rows if kind == AccountKind.available}
        held_ids = {org: new_id() for org in bidders}
        await session.execute(
            insert(Account),
            [
                {
                    "id": held_ids[org],
                    "organization_id": org,
                    "asset": CASH,
                    "kind": AccountKind.held,
                    "is_non_negative": True,
                }
                for org in bidders
            ],
        )
        for start in range(0, len(bidders), 100):
            entries = []
            holds: dict[str, list[Any]] = {k: [] for k in ("ids", "orgs", "amounts", "refs")}
            bids: dict[str, list[Any]] = {
                k: [] for k in ("ids", "orgs", "prices", "quantities", "holds", "commits", "nonces")
            }
            for org in bidders[start : start + 100]:
                total = 0
                hold_id = new_id()
                for _ in range(per_bidder):
                    bid_id = new_id()
                    price = rng.randrange(2_000, 4_001, 10)
                    quantity = rng.randrange(10, 501, 10)
                    total += price * quantity
                    nonce = commitments.new_nonce()
                    commitment = commitments.bid_commitment(
                        auction_id, bid_id, price, quantity, nonce
                    )
                    for key, value in zip(
                        bids,
                        (bid_id, org, price, quantity, hold_id, commitment, nonce),
                        strict=True,
                    ):
                        bids[key].append(value)
                if total > FUNDING:
                    raise BenchFailure("a bidder's bids exceed its funding")
                reference = auction_service.bidder_hold_reference(auction_id, org)
                for key, value in zip(holds, (hold_id, org, total, reference), strict=True):
                    holds[key].append(value)
                entries.append(
                    EntrySpec(
                        kind="hold",
                        legs=[Leg(available[org], CASH, -total), Leg(held_ids[org], CASH, total)],
                        reference=f"auction:{auction_id}:bids",
                    )
                )
            await post_entries(session, entries)
            await session.execute(_INSERT_HOLDS, holds)
            await session.execute(_INSERT_BIDS, {"auction": auction_id, **bids})
        await session.commit()


# --- the measured close ---------------------------------------------------------------------


async def close_and_publish(sessionmaker: SessionMaker, setup: Setup) -> dict[str, float]:
    """Seconds to close (clear and settle), to commit, and until results are readable."""
    started = time.perf_counter()
    async with sessionmaker() as session:
        await settlement.close_auction(session, setup.auctioneer, setup.auction_id)
        settled = time.perf_counter()
        await session.commit()
    committed = time.perf_counter()
    async with sessionmaker() as session:
        found = await auction_service.get_results(session, setup.bidders[0], setup.auction_id)
        if found.result.sold_quantity <= 0:
            raise BenchFailure("the auction sold nothing: the bids do not meet the supply")
    published = time.perf_counter()
    return {
        "close": settled - started,
        "commit": committed - settled,
        "published": published - started,
    }


# --- checks ----------------------------------------------------------------------------------


async def check_invariants(
    sessionmaker: SessionMaker, setup: Setup, bids: int
) -> tuple[list[str], list[str], dict[str, int]]:
    lines: list[str] = []
    failures: list[str] = []
    async with sessionmaker() as session:
        for check in await run_checks(session) + await run_registry_checks(session):
            status = "ok" if check.ok else "FAILED"
            lines.append(f"{check.name:<26} {status:<7} ({check.checked:,} checked)")
            if not check.ok:
                failures.append(f"check {check.name}: {check.description}: {check.violations}")
        facts = (
            await session.execute(
                text(
                    """SELECT
                          (SELECT count(*) FROM ledger_holds WHERE status = 'active'),
                          (SELECT count(*) FROM auction_bids WHERE auction_id = :a
                             AND status = 'active'),
                          (SELECT count(*) FROM auction_allocations a
                             JOIN auction_bids b ON b.id = a.bid_id AND b.auction_id = :a
                                                AND b.status = 'active'
                                                AND b.bidder_organization_id
                                                    = a.bidder_organization_id
                            WHERE a.auction_id = :a),
                          (SELECT count(*) FROM auction_allocations WHERE auction_id = :a),
                          (SELECT coalesce(sum(quantity), 0) FROM auction_allocations
                             WHERE auction_id = :a),
                          (SELECT coalesce(sum(amount), 0) FROM auction_allocations
                             WHERE auction_id = :a),
                          (SELECT sold_quantity FROM auction_results WHERE auction_id = :a),
                          (SELECT revenue FROM auction_results WHERE auction_id = :a),
                          (SELECT coalesce(sum(proceeds), 0) FROM auction_supply
                             WHERE auction_id = :a),
                          (SELECT coalesce(sum(a.balance), 0) FROM ledger_accounts a
                             WHERE a.asset = 'JPY' AND a.kind = 'available'
                               AND a.organization_id IN (:seller, :consignor)),
                          (SELECT coalesce(sum(a.balance), 0) FROM ledger_accounts a
                             JOIN ledger_assets s ON s.code = a.asset AND s.kind = 'credit'
                            WHERE a.kind = 'available'
                              AND a.organization_id <> ALL(ARRAY[:seller, :consignor]))"""
                ),
                {
                    "a": setup.auction_id,
                    "seller": setup.auctioneer,
                    "consignor": setup.consignor,
                },
            )
        ).one()
    (
        active,
        closed_bids,
        matched,
        won,
        allocated,
        amounts,
        sold,
        revenue,
        proceeds,
        cash,
        credits,
    ) = (int(v) for v in facts)
    expectations = [
        ("no hold left active", active == 0, active),
        ("every bid took part", closed_bids == bids, f"{closed_bids:,} of {bids:,}"),
        ("allocations name bids", matched == won, f"{matched:,} of {won:,}"),
        ("allocations = sold", allocated == sold, f"{allocated:,} / {sold:,}"),
        ("amounts = revenue", amounts == revenue, f"{amounts:,} / {revenue:,}"),
        ("proceeds = revenue", proceeds == revenue, f"{proceeds:,}"),
        ("sellers' cash = revenue", cash == revenue, f"{cash:,}"),
        ("winners' credits = sold", credits == sold, f"{credits:,}"),
    ]
    for name, ok, detail in expectations:
        lines.append(f"{name:<26} {'ok' if ok else 'FAILED':<7} {detail}")
        if not ok:
            failures.append(f"{name}: {detail}")
    return lines, failures, {"sold": sold, "winners": won, "revenue": revenue}


# --- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    settings: dict[str, str]
    baseline: float  # batched transfers/s
    timings: dict[str, float]
    setup_seconds: dict[str, float]
    figures: dict[str, int]
    check_lines: list[str]
    failures: list[str]


async def measure(server: Server, url: str, config: Config) -> Outcome:
    rng = random.Random(config.seed)
    engine = _engine(url, 4)
    sessionmaker = create_sessionmaker(engine)
    try:
        setup = await prepare(sessionmaker, config, rng)
        # The baseline: bench/ledger's batched phase, on its own accounts in this database.
        ledger_config = dataclasses.replace(
            LedgerConfig(),
            seconds=config.baseline_seconds,
            warmup=min(1.0, config.baseline_seconds / 5),
        )
        accounts = await create_funded_accounts(sessionmaker, 1_000)
        phase = await run_ledger_phase(
            server,
            "batched",
            ledger_config.batch_workers,
            ledger_config,
            batched_transfers(sessionmaker, accounts, ledger_config.batch_size, rng),
        )
        if phase.measured.errors:
            raise BenchFailure(f"baseline errors: {phase.measured.errors}")
        server.checkpoint()
        timings = await close_and_publish(sessionmaker, setup)
        lines, failures, figures = await check_invariants(sessionmaker, setup, config.bids)
    finally:
        await engine.dispose()
    return Outcome(
        server.settings(),
        phase.measured.rate,
        timings,
        setup.seconds,
        figures,
        lines,
        failures,
    )


def report(outcome: Outcome, config: Config) -> tuple[str, dict[str, Any]]:
    seconds = outcome.timings["published"]
    rate = config.bids / seconds if seconds > 0 else 0.0
    rows = [
        ("close (clear + settle)", outcome.timings["close"], None),
        ("commit", outcome.timings["commit"], None),
        ("results published", seconds, f"goal < {GOAL_SECONDS:.0f} s"),
        ("settled bids/s", rate, None),
        ("baseline: batched transfers/s", outcome.baseline, None),
        ("ratio", ratio(rate, outcome.baseline), None),
    ]
    text_report = "\n".join(
        [
            f"bench/auction_close: {config.bids:,} bids from {config.bidders:,} bidders,"
            f" {outcome.figures['winners']:,} winning bids, {outcome.figures['sold']:,} t sold",
            "",
            format_table(["", "value", "note"], rows),
            "",
            "set-up (s): " + ", ".join(f"{k} {v:.1f}" for k, v in outcome.setup_seconds.items()),
            "server: " + ", ".join(f"{k}={v}" for k, v in sorted(outcome.settings.items())),
            "",
            "checks:",
            *(f"  {line}" for line in outcome.check_lines),
        ]
    )
    result = {
        "name": "auction_close",
        "value": round(seconds, 3),
        "unit": "s",
        "baseline": round(outcome.baseline, 1),
        "baseline_unit": "transfers/s",
        "ratio": ratio(rate, outcome.baseline),
        "goal_seconds": GOAL_SECONDS,
        "meets_goal": seconds < GOAL_SECONDS,
        "bids": config.bids,
        "bidders": config.bidders,
        "settled_bids_per_s": round(rate, 1),
        "close_s": round(outcome.timings["close"], 3),
        "commit_s": round(outcome.timings["commit"], 3),
        "server": {k: outcome.settings.get(k) for k in ("fsync", "synchronous_commit")},
    }
    return text_report, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.auction_close", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny size: seconds, not minutes")
    parser.add_argument("--bidders", type=int, help="number of bidders")
    parser.add_argument("--bids", type=int, help="number of bids (a multiple of --bidders)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else Config()
    if args.bidders is not None:
        config = dataclasses.replace(config, bidders=args.bidders)
    if args.bids is not None:
        config = dataclasses.replace(config, bids=args.bids)
    if config.bidders < 1 or config.bids < config.bidders or config.bids % config.bidders:
        parser.error("--bids must be a positive multiple of --bidders")

    setup_logging()
    try:
        with throwaway_server(prefix="tanso-bench-auction-", quick=args.quick) as server:
            url = server.migrate()
            outcome = run_async(lambda: measure(server, url, config))
    except BenchFailure as exc:
        return finish("bench/auction_close could not run", {"name": "auction_close"}, [str(exc)])
    text_report, result = report(outcome, config)
    return finish(text_report, result, outcome.failures)


if __name__ == "__main__":
    sys.exit(main())
