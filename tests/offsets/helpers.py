"""Registry test helpers: a registry organisation, projects, issuances and the book checks.

Everything is made through the public API (so each helper exercises the real code path) and
committed. ``assert_books_clean`` runs the ledger and registry checkers; call it after every
scenario.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from itertools import count
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.verify import run_checks
from app.offsets.verify import run_registry_checks
from tests.factories import Org, create_org

Json = dict[str, Any]
_seq = count(1)


async def registry_org(client: httpx.AsyncClient) -> Org:
    """A platform organisation whose key may register projects and issue credits."""
    return await create_org(client, kind="platform", scopes=["read", "registry"])


async def create_project(
    client: httpx.AsyncClient,
    registry: Org,
    owner: Org,
    *,
    category: str = "forest",
    methodology: str = "FO-001",
    prefecture: str = "03",
    name: str | None = None,
) -> Json:
    r = await client.post(
        "/v1/projects",
        json={
            "name": name or f"Project {next(_seq)}",
            "owner_organization_id": owner.id,
            "methodology": methodology,
            "category": category,
            "prefecture": prefecture,
        },
        headers=registry.headers,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def issue(
    client: httpx.AsyncClient,
    registry: Org,
    project: Json,
    holder: Org,
    quantity: int = 1_000,
    *,
    period_start: str = "2024-04-01",
    period_end: str = "2025-03-31",
    labels: list[str] | None = None,
) -> Json:
    r = await client.post(
        "/v1/issuances",
        json={
            "project_id": project["id"],
            "holder_organization_id": holder.id,
            "quantity": quantity,
            "monitoring_period_start": period_start,
            "monitoring_period_end": period_end,
            "labels": labels or [],
        },
        headers=registry.headers,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


@dataclass
class Issued:
    registry: Org
    project: Json
    batch: Json

    @property
    def batch_id(self) -> str:
        return str(self.batch["id"])

    @property
    def start(self) -> int:
        return int(self.batch["serial_start"])

    @property
    def end(self) -> int:
        return int(self.batch["serial_end"])


async def new_batch(
    client: httpx.AsyncClient,
    holder: Org,
    quantity: int = 1_000,
    *,
    registry: Org | None = None,
    category: str = "forest",
    methodology: str | None = None,
    prefecture: str = "03",
) -> Issued:
    """A project owned by ``holder`` and one batch of ``quantity`` credits issued to it."""
    registry = registry or await registry_org(client)
    methodology = methodology or ("EN-R-002" if category == "renewable_power" else "FO-001")
    project = await create_project(
        client, registry, holder, category=category, methodology=methodology, prefecture=prefecture
    )
    batch = await issue(client, registry, project, holder, quantity)
    return Issued(registry, project, batch)


async def transfer(
    client: httpx.AsyncClient, sender: Org, to: Org, batch_id: str, quantity: Any
) -> httpx.Response:
    return await client.post(
        "/v1/credit-transfers",
        json={"to_organization_id": to.id, "batch_id": batch_id, "quantity": quantity},
        headers=sender.headers,
    )


async def retire(
    client: httpx.AsyncClient,
    org: Org,
    batch_id: str,
    quantity: Any,
    *,
    purpose: str = "offset",
    public: bool = True,
    beneficiary_name: str = "Sakura Foods K.K.",
    **extra: Any,
) -> httpx.Response:
    return await client.post(
        "/v1/retirements",
        json={
            "batch_id": batch_id,
            "quantity": quantity,
            "purpose": purpose,
            "beneficiary_name": beneficiary_name,
            "public": public,
            **extra,
        },
        headers=org.headers,
    )


async def retired(client: httpx.AsyncClient, org: Org, batch_id: str, quantity: int) -> Json:
    """Retire and return the retirement (asserting it succeeded)."""
    r = await retire(client, org, batch_id, quantity)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def holdings(client: httpx.AsyncClient, org: Org) -> dict[str, Json]:
    """The caller's holdings by batch id."""
    r = await client.get("/v1/holdings", headers=org.headers)
    assert r.status_code == 200, r.text
    return {h["batch_id"]: h for h in r.json()}


async def credit_balances(client: httpx.AsyncClient, org: Org) -> dict[str, tuple[int, int]]:
    """The caller's ledger balances of credits: batch id -> (available, held)."""
    r = await client.get("/v1/balances", headers=org.headers)
    assert r.status_code == 200, r.text
    return {c["batch_id"]: (c["available"], c["held"]) for c in r.json()["credits"]}


def assert_problem(r: httpx.Response, status: int, code: str) -> Json:
    assert r.status_code == status, r.text
    body = dict(r.json())
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert body["code"] == code, body
    return body


async def assert_books_clean(session: AsyncSession) -> None:
    """The ledger's and the registry's checkers find nothing."""
    results = await run_checks(session) + await run_registry_checks(session)
    await session.rollback()
    failed = {r.name: r.violations for r in results if not r.ok}
    assert failed == {}


async def count_rows(session: AsyncSession, table: str) -> int:
    value = await session.scalar(text(f"SELECT count(*) FROM {table}"))
    await session.rollback()
    return int(value or 0)


async def live_blocks(
    session: AsyncSession, batch_id: str, holder: str | None = None
) -> list[tuple[int, int, str]]:
    """(serial_start, serial_end, state) of a batch's live blocks, of one holder or all."""
    sql = (
        "SELECT serial_start, serial_end, state FROM offset_blocks"
        " WHERE batch_id = :b AND closed_at IS NULL"
    )
    params: dict[str, Any] = {"b": uuid.UUID(batch_id)}
    if holder is not None:
        sql += " AND holder_organization_id = :h"
        params["h"] = uuid.UUID(holder)
    rows = (await session.execute(text(sql + " ORDER BY serial_start"), params)).all()
    await session.rollback()
    return [(int(s), int(e), str(st)) for s, e, st in rows]
