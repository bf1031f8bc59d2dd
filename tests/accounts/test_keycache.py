"""Remembered API keys (``app.accounts.keycache``): a key is read from the database once while
the process listens for changes, and every change to a key or an organisation (revoked,
suspended, renamed, deleted, truncated) is seen by the next request, through the app and
through another process's ``NOTIFY``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.accounts import service as accounts_service
from app.accounts.errors import InvalidApiKey
from app.accounts.keycache import KEYS, KeyCache
from app.db.url import libpq_url
from tests.conftest import ADMIN_KEY
from tests.core.helpers import assert_problem
from tests.factories import ADMIN, create_org


async def _until(condition: object, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def listening(database_url: str) -> AsyncIterator[KeyCache]:
    """The process's cache, listening on the test database, as the app's lifespan runs it."""
    task = asyncio.create_task(KEYS.listen(libpq_url(database_url)))
    await _until(lambda: KEYS.listening)
    yield KEYS
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not KEYS.listening


async def _remembered(cache: KeyCache, key: str) -> bool:
    return cache.get(accounts_service.hash_key(key)) is not None


async def test_nothing_is_remembered_unless_listening(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    org = await create_org(client)
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    assert not KEYS.listening
    assert not await _remembered(KEYS, org.key)


async def test_a_key_is_read_once_then_remembered(
    client: httpx.AsyncClient, session: AsyncSession, listening: KeyCache
) -> None:
    org = await create_org(client)
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    assert await _remembered(listening, org.key)
    # Remembered: the next authentication is answered from memory, the same caller.
    principal = await accounts_service.authenticate(session, org.key, ADMIN_KEY)
    assert principal is listening.get(accounts_service.hash_key(org.key))
    assert str(principal.organization_id) == org.id


async def test_revoking_through_the_api_is_seen_by_the_next_request(
    client: httpx.AsyncClient, listening: KeyCache
) -> None:
    org = await create_org(client)
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    assert (await client.delete(f"/v1/api-keys/{org.key_id}", headers=ADMIN)).status_code == 204
    # Forgotten at this process's own commit: no waiting for the notice.
    assert_problem(await client.get("/v1/me", headers=org.headers), 401, "invalid_api_key")


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE api_keys SET revoked_at = now() WHERE organization_id = :org",
        "UPDATE organizations SET status = 'suspended' WHERE id = :org",
        "DELETE FROM api_keys WHERE organization_id = :org",
        "TRUNCATE api_keys CASCADE",
    ],
)
async def test_a_change_made_elsewhere_is_noticed(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    listening: KeyCache,
    change: str,
) -> None:
    """Another process (here: plain SQL on another connection) revokes, suspends, deletes:
    the NOTIFY of migration 0016's triggers makes this process forget, and read again."""
    org = await create_org(client)
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    assert await _remembered(listening, org.key)
    async with engine.begin() as conn:
        params = {"org": uuid.UUID(org.id)} if ":org" in change else {}
        await conn.execute(text(change), params)
    await _until(lambda: listening.get(accounts_service.hash_key(org.key)) is None)
    with pytest.raises(InvalidApiKey):
        await accounts_service.authenticate(session, org.key, ADMIN_KEY)


async def test_a_rename_is_seen_by_the_next_read(
    client: httpx.AsyncClient, engine: AsyncEngine, listening: KeyCache
) -> None:
    org = await create_org(client)
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE organizations SET name = 'Renamed KK' WHERE id = :id"),
            {"id": uuid.UUID(org.id)},
        )
    await _until(lambda: listening.get(accounts_service.hash_key(org.key)) is None)
    me = (await client.get("/v1/me", headers=org.headers)).json()
    assert me["organization"]["name"] == "Renamed KK"


async def test_a_lookup_that_raced_a_change_is_not_remembered(
    client: httpx.AsyncClient, session: AsyncSession, listening: KeyCache
) -> None:
    org = await create_org(client)
    generation = listening.generation  # read before the query, as ``authenticate`` does
    principal = await accounts_service.authenticate(session, org.key, ADMIN_KEY)
    listening.forget()  # a notice arrives between the query and remembering
    listening.forget()
    key_hash = accounts_service.hash_key(org.key)
    listening.remember(key_hash, principal, generation)
    assert listening.get(key_hash) is None


async def test_losing_the_connection_forgets_and_stops_remembering_until_back(
    client: httpx.AsyncClient, engine: AsyncEngine, listening: KeyCache
) -> None:
    org = await create_org(client)
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    assert await _remembered(listening, org.key)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'tanso-keycache' AND datname = current_database()"
            )
        )
    await _until(lambda: not listening.listening or not listening.get(
        accounts_service.hash_key(org.key)))  # fmt: skip
    assert not await _remembered(listening, org.key)
    await _until(lambda: listening.listening)  # reconnected
    assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
    assert await _remembered(listening, org.key)


async def test_entries_expire(client: httpx.AsyncClient, session: AsyncSession) -> None:
    cache = KeyCache(ttl=0.0)
    cache._listening = True  # as if listening: only the expiry is under test
    org = await create_org(client)
    principal = await accounts_service.authenticate(session, org.key, ADMIN_KEY)
    cache.remember("h", principal, cache.generation)
    assert cache.get("h") is None


async def test_this_process_forgets_its_own_revocation_at_commit(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No listener here, so no notice can do it: the commit of the revocation does."""
    monkeypatch.setattr(KEYS, "_listening", True)
    org = await create_org(client)
    principal = await accounts_service.authenticate(session, org.key, ADMIN_KEY)
    await session.rollback()
    key_hash = accounts_service.hash_key(org.key)
    assert KEYS.get(key_hash) is principal
    admin = await accounts_service.authenticate(session, ADMIN_KEY, ADMIN_KEY)
    await accounts_service.revoke_api_key(session, admin, uuid.UUID(org.key_id))
    assert KEYS.get(key_hash) is principal  # not committed yet: still valid
    await session.commit()
    assert KEYS.get(key_hash) is None


async def test_a_failed_request_leaves_the_remembered_caller_whole(
    client: httpx.AsyncClient, listening: KeyCache
) -> None:
    """A request that fails rolls its session back, which expires what the session holds:
    the remembered organisation must not be among it, or every later request with the key
    would fail to read it."""
    org = await create_org(client, scopes=["trade", "read"])
    body = {"product": "NO-SUCH", "side": "buy", "price": 1_000, "quantity": 1}
    # Read and remembered by this request, which then fails (404) and rolls back.
    assert_problem(
        await client.post("/v1/orders", json=body, headers=org.headers), 404, "product_not_found"
    )
    assert await _remembered(listening, org.key)
    me = await client.get("/v1/me", headers=org.headers)
    assert me.status_code == 200, me.text
    assert me.json()["organization"]["id"] == org.id
