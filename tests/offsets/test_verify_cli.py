"""``tanso ledger verify`` runs the registry checks too: clean after a full registry scenario,
and failing, with the check named, once a serial block is tampered with in SQL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import get_settings
from app.offsets.verify import REGISTRY_CHECKS
from tests.factories import create_org
from tests.ledger.test_verify import run_verify
from tests.offsets.helpers import new_batch, retired, transfer


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def _scenario(client: httpx.AsyncClient) -> str:
    seller = await create_org(client, kind="seller")
    buyer = await create_org(client, kind="company")
    issued = await new_batch(client, seller, 100)
    moved = await transfer(client, seller, buyer, issued.batch_id, 40)
    assert moved.status_code == 201, moved.text
    await retired(client, buyer, issued.batch_id, 7)
    return issued.batch_id


async def test_registry_checks_pass_on_clean_books(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await _scenario(client)
    result = await run_verify(database_url)
    assert result.exit_code == 0, result.output
    for name, *_ in REGISTRY_CHECKS:
        assert f"ok   {name}:" in result.output


async def test_a_stolen_serial_block_fails_verify(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    batch_id = await _scenario(client)
    async with engine.begin() as conn:
        # Shrink one live active block behind the ledger's back: serials go missing.
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text(
                "UPDATE offset_blocks SET serial_end = serial_end - 1"
                " WHERE id = (SELECT id FROM offset_blocks WHERE batch_id = :b"
                " AND closed_at IS NULL AND state = 'active' AND serial_end > serial_start"
                " LIMIT 1)"
            ),
            {"b": batch_id},
        )
    result = await run_verify(database_url)
    assert result.exit_code == 1, result.output
    assert "FAIL serial_partition" in result.output
    assert "FAIL blocks_match_ledger" in result.output
