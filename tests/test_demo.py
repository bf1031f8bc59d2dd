"""``tanso demo``: loads organisations, working keys, yen and credits once; books clean."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.demo import DEMO_ORGS, load_demo
from app.ledger.verify import run_checks
from app.offsets.verify import run_registry_checks


async def test_demo_loads_once_with_working_keys(
    client: httpx.AsyncClient, session: AsyncSession, database_url: str
) -> None:
    keys = await load_demo(database_url)
    assert set(keys) == {org.name for org, _, _ in DEMO_ORGS}

    buyer = {"Authorization": f"Bearer {keys['Sakura Foods K.K. (demo)']}"}
    balances = (await client.get("/v1/balances", headers=buyer)).json()
    assert balances["cash"] == {"available": 50_000_000, "held": 0}

    seller = {"Authorization": f"Bearer {keys['Kumamoto Forest Co-op (demo)']}"}
    holdings = (await client.get("/v1/holdings", headers=seller)).json()
    assert [(h["category"], h["available"]) for h in holdings] == [("forest", 5_000)]

    secretariat = {"Authorization": f"Bearer {keys['J-Credit Secretariat (demo)']}"}
    held = (await client.get("/v1/holdings", headers=secretariat)).json()
    assert [(h["category"], h["available"]) for h in held] == [("energy_saving", 20_000)]

    assert await load_demo(database_url) == {}  # a second run changes nothing
    results = await run_checks(session) + await run_registry_checks(session)
    assert [r.name for r in results if not r.ok] == []
