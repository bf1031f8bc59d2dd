"""The registry end to end: issue, transfer, retire, claim, verify, through the public API."""

from __future__ import annotations

import json

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.verify import run_checks
from app.offsets.signing import b64url_decode, verify
from app.offsets.verify import run_registry_checks
from tests.factories import ADMIN, create_org


async def test_issue_transfer_retire_claim_and_verify(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    registry = await create_org(client, kind="platform", scopes=["read", "registry"])
    seller = await create_org(client, kind="seller", prefecture="03")
    buyer = await create_org(client, kind="company", prefecture="13")

    r = await client.post(
        "/v1/projects",
        json={
            "name": "Rikuzentakata municipal forest",
            "owner_organization_id": seller.id,
            "methodology": "FO-001",
            "category": "forest",
            "prefecture": "03",
        },
        headers=registry.headers,
    )
    assert r.status_code == 201, r.text
    project = r.json()

    r = await client.post(
        "/v1/issuances",
        json={
            "project_id": project["id"],
            "holder_organization_id": seller.id,
            "quantity": 1_000,
            "monitoring_period_start": "2024-04-01",
            "monitoring_period_end": "2025-03-31",
            "labels": ["removal"],
        },
        headers=registry.headers,
    )
    assert r.status_code == 201, r.text
    batch = r.json()
    assert batch["vintage"] == 2024
    assert batch["serial_end"] - batch["serial_start"] + 1 == 1_000

    r = await client.post(
        "/v1/credit-transfers",
        json={"to_organization_id": buyer.id, "batch_id": batch["id"], "quantity": 300},
        headers=seller.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["serial_ranges"] == [[batch["serial_start"], batch["serial_start"] + 299]]

    r = await client.post(
        "/v1/retirements",
        json={
            "batch_id": batch["id"],
            "quantity": 10,
            "purpose": "offset",
            "beneficiary_name": "Sakura Foods K.K.",
        },
        headers=buyer.headers,
    )
    assert r.status_code == 201, r.text
    retirement = r.json()
    assert retirement["serial_ranges"] == [[batch["serial_start"], batch["serial_start"] + 9]]

    r = await client.post(
        "/v1/claims",
        json={
            "claim_type": "product",
            "subject": {"name": "Rice crackers 200 g", "unit": "pack"},
            "footprint_g": 2_500_000,
            "period_start": "2025-04-01",
            "period_end": "2026-03-31",
            "retirement_ids": [retirement["id"]],
        },
        headers=buyer.headers,
    )
    assert r.status_code == 201, r.text
    claim = r.json()
    assert claim["covered_g"] == 2_500_000

    published = (await client.get(f"/v1/public/claims/{claim['code']}")).json()
    keys = (await client.get("/v1/public/keys")).json()
    key = next(k for k in keys if k["key_id"] == published["key_id"])
    assert verify(b64url_decode(key["public_key"]), published["canonical"], published["signature"])
    tampered = json.loads(published["canonical"])
    tampered["footprint_g"] += 1
    assert not verify(
        b64url_decode(key["public_key"]),
        json.dumps(tampered, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        published["signature"],
    )

    holdings = (await client.get("/v1/holdings", headers=buyer.headers)).json()
    assert holdings[0]["available"] == 290
    balances = (await client.get("/v1/balances", headers=buyer.headers)).json()
    assert balances["credits"] == [{"batch_id": batch["id"], "available": 290, "held": 0}]

    register = (await client.get("/v1/public/retirements")).json()
    assert [x["code"] for x in register["data"]] == [retirement["code"]]

    results = await run_checks(session) + await run_registry_checks(session)
    assert [r.name for r in results if not r.ok] == [], [r for r in results if not r.ok]
    assert ADMIN
