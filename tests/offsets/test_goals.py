"""Municipal goals through the API: who may set them, one per year, and their progress."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import Org, create_org
from tests.offsets.helpers import (
    Json,
    assert_books_clean,
    assert_problem,
    count_rows,
    create_project,
    issue,
    registry_org,
    retired,
)


async def create_goal(client: httpx.AsyncClient, org: Org, **fields: Any) -> httpx.Response:
    body = {"fiscal_year": 2025, "target_tonnes": 100, **fields}
    return await client.post("/v1/goals", json=body, headers=org.headers)


async def set_retired_at(session: AsyncSession, retirement: Json, when: datetime) -> None:
    await session.execute(
        text("UPDATE offset_retirements SET retired_at = :t WHERE id = :id"),
        {"t": when, "id": uuid.UUID(retirement["id"])},
    )
    await session.commit()


class TestCreateGoal:
    async def test_municipality_sets_a_goal(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        r = await create_goal(client, city, target_tonnes=500, local_share_target_pct=40)
        assert r.status_code == 201, r.text
        goal = r.json()
        assert goal["organization_id"] == city.id
        assert (goal["fiscal_year"], goal["target_tonnes"], goal["local_share_target_pct"]) == (
            2025,
            500,
            40,
        )
        assert (goal["retired_tonnes"], goal["local_tonnes"], goal["retirements"]) == (0, 0, 0)
        assert (goal["progress_pct"], goal["local_share_pct"]) == (0, 0)
        assert goal["target_met"] is False
        assert goal["local_share_met"] is False
        await assert_books_clean(session)

    async def test_a_company_is_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        company = await create_org(client, kind="company", prefecture="13")
        assert_problem(await create_goal(client, company), 403, "not_a_municipality")
        government = await create_org(client, kind="government", prefecture="13")
        assert_problem(await create_goal(client, government), 403, "not_a_municipality")
        assert await count_rows(session, "offset_goals") == 0

    async def test_duplicate_fiscal_year_is_409(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        assert (await create_goal(client, city, fiscal_year=2025)).status_code == 201
        r = await create_goal(client, city, fiscal_year=2025, target_tonnes=1)
        body = assert_problem(r, 409, "goal_exists")
        assert body["fiscal_year"] == 2025
        assert (await create_goal(client, city, fiscal_year=2026)).status_code == 201
        other_city = await create_org(client, kind="municipality", prefecture="04")
        assert (await create_goal(client, other_city, fiscal_year=2025)).status_code == 201
        assert await count_rows(session, "offset_goals") == 3

    async def test_invalid_bodies_are_422(self, client: httpx.AsyncClient) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        for fields in (
            {"fiscal_year": 1999},
            {"fiscal_year": 2101},
            {"fiscal_year": "2025"},
            {"target_tonnes": 0},
            {"target_tonnes": 1.5},
            {"local_share_target_pct": 101},
            {"local_share_target_pct": -1},
        ):
            assert_problem(await create_goal(client, city, **fields), 422, "validation_error")

    async def test_another_orgs_goal_is_404(self, client: httpx.AsyncClient) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        other = await create_org(client, kind="municipality", prefecture="03")
        goal = (await create_goal(client, city)).json()
        r = await client.get(f"/v1/goals/{goal['id']}", headers=other.headers)
        assert_problem(r, 404, "goal_not_found")
        assert (await client.get("/v1/goals", headers=other.headers)).json() == []


class TestGoalProgress:
    async def test_progress_counts_the_fiscal_year_and_the_local_share(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        registry = await registry_org(client)
        local_project = await create_project(client, registry, city, prefecture="03")
        far_project = await create_project(client, registry, city, prefecture="13")
        local = await issue(client, registry, local_project, city, 1_000)
        far = await issue(client, registry, far_project, city, 1_000)

        # FY2025 (2025-04-01 00:00 JST = 2025-03-31 15:00 UTC, to 2026-04-01 00:00 JST).
        in_first_moment = await retired(client, city, local["id"], 30)
        in_last_moment = await retired(client, city, far["id"], 50)
        in_middle = await retired(client, city, far["id"], 20)
        # FY2024 and FY2026: just outside.
        before = await retired(client, city, local["id"], 7)
        after = await retired(client, city, local["id"], 11)
        await set_retired_at(session, in_first_moment, datetime(2025, 3, 31, 15, 0, tzinfo=UTC))
        await set_retired_at(
            session, in_last_moment, datetime(2026, 3, 31, 14, 59, 59, 999_999, tzinfo=UTC)
        )
        await set_retired_at(session, in_middle, datetime(2025, 10, 1, tzinfo=UTC))
        await set_retired_at(
            session, before, datetime(2025, 3, 31, 14, 59, 59, 999_999, tzinfo=UTC)
        )
        await set_retired_at(session, after, datetime(2026, 3, 31, 15, 0, tzinfo=UTC))

        goal = (
            await create_goal(
                client, city, fiscal_year=2025, target_tonnes=100, local_share_target_pct=30
            )
        ).json()
        assert goal["retirements"] == 3
        assert goal["retired_tonnes"] == 100
        assert goal["local_tonnes"] == 30
        assert goal["progress_pct"] == 100
        assert goal["local_share_pct"] == 30
        assert goal["target_met"] is True
        assert goal["local_share_met"] is True

        fy2024 = (await create_goal(client, city, fiscal_year=2024, target_tonnes=14)).json()
        assert (fy2024["retirements"], fy2024["retired_tonnes"], fy2024["local_tonnes"]) == (
            1,
            7,
            7,
        )
        assert (fy2024["progress_pct"], fy2024["target_met"]) == (50, False)
        fy2026 = (
            await create_goal(
                client, city, fiscal_year=2026, target_tonnes=10, local_share_target_pct=100
            )
        ).json()
        assert (fy2026["retired_tonnes"], fy2026["local_share_pct"]) == (11, 100)
        assert (fy2026["progress_pct"], fy2026["target_met"], fy2026["local_share_met"]) == (
            110,
            True,
            True,
        )

        r = await client.get(f"/v1/goals/{goal['id']}", headers=city.headers)
        assert r.json() == goal
        listed = (await client.get("/v1/goals", headers=city.headers)).json()
        assert [g["fiscal_year"] for g in listed] == [2024, 2025, 2026]
        await assert_books_clean(session)

    async def test_only_the_municipalitys_own_retirements_count(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        company = await create_org(client, kind="company", prefecture="03")
        registry = await registry_org(client)
        project = await create_project(client, registry, company, prefecture="03")
        batch = await issue(client, registry, project, company, 100)
        await retired(client, company, batch["id"], 40)
        goal = (await create_goal(client, city, fiscal_year=2025)).json()
        assert (goal["retired_tonnes"], goal["retirements"]) == (0, 0)
        await assert_books_clean(session)

    async def test_local_share_below_target(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        city = await create_org(client, kind="municipality", prefecture="03")
        registry = await registry_org(client)
        local = await issue(
            client, registry, await create_project(client, registry, city, prefecture="03"), city
        )
        far = await issue(
            client, registry, await create_project(client, registry, city, prefecture="27"), city
        )
        for r in (
            await retired(client, city, local["id"], 1),
            await retired(client, city, far["id"], 2),
        ):
            await set_retired_at(session, r, datetime(2025, 6, 1, tzinfo=UTC))
        goal = (
            await create_goal(
                client, city, fiscal_year=2025, target_tonnes=3, local_share_target_pct=34
            )
        ).json()
        assert (goal["retired_tonnes"], goal["local_tonnes"], goal["local_share_pct"]) == (3, 1, 33)
        assert goal["target_met"] is True
        assert goal["local_share_met"] is False

    async def test_municipality_without_prefecture_has_no_local_share(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        city = await create_org(client, kind="municipality")
        registry = await registry_org(client)
        batch = await issue(
            client, registry, await create_project(client, registry, city, prefecture="03"), city
        )
        r = await retired(client, city, batch["id"], 5)
        await set_retired_at(session, r, datetime(2025, 6, 1, tzinfo=UTC))
        goal = (await create_goal(client, city, fiscal_year=2025, target_tonnes=5)).json()
        assert (goal["retired_tonnes"], goal["local_tonnes"], goal["local_share_pct"]) == (5, 0, 0)
        assert goal["local_share_met"] is True  # no local target was set
