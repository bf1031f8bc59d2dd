from __future__ import annotations

import httpx

from tests.factories import create_org, deposit


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready"


async def test_deposit_shows_in_balances(client: httpx.AsyncClient) -> None:
    org = await create_org(client)
    await deposit(client, org, 1_000)
    r = await client.get("/v1/balances", headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"cash": {"available": 1_000, "held": 0}, "credits": []}
