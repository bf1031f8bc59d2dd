"""Projects, issuance and batches through the API: scopes, validation, vintages, serials."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import ADMIN, Org, create_org
from tests.offsets.helpers import (
    Json,
    assert_books_clean,
    assert_problem,
    count_rows,
    create_project,
    credit_balances,
    holdings,
    issue,
    live_blocks,
    registry_org,
)


def project_body(owner: Org, **overrides: Any) -> Json:
    return {
        "name": "Kamaishi forest",
        "owner_organization_id": owner.id,
        "methodology": "FO-001",
        "category": "forest",
        "prefecture": "03",
        **overrides,
    }


def issuance_body(project: Json, holder: Org, **overrides: Any) -> Json:
    return {
        "project_id": project["id"],
        "holder_organization_id": holder.id,
        "quantity": 100,
        "monitoring_period_start": "2024-04-01",
        "monitoring_period_end": "2025-03-31",
        **overrides,
    }


def error_fields(body: Json) -> list[Any]:
    return [e["loc"][-1] for e in body["errors"]]


class TestCreateProject:
    async def test_registry_scope_creates_project(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        owner = await create_org(client, kind="seller")
        r = await client.post("/v1/projects", json=project_body(owner), headers=registry.headers)
        assert r.status_code == 201, r.text
        project = r.json()
        assert project["owner_organization_id"] == owner.id
        assert project["methodology"] == "FO-001"
        assert project["category"] == "forest"
        assert project["prefecture"] == "03"
        assert project["code"].startswith("P")
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        ("kind", "scopes"),
        [
            ("company", ["read", "trade", "bid", "retire", "transfer", "keys"]),
            ("platform", ["read"]),
        ],
    )
    async def test_registry_scope_required(
        self, client: httpx.AsyncClient, session: AsyncSession, kind: str, scopes: list[str]
    ) -> None:
        caller = await create_org(client, kind=kind, scopes=scopes)
        r = await client.post("/v1/projects", json=project_body(caller), headers=caller.headers)
        assert_problem(r, 403, "insufficient_scope")
        r = await client.post("/v1/projects", json=project_body(caller))
        assert_problem(r, 401, "invalid_api_key")
        assert await count_rows(session, "offset_projects") == 0
        await assert_books_clean(session)

    async def test_methodology_is_normalised(self, client: httpx.AsyncClient) -> None:
        registry = await registry_org(client)
        cases = [
            ("EN-S-001", "EN-S-001"),
            ("en-s-001", "EN-S-001"),
            (" en-r-002 ", "EN-R-002"),
            ("fo-001", "FO-001"),
            ("AG-004", "AG-004"),
            ("IP-010", "IP-010"),
            ("WA-002", "WA-002"),
        ]
        for sent, stored in cases:
            r = await client.post(
                "/v1/projects",
                json=project_body(registry, methodology=sent),
                headers=registry.headers,
            )
            assert r.status_code == 201, (sent, r.text)
            assert r.json()["methodology"] == stored

    async def test_invalid_methodology_is_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        cases: list[object] = [
            "XX-001", "EN-S-01", "EN-S-0001", "EN-X-001", "ENS001", "FO001", "", "FO-001-A",
            "\uff26\uff2f-001", 1, None,
        ]  # fmt: skip
        for methodology in cases:
            r = await client.post(
                "/v1/projects",
                json=project_body(registry, methodology=methodology),
                headers=registry.headers,
            )
            body = assert_problem(r, 422, "validation_error")
            assert "methodology" in error_fields(body), methodology
        assert await count_rows(session, "offset_projects") == 0

    async def test_prefecture_accepted(self, client: httpx.AsyncClient) -> None:
        registry = await registry_org(client)
        for prefecture in ["01", "13", "47"]:
            r = await client.post(
                "/v1/projects",
                json=project_body(registry, prefecture=prefecture),
                headers=registry.headers,
            )
            assert r.status_code == 201, r.text
            assert r.json()["prefecture"] == prefecture

    async def test_invalid_prefecture_is_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        for prefecture in ["00", "48", "1", "013", "ab", "", "13\n", "\uff11\uff13", 13, None]:
            r = await client.post(
                "/v1/projects",
                json=project_body(registry, prefecture=prefecture),
                headers=registry.headers,
            )
            body = assert_problem(r, 422, "validation_error")
            assert "prefecture" in error_fields(body), prefecture
        assert await count_rows(session, "offset_projects") == 0

    async def test_invalid_category_is_422(self, client: httpx.AsyncClient) -> None:
        registry = await registry_org(client)
        for category in ["solar", "", "FOREST", None]:
            r = await client.post(
                "/v1/projects",
                json=project_body(registry, category=category),
                headers=registry.headers,
            )
            body = assert_problem(r, 422, "validation_error")
            assert "category" in error_fields(body), category

    async def test_unknown_owner_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        body = project_body(registry, owner_organization_id=str(uuid.uuid4()))
        r = await client.post("/v1/projects", json=body, headers=registry.headers)
        assert_problem(r, 404, "organization_not_found")
        assert await count_rows(session, "offset_projects") == 0


class TestIssue:
    async def test_issue_creates_batch_block_and_ledger_balance(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller, prefecture="13")
        batch = await issue(client, registry, project, seller, 250, labels=["corsia_eligible"])
        assert batch["project_id"] == project["id"]
        assert batch["project_code"] == project["code"]
        assert batch["category"] == "forest"
        assert batch["prefecture"] == "13"
        assert batch["quantity"] == 250
        assert batch["serial_end"] - batch["serial_start"] + 1 == 250
        assert batch["labels"] == ["corsia_eligible"]
        assert batch["serial_display"].startswith(f"JCR-{project['code']}-2024-")
        held = await holdings(client, seller)
        assert held[batch["id"]]["available"] == 250
        assert held[batch["id"]]["held"] == 0
        assert held[batch["id"]]["serial_ranges"] == [[batch["serial_start"], batch["serial_end"]]]
        assert await credit_balances(client, seller) == {batch["id"]: (250, 0)}
        assert await live_blocks(session, batch["id"]) == [
            (batch["serial_start"], batch["serial_end"], "active")
        ]
        await assert_books_clean(session)

    async def test_registry_scope_required(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        r = await client.post(
            "/v1/issuances", json=issuance_body(project, seller), headers=seller.headers
        )
        assert_problem(r, 403, "insufficient_scope")
        assert await count_rows(session, "offset_batches") == 0
        await assert_books_clean(session)

    async def test_invalid_quantity_is_422_and_writes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        cases: list[object] = [0, -1, -1000, 1.0, 2.5, "10", True, None, 1_000_000_001, 10**30]
        for quantity in cases:
            r = await client.post(
                "/v1/issuances",
                json=issuance_body(project, seller, quantity=quantity),
                headers=registry.headers,
            )
            body = assert_problem(r, 422, "validation_error")
            assert "quantity" in error_fields(body), quantity
        assert await count_rows(session, "offset_batches") == 0
        assert await count_rows(session, "offset_blocks") == 0
        assert await holdings(client, seller) == {}
        await assert_books_clean(session)

    async def test_largest_quantity_is_accepted(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        batch = await issue(client, registry, project, seller, 1_000_000_000)
        assert batch["serial_end"] - batch["serial_start"] + 1 == 1_000_000_000
        assert await credit_balances(client, seller) == {batch["id"]: (1_000_000_000, 0)}
        await assert_books_clean(session)

    async def test_period_end_before_start_is_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        r = await client.post(
            "/v1/issuances",
            json=issuance_body(
                project,
                seller,
                monitoring_period_start="2025-04-02",
                monitoring_period_end="2025-04-01",
            ),
            headers=registry.headers,
        )
        assert_problem(r, 422, "validation_error")
        assert await count_rows(session, "offset_batches") == 0
        # A one-day period is fine.
        batch = await issue(
            client, registry, project, seller, period_start="2025-04-01", period_end="2025-04-01"
        )
        assert batch["vintage"] == 2025
        await assert_books_clean(session)

    async def test_invalid_dates_are_422(self, client: httpx.AsyncClient) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        cases: list[Json] = [
            {"monitoring_period_start": "2025-13-01"},
            {"monitoring_period_end": "31/03/2025"},
            {"monitoring_period_end": None},
        ]
        for dates in cases:
            r = await client.post(
                "/v1/issuances",
                json=issuance_body(project, seller, **dates),
                headers=registry.headers,
            )
            assert_problem(r, 422, "validation_error")

    async def test_unknown_project_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        r = await client.post(
            "/v1/issuances",
            json=issuance_body({"id": str(uuid.uuid4())}, seller),
            headers=registry.headers,
        )
        assert_problem(r, 404, "project_not_found")
        assert await count_rows(session, "offset_batches") == 0
        await assert_books_clean(session)

    async def test_unknown_holder_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        body = issuance_body(project, seller, holder_organization_id=str(uuid.uuid4()))
        r = await client.post("/v1/issuances", json=body, headers=registry.headers)
        assert_problem(r, 404, "organization_not_found")
        assert await count_rows(session, "offset_batches") == 0
        await assert_books_clean(session)

    async def test_labels_are_deduplicated_and_sorted(self, client: httpx.AsyncClient) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        batch = await issue(
            client,
            registry,
            project,
            seller,
            labels=["removal", "corsia_eligible", "removal", "ccp_approved"],
        )
        assert batch["labels"] == ["ccp_approved", "corsia_eligible", "removal"]
        r = await client.get(f"/v1/batches/{batch['id']}", headers=seller.headers)
        assert r.json()["labels"] == ["ccp_approved", "corsia_eligible", "removal"]

    async def test_invalid_labels_are_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        cases: list[object] = [
            ["CORSIA_eligible"],
            [""],
            ["has space"],
            ["corsia-eligible"],
            ["a" * 41],
            [f"label_{i}" for i in range(21)],
            "corsia_eligible",
            [1],
            None,
        ]
        for labels in cases:
            r = await client.post(
                "/v1/issuances",
                json=issuance_body(project, seller, labels=labels),
                headers=registry.headers,
            )
            body = assert_problem(r, 422, "validation_error")
            assert "labels" in [e["loc"][1] for e in body["errors"]], labels
        assert await count_rows(session, "offset_batches") == 0

    async def test_vintage_is_the_fiscal_year_of_the_period_end(
        self, client: httpx.AsyncClient
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        cases = [
            ("2024-04-01", "2025-03-31", 2024),
            ("2025-01-01", "2025-04-01", 2025),
            ("2024-10-01", "2025-01-01", 2024),
            ("2025-04-01", "2026-03-31", 2025),
            ("2023-04-01", "2025-04-01", 2025),
            ("2024-12-31", "2024-12-31", 2024),
        ]
        for start, end, vintage in cases:
            batch = await issue(
                client, registry, project, seller, 1, period_start=start, period_end=end
            )
            assert batch["vintage"] == vintage, (start, end)
            assert f"-{vintage}-" in batch["serial_display"]

    async def test_successive_batches_have_contiguous_disjoint_serials(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        other = await create_org(client, kind="seller")
        forest = await create_project(client, registry, seller)
        solar = await create_project(
            client, registry, other, category="renewable_power", methodology="EN-R-002"
        )
        batches = [
            await issue(client, registry, forest, seller, 10),
            await issue(client, registry, solar, other, 1),
            await issue(client, registry, forest, other, 500),
            await issue(client, registry, solar, seller, 7),
        ]
        for batch, quantity in zip(batches, [10, 1, 500, 7], strict=True):
            assert batch["serial_end"] - batch["serial_start"] + 1 == quantity
        for before, after in itertools.pairwise(batches):
            assert after["serial_start"] == before["serial_end"] + 1
        serials = [s for b in batches for s in range(b["serial_start"], b["serial_end"] + 1)]
        assert len(serials) == len(set(serials)) == 518
        await assert_books_clean(session)

    async def test_refused_issuance_does_not_use_serials(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        first = await issue(client, registry, project, seller, 10)
        r = await client.post(
            "/v1/issuances",
            json=issuance_body(project, seller, holder_organization_id=str(uuid.uuid4())),
            headers=registry.headers,
        )
        assert r.status_code == 404
        second = await issue(client, registry, project, seller, 10)
        assert second["serial_start"] == first["serial_end"] + 1
        await assert_books_clean(session)


class TestGetBatch:
    async def test_any_key_reads_a_batch(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        registry = await registry_org(client)
        seller = await create_org(client, kind="seller")
        project = await create_project(client, registry, seller)
        batch = await issue(client, registry, project, seller, 42, labels=["removal"])
        stranger = await create_org(client, kind="company", scopes=["keys"])
        for headers in (stranger.headers, seller.headers, registry.headers, ADMIN):
            r = await client.get(f"/v1/batches/{batch['id']}", headers=headers)
            assert r.status_code == 200, r.text
            assert r.json() == batch
        await assert_books_clean(session)

    async def test_needs_a_key(self, client: httpx.AsyncClient) -> None:
        registry = await registry_org(client)
        project = await create_project(client, registry, registry)
        batch = await issue(client, registry, project, registry, 1)
        r = await client.get(f"/v1/batches/{batch['id']}")
        assert_problem(r, 401, "invalid_api_key")

    async def test_unknown_batch_is_404(self, client: httpx.AsyncClient) -> None:
        reader = await create_org(client, kind="company", scopes=["read"])
        r = await client.get(f"/v1/batches/{uuid.uuid4()}", headers=reader.headers)
        assert_problem(r, 404, "batch_not_found")
        r = await client.get("/v1/batches/not-a-uuid", headers=reader.headers)
        assert_problem(r, 422, "validation_error")
