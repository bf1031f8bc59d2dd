"""Offset pools through the API: funding, unit draws, thresholds, refusals, isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import ADMIN, Org, create_org
from tests.offsets.helpers import (
    Json,
    assert_books_clean,
    assert_problem,
    count_rows,
    new_batch,
    retired,
)

T = 1_000_000


async def holder_with_retirements(
    client: httpx.AsyncClient, quantities: list[int]
) -> tuple[Org, list[Json]]:
    holder = await create_org(client, kind="company")
    issued = await new_batch(client, holder, sum(quantities) + 10)
    return holder, [await retired(client, holder, issued.batch_id, q) for q in quantities]


async def create_pool(
    client: httpx.AsyncClient, org: Org, retirement_ids: list[str], **fields: Any
) -> httpx.Response:
    return await client.post(
        "/v1/offset-pools",
        json={
            "name": "Coffee beans 1 kg",
            "subject": {"name": "Coffee beans 1 kg", "unit": "bag"},
            "retirement_ids": retirement_ids,
            **fields,
        },
        headers=org.headers,
    )


async def draw(
    client: httpx.AsyncClient, org: Org, pool_id: str, grams: Any, reference: str, **fields: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/offset-pools/{pool_id}/claims",
        json={"grams": grams, "reference": reference, **fields},
        headers=org.headers,
    )


async def get_pool(client: httpx.AsyncClient, org: Org, pool_id: str) -> Json:
    r = await client.get(f"/v1/offset-pools/{pool_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def claimed_g(client: httpx.AsyncClient, org: Org, retirement: Json) -> int:
    r = await client.get(f"/v1/retirements/{retirement['id']}", headers=org.headers)
    return int(r.json()["claimed_g"])


class TestCreateAndFund:
    async def test_pool_total_is_the_unclaimed_grams(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1, r2) = await holder_with_retirements(client, [2, 1])
        r = await client.post(
            "/v1/claims",
            json={
                "claim_type": "organization",
                "subject": {"name": "Head office"},
                "footprint_g": 400_000,
                "period_start": "2025-04-01",
                "period_end": "2026-03-31",
                "retirement_ids": [r2["id"]],
            },
            headers=holder.headers,
        )
        assert r.status_code == 201, r.text

        r = await create_pool(client, holder, [r1["id"], r2["id"]], low_balance_g=100_000)
        assert r.status_code == 201, r.text
        pool = r.json()
        assert pool["total_g"] == pool["remaining_g"] == 2 * T + 600_000
        assert pool["drawn_g"] == 0
        assert pool["low_balance_g"] == 100_000
        assert pool["claim_type"] == "product"
        assert pool["subject"] == {"name": "Coffee beans 1 kg", "unit": "bag"}
        assert sorted((x["retirement_id"], x["grams"]) for x in pool["retirements"]) == sorted(
            [(r1["id"], 2 * T), (r2["id"], 600_000)]
        )
        assert await claimed_g(client, holder, r1) == 2 * T
        assert await claimed_g(client, holder, r2) == T
        assert await get_pool(client, holder, pool["id"]) == pool
        await assert_books_clean(session)

    async def test_fund_adds_more(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        holder, (r1, r2) = await holder_with_retirements(client, [1, 2])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        assert pool["total_g"] == T
        r = await client.post(
            f"/v1/offset-pools/{pool['id']}/fund",
            json={"retirement_ids": [r2["id"]]},
            headers=holder.headers,
        )
        assert r.status_code == 200, r.text
        funded = r.json()
        assert funded["total_g"] == funded["remaining_g"] == 3 * T
        assert len(funded["retirements"]) == 2

        # Funding again with used-up retirements adds nothing and is refused.
        r = await client.post(
            f"/v1/offset-pools/{pool['id']}/fund",
            json={"retirement_ids": [r1["id"], r2["id"]]},
            headers=holder.headers,
        )
        assert_problem(r, 409, "insufficient_coverage")
        assert (await get_pool(client, holder, pool["id"]))["total_g"] == 3 * T
        await assert_books_clean(session)

    async def test_empty_pool_then_funded(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [])).json()
        assert pool["total_g"] == pool["remaining_g"] == 0
        assert_problem(await draw(client, holder, pool["id"], 1, "o-1"), 409, "pool_exhausted")
        r = await client.post(
            f"/v1/offset-pools/{pool['id']}/fund",
            json={"retirement_ids": [r1["id"]]},
            headers=holder.headers,
        )
        assert r.status_code == 200, r.text
        assert (await draw(client, holder, pool["id"], 1, "o-1")).status_code == 201
        await assert_books_clean(session)

    async def test_unknown_or_foreign_retirement_is_404_and_creates_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (mine,) = await holder_with_retirements(client, [1])
        _, (theirs,) = await holder_with_retirements(client, [1])
        for ids in ([theirs["id"]], [mine["id"], theirs["id"]], [str(uuid.uuid4())]):
            r = await create_pool(client, holder, ids)
            assert_problem(r, 404, "retirement_not_found")
        assert await count_rows(session, "offset_pools") == 0
        assert await claimed_g(client, holder, mine) == 0
        await assert_books_clean(session)

    async def test_fully_claimed_retirements_cannot_fund_a_new_pool(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        assert (await create_pool(client, holder, [r1["id"]])).status_code == 201
        r = await create_pool(client, holder, [r1["id"]])
        assert_problem(r, 409, "insufficient_coverage")
        assert await count_rows(session, "offset_pools") == 1
        await assert_books_clean(session)


class TestDraw:
    async def test_draws_reduce_remaining(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        r = await draw(client, holder, pool["id"], 250_000, "order-1")
        assert r.status_code == 201, r.text
        unit = r.json()
        assert unit["grams"] == 250_000
        assert unit["reference"] == "order-1"
        assert unit["pool_id"] == pool["id"]
        assert unit["pool_remaining_g"] == 750_000
        assert unit["low_balance"] is False
        assert unit["code"].startswith("CL-")

        r = await draw(client, holder, pool["id"], 700_000, "order-2")
        assert r.json()["pool_remaining_g"] == 50_000
        read = await get_pool(client, holder, pool["id"])
        assert (read["total_g"], read["remaining_g"], read["drawn_g"]) == (T, 50_000, 950_000)

        published = (await client.get(f"/v1/public/claims/{unit['code']}")).json()
        assert published["status"] == "active"
        assert published["document"]["footprint_g"] == 250_000
        assert published["document"]["reference"] == "order-1"
        assert published["document"]["pool"]["code"] == pool["code"]
        await assert_books_clean(session)

    async def test_low_balance_flags(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [r1["id"]], low_balance_g=300_000)).json()
        r = await draw(client, holder, pool["id"], 700_000, "o-1")
        # 300,000 left: not below the pool's threshold.
        assert (r.json()["pool_remaining_g"], r.json()["low_balance"]) == (300_000, False)
        r = await draw(client, holder, pool["id"], 1, "o-2")
        assert (r.json()["pool_remaining_g"], r.json()["low_balance"]) == (299_999, True)
        # The caller's own threshold wins over the pool's.
        r = await draw(client, holder, pool["id"], 1, "o-3", notify_below_g=100_000)
        assert r.json()["low_balance"] is False
        r = await draw(client, holder, pool["id"], 1, "o-4", notify_below_g=299_997)
        assert r.json()["low_balance"] is False
        r = await draw(client, holder, pool["id"], 1, "o-5", notify_below_g=299_997)
        assert (r.json()["pool_remaining_g"], r.json()["low_balance"]) == (299_996, True)

        other = (await create_pool(client, holder, [])).json()
        assert other["low_balance_g"] is None
        await assert_books_clean(session)

    async def test_duplicate_reference_is_409(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1, r2) = await holder_with_retirements(client, [1, 1])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        assert (await draw(client, holder, pool["id"], 10, "order-1")).status_code == 201
        r = await draw(client, holder, pool["id"], 10, "order-1")
        body = assert_problem(r, 409, "duplicate_reference")
        assert body["reference"] == "order-1"
        assert (await get_pool(client, holder, pool["id"]))["remaining_g"] == T - 10
        assert await count_rows(session, "offset_claims") == 1
        # The same reference in another pool is fine.
        other = (await create_pool(client, holder, [r2["id"]])).json()
        assert (await draw(client, holder, other["id"], 10, "order-1")).status_code == 201
        await assert_books_clean(session)

    async def test_over_draw_is_409_and_writes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        assert (await draw(client, holder, pool["id"], T - 5, "o-1")).status_code == 201
        r = await draw(client, holder, pool["id"], 6, "o-2")
        body = assert_problem(r, 409, "pool_exhausted")
        assert body["requested_g"] == 6
        assert await count_rows(session, "offset_claims") == 1
        r = await draw(client, holder, pool["id"], 5, "o-2")
        assert r.status_code == 201, r.text
        assert r.json()["pool_remaining_g"] == 0
        await assert_books_clean(session)

    async def test_invalid_draws_are_422(self, client: httpx.AsyncClient) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        for grams, reference in [(0, "a"), (-1, "a"), (1.5, "a"), ("1", "a"), (1, ""), (1, None)]:
            r = await draw(client, holder, pool["id"], grams, reference)  # type: ignore[arg-type]
            assert_problem(r, 422, "validation_error")
        r = await draw(client, holder, pool["id"], 1, "a", notify_below_g=-1)
        assert_problem(r, 422, "validation_error")

    async def test_revoking_a_unit_claim_returns_its_grams(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        unit = (await draw(client, holder, pool["id"], 400_000, "o-1")).json()
        r = await client.post(
            f"/v1/claims/{unit['id']}/revoke",
            json={"reason": "Order cancelled"},
            headers=holder.headers,
        )
        assert r.status_code == 200, r.text
        assert (await get_pool(client, holder, pool["id"]))["remaining_g"] == T
        published = (await client.get(f"/v1/public/claims/{unit['code']}")).json()
        assert (published["status"], published["revoked_reason"]) == ("revoked", "Order cancelled")
        await assert_books_clean(session)


class TestIsolation:
    async def test_another_orgs_pool_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        stranger, (theirs,) = await holder_with_retirements(client, [1])
        pool = (await create_pool(client, holder, [r1["id"]])).json()
        r = await client.get(f"/v1/offset-pools/{pool['id']}", headers=stranger.headers)
        assert_problem(r, 404, "pool_not_found")
        r = await client.post(
            f"/v1/offset-pools/{pool['id']}/fund",
            json={"retirement_ids": [theirs["id"]]},
            headers=stranger.headers,
        )
        assert_problem(r, 404, "pool_not_found")
        r = await draw(client, stranger, pool["id"], 1, "x")
        assert_problem(r, 404, "pool_not_found")
        r = await draw(client, holder, str(uuid.uuid4()), 1, "x")
        assert_problem(r, 404, "pool_not_found")
        # The administrator's key belongs to no organisation: it cannot draw (not a 500).
        r = await client.post(
            f"/v1/offset-pools/{pool['id']}/claims",
            json={"grams": 1, "reference": "admin"},
            headers=ADMIN,
        )
        assert_problem(r, 403, "insufficient_scope")
        assert (await get_pool(client, holder, pool["id"]))["remaining_g"] == T
        assert await claimed_g(client, stranger, theirs) == 0
        await assert_books_clean(session)

    async def test_a_whole_claim_cannot_use_pool_grams(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        assert (await create_pool(client, holder, [r1["id"]])).status_code == 201
        r = await client.post(
            "/v1/claims",
            json={
                "claim_type": "event",
                "subject": {"name": "Marathon 2025"},
                "footprint_g": 1,
                "period_start": "2025-04-01",
                "period_end": "2025-04-01",
                "retirement_ids": [r1["id"]],
            },
            headers=holder.headers,
        )
        body = assert_problem(r, 409, "insufficient_coverage")
        assert body["available_g"] == 0
        await assert_books_clean(session)
