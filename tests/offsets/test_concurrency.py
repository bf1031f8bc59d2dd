"""Races with real commits: concurrent requests through the ASGI client (a real connection
pool), and interleavings forced with separate sessions. Nothing may be oversold, nothing may
deadlock, and the ledger and registry checkers must stay clean."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable
from datetime import date
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.accounts.models import Organization, Scope
from app.accounts.service import Principal
from app.config import Settings
from app.db.session import SessionMaker, create_sessionmaker
from app.offsets import service as offsets_service
from app.offsets.errors import InsufficientCredits
from app.offsets.models import ClaimType, Purpose
from app.offsets.schemas import ClaimCreate, ClaimSubject, RetirementCreate
from tests.factories import Org, create_org
from tests.offsets.helpers import (
    Json,
    assert_books_clean,
    assert_problem,
    create_project,
    credit_balances,
    holdings,
    issue,
    new_batch,
    registry_org,
    retire,
    retired,
    transfer,
)

pytestmark = pytest.mark.concurrency

T = TypeVar("T")
GRAMS = 1_000_000
DEADLINE = 120.0  # seconds: far above any honest run; hitting it means a deadlock


async def race(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; fail (rather than hang) if they do not all finish."""

    async def gathered() -> list[T]:
        return list(await asyncio.gather(*aws))

    return await asyncio.wait_for(gathered(), DEADLINE)


async def wait_for_lock_waiters(engine: AsyncEngine, count: int = 1) -> None:
    """Until ``count`` backends of this database wait on a lock (a forced interleaving)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if int(waiting or 0) >= count:
            return
        assert loop.time() < deadline, "the second transaction never waited for the lock"
        await asyncio.sleep(0.02)


@pytest.fixture
def sessions(engine: AsyncEngine) -> SessionMaker:
    return create_sessionmaker(engine)


async def principal_for(session: AsyncSession, org: Org) -> Principal:
    organization = await session.get(Organization, uuid.UUID(org.id))
    assert organization is not None
    return Principal(api_key_id=org.key_id, scopes=frozenset(Scope), organization=organization)


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


class TestRetirementRaces:
    async def test_two_retirements_for_the_last_credits(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        for _ in range(3):
            issued = await new_batch(client, holder, 10)
            await retired(client, holder, issued.batch_id, 7)
            results = await race(
                [
                    retire(client, holder, issued.batch_id, 3),
                    retire(client, holder, issued.batch_id, 3),
                ]
            )
            assert statuses(results) == {201: 1, 409: 1}, [r.text for r in results]
            loser = next(r for r in results if r.status_code == 409)
            assert_problem(loser, 409, "insufficient_credits")
            assert issued.batch_id not in await holdings(client, holder)
            assert (await credit_balances(client, holder))[issued.batch_id] == (0, 0)
        await assert_books_clean(session)

    async def test_the_second_retirement_waits_then_sees_the_first(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine: AsyncEngine,
        sessions: SessionMaker,
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        body = RetirementCreate(
            batch_id=uuid.UUID(issued.batch_id),
            quantity=6,
            purpose=Purpose.offset,
            beneficiary_name="Race",
        )
        org_id = uuid.UUID(holder.id)

        async def second() -> Exception | None:
            async with sessions() as s:
                try:
                    await offsets_service.retire_credits(s, org_id, body)
                except InsufficientCredits as exc:
                    await s.rollback()
                    return exc
                await s.commit()
                return None

        async with sessions() as first:
            await offsets_service.retire_credits(first, org_id, body)
            waiter = asyncio.create_task(second())
            await wait_for_lock_waiters(engine)
            await first.commit()
        outcome = await asyncio.wait_for(waiter, DEADLINE)
        assert isinstance(outcome, InsufficientCredits)
        assert (await credit_balances(client, holder))[issued.batch_id] == (4, 0)
        await assert_books_clean(session)


class TestTransferRaces:
    async def test_transfers_and_retirements_on_one_holding(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        a = await create_org(client, kind="seller")
        b = await create_org(client, kind="company")
        c = await create_org(client, kind="company")
        issued = await new_batch(client, a, 100)
        batch = issued.batch_id
        ops: list[tuple[str, Org | None, int]] = []
        for i in range(20):
            if i % 2:
                ops.append(("retire", None, 8))
            else:
                ops.append(("transfer", b if i % 4 else c, 9))

        def run(op: tuple[str, Org | None, int]) -> Awaitable[httpx.Response]:
            kind, to, quantity = op
            if kind == "retire":
                return retire(client, a, batch, quantity)
            assert to is not None
            return transfer(client, a, to, batch, quantity)

        results = await race([run(op) for op in ops])
        assert set(statuses(results)) <= {201, 409}, [r.text for r in results]
        for r in results:
            if r.status_code == 409:
                assert_problem(r, 409, "insufficient_credits")
        ok = [op for op, r in zip(ops, results, strict=True) if r.status_code == 201]
        retired_total = sum(q for kind, _, q in ok if kind == "retire")
        to_b = sum(q for kind, to, q in ok if kind == "transfer" and to is b)
        to_c = sum(q for kind, to, q in ok if kind == "transfer" and to is c)
        moved = retired_total + to_b + to_c
        assert moved <= 100
        assert 100 - moved < 9  # the holder stopped only when no operation could fit
        balances_a = await credit_balances(client, a)
        assert balances_a[batch] == (100 - moved, 0)
        assert (await credit_balances(client, b)).get(batch, (0, 0)) == (to_b, 0)
        assert (await credit_balances(client, c)).get(batch, (0, 0)) == (to_c, 0)
        retired_rows = await session.scalar(
            text("SELECT coalesce(sum(quantity), 0) FROM offset_retirements")
        )
        await session.rollback()
        assert int(retired_rows or 0) == retired_total
        # Every serial is somewhere exactly once.
        ranges = [
            rng
            for org in (a, b, c)
            for rng in (await holdings(client, org)).get(batch, {"serial_ranges": []})[
                "serial_ranges"
            ]
        ]
        serials = [s for lo, hi in ranges for s in range(lo, hi + 1)]
        assert len(serials) == len(set(serials)) == 100 - retired_total
        await assert_books_clean(session)

    async def test_opposite_transfers_never_deadlock(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        a = await create_org(client, kind="seller")
        b = await create_org(client, kind="company")
        registry = await registry_org(client)
        project = await create_project(client, registry, a)
        batches = [await issue(client, registry, project, a, 120) for _ in range(2)]
        for batch in batches:
            r = await transfer(client, a, b, batch["id"], 60)
            assert r.status_code == 201, r.text

        calls = []
        for i in range(24):
            batch = batches[i % 2]["id"]
            sender, receiver = (a, b) if (i // 2) % 2 else (b, a)
            calls.append(transfer(client, sender, receiver, batch, 3))
        results = await race(calls)
        assert statuses(results) == {201: 24}, [r.text for r in results if r.status_code != 201]
        for batch in batches:
            # Each side sent and received as much: back where they started.
            assert (await credit_balances(client, a))[batch["id"]] == (60, 0)
            assert (await credit_balances(client, b))[batch["id"]] == (60, 0)
        await assert_books_clean(session)

    async def test_concurrent_idempotent_transfer_has_one_effect(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        a = await create_org(client, kind="seller")
        b = await create_org(client, kind="company")
        issued = await new_batch(client, a, 100)
        body = {"to_organization_id": b.id, "batch_id": issued.batch_id, "quantity": 10}
        headers = {**a.headers, "Idempotency-Key": "race-1"}
        results = await race(
            [client.post("/v1/credit-transfers", json=body, headers=headers) for _ in range(5)]
        )
        created = [r for r in results if r.status_code == 201]
        assert created, [r.text for r in results]
        for r in results:
            if r.status_code == 409:
                assert_problem(r, 409, "idempotency_request_in_progress")
            else:
                assert r.status_code == 201, r.text
                assert r.json() == created[0].json()
        assert (await credit_balances(client, a))[issued.batch_id] == (90, 0)
        assert (await credit_balances(client, b))[issued.batch_id] == (10, 0)
        await assert_books_clean(session)


class TestIssuanceRaces:
    async def test_concurrent_issuances_get_disjoint_contiguous_serials(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="seller")
        registry = await registry_org(client)
        project = await create_project(client, registry, holder)
        quantities = [5, 1, 17, 3, 40, 2, 9, 11]
        batches: list[Json] = await race(
            [issue(client, registry, project, holder, q) for q in quantities]
        )
        ranges = sorted((b["serial_start"], b["serial_end"]) for b in batches)
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert start == end + 1
        assert ranges[-1][1] - ranges[0][0] + 1 == sum(quantities)
        await assert_books_clean(session)


class TestClaimRaces:
    async def test_claims_racing_for_one_retirement(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 1)
        body = {
            "claim_type": "product",
            "subject": {"name": "Tea 100 g"},
            "footprint_g": 300_000,
            "period_start": "2025-04-01",
            "period_end": "2026-03-31",
            "retirement_ids": [retirement["id"]],
        }
        results = await race(
            [client.post("/v1/claims", json=body, headers=holder.headers) for _ in range(10)]
        )
        assert statuses(results) == {201: 3, 409: 7}, [r.text for r in results]
        r = await client.get(f"/v1/retirements/{retirement['id']}", headers=holder.headers)
        assert r.json()["claimed_g"] == 900_000
        await assert_books_clean(session)

    async def test_revocations_racing_free_the_grams_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 1)
        r = await client.post(
            "/v1/claims",
            json={
                "claim_type": "event",
                "subject": {"name": "Festival"},
                "footprint_g": GRAMS,
                "period_start": "2025-08-01",
                "period_end": "2025-08-02",
                "retirement_ids": [retirement["id"]],
            },
            headers=holder.headers,
        )
        claim = r.json()
        results = await race(
            [
                client.post(
                    f"/v1/claims/{claim['id']}/revoke",
                    json={"reason": f"attempt {i}"},
                    headers=holder.headers,
                )
                for i in range(5)
            ]
        )
        assert statuses(results) == {200: 1, 409: 4}, [r.text for r in results]
        r = await client.get(f"/v1/retirements/{retirement['id']}", headers=holder.headers)
        assert r.json()["claimed_g"] == 0
        await assert_books_clean(session)

    async def test_revocation_waiting_on_a_new_claim_keeps_its_grams(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine: AsyncEngine,
        sessions: SessionMaker,
        settings: Settings,
    ) -> None:
        """A revocation that reads a retirement, then waits for its lock while a new claim on
        the same retirement commits, must free only its own grams (not overwrite the new
        claim's with a stale total)."""
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 1)
        r = await client.post(
            "/v1/claims",
            json={
                "claim_type": "product",
                "subject": {"name": "Old claim"},
                "footprint_g": 600_000,
                "period_start": "2025-04-01",
                "period_end": "2026-03-31",
                "retirement_ids": [retirement["id"]],
            },
            headers=holder.headers,
        )
        old_claim = r.json()
        new_claim = ClaimCreate(
            claim_type=ClaimType.product,
            subject=ClaimSubject(name="New claim"),
            footprint_g=400_000,
            period_start=date(2025, 4, 1),
            period_end=date(2026, 3, 31),
            retirement_ids=[uuid.UUID(retirement["id"])],
        )

        async def revoke() -> None:
            async with sessions() as s:
                principal = await principal_for(s, holder)
                await offsets_service.revoke_claim(
                    s, principal, uuid.UUID(old_claim["id"]), "replaced"
                )
                await s.commit()

        async with sessions() as claiming:
            principal = await principal_for(claiming, holder)
            await offsets_service.create_claim(claiming, settings, principal, new_claim)
            revoking = asyncio.create_task(revoke())
            await wait_for_lock_waiters(engine)
            await claiming.commit()
        await asyncio.wait_for(revoking, DEADLINE)

        r = await client.get(f"/v1/retirements/{retirement['id']}", headers=holder.headers)
        assert r.json()["claimed_g"] == 400_000
        await assert_books_clean(session)


class TestPoolRaces:
    async def test_hundred_draws_for_the_last_grams(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 1)
        r = await client.post(
            "/v1/offset-pools",
            json={
                "name": "Coffee",
                "subject": {"name": "Coffee 1 kg"},
                "retirement_ids": [retirement["id"]],
            },
            headers=holder.headers,
        )
        pool: dict[str, Any] = r.json()
        assert pool["total_g"] == GRAMS
        grams, fits = 25_000, GRAMS // 25_000  # the pool has grams for exactly 40 draws

        results = await race(
            [
                client.post(
                    f"/v1/offset-pools/{pool['id']}/claims",
                    json={"grams": grams, "reference": f"order-{i}"},
                    headers=holder.headers,
                )
                for i in range(100)
            ]
        )
        assert statuses(results) == {201: fits, 409: 100 - fits}, {
            r.status_code: r.text for r in results
        }
        for r in results:
            if r.status_code == 409:
                assert_problem(r, 409, "pool_exhausted")
        # Each answer reports what was left as its draw saw it. The pool's grams are kept in
        # shards (no single hot row), so concurrent draws may see the same remainder: the
        # figures are bounded and never negative, and the final remainder is exact (below).
        remaining = sorted(r.json()["pool_remaining_g"] for r in results if r.status_code == 201)
        # (Two last draws in flight on different shards may each still see the other's grams,
        # so no answer need say 0; the pool read below must.)
        assert len(remaining) == fits
        assert all(0 <= left <= GRAMS - grams for left in remaining)

        read = (await client.get(f"/v1/offset-pools/{pool['id']}", headers=holder.headers)).json()
        assert (read["remaining_g"], read["drawn_g"]) == (0, GRAMS)
        drawn = await session.scalar(
            text(
                "SELECT sum(covered_g) FROM offset_claims WHERE pool_id = :p AND status = 'active'"
            ),
            {"p": uuid.UUID(pool["id"])},
        )
        await session.rollback()
        assert int(drawn or 0) == GRAMS == read["total_g"]
        await assert_books_clean(session)
