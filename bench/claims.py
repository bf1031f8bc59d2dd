"""bench/claims: unit claims drawn from an offset pool over HTTP, beside GET /health.

An e-commerce checkout offsets each sale: ``POST /v1/offset-pools/{id}/claims`` with the
grams and the order number, answered with a signed unit claim. Tanso runs under uvicorn with
2 workers on a throwaway durable embedded PostgreSQL; 32 keep-alive clients send requests for
a fixed time. The baseline is ``GET /health`` through the same server and clients in the same
run (the framework's ceiling). Goal: >= 1,000 claims/s.

Afterwards it checks what the load could have broken: the pool's remaining grams equal its
funding less every claim drawn, no claim was drawn twice for one order number, and the ledger
and registry checkers find nothing.

    .venv/bin/python -m bench.claims            # full size, about a minute
    .venv/bin/python -m bench.claims --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

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

GRAMS_PER_CLAIM = 350  # a 200 g pack of rice crackers, say
CLIENTS = 32


async def prepare(server: Served, tonnes: int) -> tuple[str, dict[str, str]]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        admin = server.admin
        registry = await registry_headers(c, admin)
        shop = check(
            await c.post(
                "/v1/organizations",
                json={"name": "Shop", "kind": "company", "prefecture": "13"},
                headers=admin,
            )
        )
        shop_key = check(
            await c.post(
                f"/v1/organizations/{shop['id']}/api-keys",
                json={"name": "s", "scopes": ["retire", "read"]},
                headers=admin,
            )
        )["key"]
        shop_h = {"Authorization": f"Bearer {shop_key}"}
        project = check(
            await c.post(
                "/v1/projects",
                json={
                    "name": "Forest",
                    "owner_organization_id": shop["id"],
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
                    "holder_organization_id": shop["id"],
                    "quantity": tonnes,
                    "monitoring_period_start": "2024-04-01",
                    "monitoring_period_end": "2025-03-31",
                },
                headers=registry,
            )
        )
        retirement = check(
            await c.post(
                "/v1/retirements",
                json={
                    "batch_id": batch["id"],
                    "quantity": tonnes,
                    "purpose": "offset",
                    "beneficiary_name": "Shop customers",
                },
                headers=shop_h,
            )
        )
        pool = check(
            await c.post(
                "/v1/offset-pools",
                json={
                    "name": "Rice crackers",
                    "subject": {"name": "Rice crackers 200 g", "unit": "pack"},
                    "retirement_ids": [retirement["id"]],
                },
                headers=shop_h,
            )
        )
    return pool["id"], shop_h  # fmt: skip


async def invariants(url: str, pool_id: str, drawn: int) -> list[str]:
    engine = create_engine(get_settings(), url)
    failures: list[str] = []
    try:
        async with create_sessionmaker(engine)() as session:
            results = await run_checks(session) + await run_registry_checks(session)
            failures += [f"{r.name}: {r.violations[:3]}" for r in results if not r.ok]
            row = (
                await session.execute(
                    text(
                        "SELECT p.total_g, (SELECT sum(remaining_g) FROM offset_pool_shards"
                        " WHERE pool_id = p.id), count(c.id), coalesce(sum(c.covered_g), 0),"
                        " count(DISTINCT c.reference) FROM offset_pools p"
                        " LEFT JOIN offset_claims c ON c.pool_id = p.id WHERE p.id = :id"
                        " GROUP BY p.id"
                    ),
                    {"id": pool_id},
                )
            ).one()
            total, remaining, count, grams, references = row
            if remaining != total - grams:
                failures.append(f"pool remaining {remaining} != total {total} - drawn {grams}")
            if count != references:
                failures.append(f"{count} claims for {references} order numbers")
            if count < drawn:
                failures.append(f"{drawn} claims acknowledged, {count} stored")
    finally:
        await engine.dispose()
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, not a minute")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 15.0)
    setup_logging()

    with throwaway_server(quick=args.quick) as pg:
        url = pg.migrated_database("claims")
        with served(url) as server:
            meter = cpu_meter(server, pg)

            async def run() -> dict[str, Any]:
                pool_id, shop = await prepare(server, tonnes=1_000)

                async def health(c: Connection, worker: int, i: int) -> tuple[int, bytes]:
                    return await c.request("GET", "/health")

                path = f"/v1/offset-pools/{pool_id}/claims"

                async def claim(c: Connection, worker: int, i: int) -> tuple[int, bytes]:
                    body = {"grams": GRAMS_PER_CLAIM, "reference": f"order-{worker}-{i}"}
                    return await c.request("POST", path, json.dumps(body).encode(), shop)

                baseline, _ = await http_phase(
                    "GET /health", server, CLIENTS, seconds, health, meter=meter
                )
                pg.checkpoint()
                claims, statuses = await http_phase(
                    "unit claims", server, CLIENTS, seconds, claim, meter=meter
                )
                return {
                    "pool_id": pool_id,
                    "baseline": baseline,
                    "claims": claims,
                    "statuses": statuses,
                }

            out = run_async(run)
        failures = [f"claims phase errors: {out['claims'].errors}"] if out["claims"].errors else []
        failures += run_async(lambda: invariants(url, out["pool_id"], out["claims"].operations))

    baseline, claims = out["baseline"], out["claims"]
    report = format_table(
        ["phase", "clients", "requests", "per second", "p50 ms", "p99 ms", "ratio to /health"],
        [
            [baseline.name, CLIENTS, baseline.operations, baseline.rate, baseline.latency_ms(50), baseline.latency_ms(99), 1.0],
            [claims.name, CLIENTS, claims.operations, claims.rate, claims.latency_ms(50), claims.latency_ms(99), ratio(claims.rate, baseline.rate)],
        ],
    )  # fmt: skip
    used = cpu_summary(baseline, claims, "claims")
    report += cpu_lines(used, "claims", "a claim")
    return finish(
        report,
        {
            "name": "claims",
            "value": round(claims.rate, 1),
            "unit": "claims/s",
            "baseline": round(baseline.rate, 1),
            "ratio": ratio(claims.rate, baseline.rate),
            "p99_ms": claims.latency_ms(99),
            "goal": ">= 1000 claims/s",
            "cpu": used,
        },
        failures,
    )


if __name__ == "__main__":
    raise SystemExit(main())
