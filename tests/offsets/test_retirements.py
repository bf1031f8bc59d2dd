"""Retirements through the API: purposes, refusals, held credits, reads, the public register."""

from __future__ import annotations

import csv
import io
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.offsets import service as offsets_service
from tests.factories import create_org
from tests.offsets.helpers import (
    assert_books_clean,
    assert_problem,
    count_rows,
    credit_balances,
    holdings,
    live_blocks,
    new_batch,
    retire,
    retired,
    transfer,
)

CSV_COLUMNS = [
    "code", "retired_at", "retired_by", "beneficiary_name", "purpose", "purpose_detail",
    "quantity", "project_code", "project_name", "methodology", "category", "vintage",
    "serial_display", "certificate_url",
]  # fmt: skip


class TestRetire:
    async def test_retire_takes_the_lowest_serials(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company", name="Sakura Foods K.K.")
        issued = await new_batch(client, holder, 100)
        s, e = issued.start, issued.end
        r = await retire(
            client, holder, issued.batch_id, 10, purpose_detail="FY2025 product offset"
        )
        assert r.status_code == 201, r.text
        retirement = r.json()
        assert retirement["serial_ranges"] == [[s, s + 9]]
        assert retirement["quantity"] == 10
        assert retirement["batch_id"] == issued.batch_id
        assert retirement["purpose"] == "offset"
        assert retirement["purpose_detail"] == "FY2025 product offset"
        assert retirement["beneficiary_name"] == "Sakura Foods K.K."
        assert retirement["public"] is True
        assert retirement["claimed_g"] == 0
        assert retirement["code"].startswith("RT-")
        assert retirement["certificate_url"].endswith(
            f"/v1/public/retirements/{retirement['code']}/certificate"
        )
        assert retirement["vintage"] == 2024

        second = await retired(client, holder, issued.batch_id, 5)
        assert second["serial_ranges"] == [[s + 10, s + 14]]
        holding = (await holdings(client, holder))[issued.batch_id]
        assert holding["available"] == 85
        assert holding["serial_ranges"] == [[s + 15, e]]
        assert await credit_balances(client, holder) == {issued.batch_id: (85, 0)}
        assert await live_blocks(session, issued.batch_id) == [
            (s, s + 9, "retired"),
            (s + 10, s + 14, "retired"),
            (s + 15, e, "active"),
        ]
        await assert_books_clean(session)

    async def test_retirement_across_a_gap_lists_both_ranges(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        other = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 100)
        s, e = issued.start, issued.end
        assert (await transfer(client, holder, other, issued.batch_id, 40)).status_code == 201
        assert (await transfer(client, other, holder, issued.batch_id, 10)).status_code == 201
        # The holder has [s, s+9] and [s+40, e]: the lowest 15 span the gap.
        retirement = await retired(client, holder, issued.batch_id, 15)
        assert retirement["serial_ranges"] == [[s, s + 9], [s + 40, s + 44]]
        assert len(retirement["serial_display"]) == 2
        r = await client.get(f"/v1/public/retirements/{retirement['code']}")
        assert r.json()["serial_ranges"] == [[s, s + 9], [s + 40, s + 44]]
        assert (await holdings(client, holder))[issued.batch_id]["serial_ranges"] == [[s + 45, e]]
        # And a transfer across the gap the other way.
        r = await transfer(client, other, holder, issued.batch_id, 30)
        assert r.status_code == 201, r.text
        assert r.json()["serial_ranges"] == [[s + 10, s + 39]]
        assert (await holdings(client, holder))[issued.batch_id]["serial_ranges"] == [
            [s + 10, s + 39],
            [s + 45, e],
        ]
        await assert_books_clean(session)

    async def test_retiring_everything_empties_the_holding(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 20)
        await retired(client, holder, issued.batch_id, 20)
        assert await holdings(client, holder) == {}
        assert await credit_balances(client, holder) == {issued.batch_id: (0, 0)}
        await assert_books_clean(session)

    @pytest.mark.parametrize("purpose", ["offset", "law_reporting", "sbt", "other"])
    async def test_purposes_for_any_category(
        self, client: httpx.AsyncClient, session: AsyncSession, purpose: str
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10, category="forest")
        r = await retire(client, holder, issued.batch_id, 1, purpose=purpose)
        assert r.status_code == 201, r.text
        assert r.json()["purpose"] == purpose
        await assert_books_clean(session)

    async def test_re100_from_renewable_power(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10, category="renewable_power")
        r = await retire(client, holder, issued.batch_id, 3, purpose="re100")
        assert r.status_code == 201, r.text
        assert r.json()["purpose"] == "re100"
        assert r.json()["category"] == "renewable_power"
        await assert_books_clean(session)

    @pytest.mark.parametrize(
        "category",
        [
            "energy_saving",
            "renewable_heat",
            "forest",
            "industrial",
            "agriculture",
            "waste",
            "other",
        ],
    )
    async def test_re100_from_other_categories_is_refused(
        self, client: httpx.AsyncClient, session: AsyncSession, category: str
    ) -> None:
        holder = await create_org(client, kind="company")
        methodology = {"forest": "FO-001", "agriculture": "AG-001"}.get(category, "EN-S-001")
        issued = await new_batch(client, holder, 10, category=category, methodology=methodology)
        r = await retire(client, holder, issued.batch_id, 3, purpose="re100")
        body = assert_problem(r, 422, "purpose_not_allowed")
        assert body["errors"][0]["loc"] == ["body", "purpose"]
        assert await count_rows(session, "offset_retirements") == 0
        assert await credit_balances(client, holder) == {issued.batch_id: (10, 0)}
        await assert_books_clean(session)

    async def test_invalid_bodies_are_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        cases: list[dict[str, object]] = [
            {"purpose": "carbon_neutral"},
            {"purpose": "RE100"},
            {"purpose": None},
            {"quantity": 0},
            {"quantity": -1},
            {"quantity": 1.5},
            {"quantity": "1"},
            {"beneficiary_name": ""},
            {"beneficiary_name": "   "},
            {"beneficiary_name": "x" * 201},
            {"purpose_detail": "x" * 501},
            {"batch_id": "not-a-batch"},
            {"unknown_field": 1},
        ]
        for case in cases:
            body = {
                "batch_id": issued.batch_id,
                "quantity": 1,
                "purpose": "offset",
                "beneficiary_name": "Sakura",
                **case,
            }
            r = await client.post("/v1/retirements", json=body, headers=holder.headers)
            assert_problem(r, 422, "validation_error")
        assert await count_rows(session, "offset_retirements") == 0
        await assert_books_clean(session)

    async def test_more_than_available_is_409(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        r = await retire(client, holder, issued.batch_id, 11)
        body = assert_problem(r, 409, "insufficient_credits")
        assert (body["requested"], body["available"]) == (11, 10)
        assert await count_rows(session, "offset_retirements") == 0
        assert await credit_balances(client, holder) == {issued.batch_id: (10, 0)}
        await assert_books_clean(session)

    async def test_another_orgs_batch_is_409(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        stranger = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        r = await retire(client, stranger, issued.batch_id, 1)
        body = assert_problem(r, 409, "insufficient_credits")
        assert body["available"] == 0
        assert await count_rows(session, "offset_retirements") == 0
        await assert_books_clean(session)

    async def test_unknown_batch_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        r = await retire(client, holder, str(uuid.uuid4()), 1)
        assert_problem(r, 404, "batch_not_found")

    async def test_retire_scope_required(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company", scopes=["read", "transfer", "trade"])
        issued = await new_batch(client, holder, 10)
        r = await retire(client, holder, issued.batch_id, 1)
        assert_problem(r, 403, "insufficient_scope")
        assert await count_rows(session, "offset_retirements") == 0

    async def test_held_credits_cannot_be_retired(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 100)
        s, e = issued.start, issued.end
        hold_id = await offsets_service.hold_credits(
            session,
            uuid.UUID(holder.id),
            uuid.UUID(issued.batch_id),
            60,
            reference="sell-order-1",
        )
        await session.commit()

        r = await retire(client, holder, issued.batch_id, 41)
        body = assert_problem(r, 409, "insufficient_credits")
        assert (body["requested"], body["available"]) == (41, 40)
        assert await count_rows(session, "offset_retirements") == 0

        retirement = await retired(client, holder, issued.batch_id, 40)
        assert retirement["serial_ranges"] == [[s + 60, e]]
        r = await retire(client, holder, issued.batch_id, 1)
        assert_problem(r, 409, "insufficient_credits")

        holding = (await holdings(client, holder))[issued.batch_id]
        assert (holding["available"], holding["held"]) == (0, 60)
        assert holding["held_serial_ranges"] == [[s, s + 59]]
        assert await credit_balances(client, holder) == {issued.batch_id: (0, 60)}
        # Nor can they be transferred.
        other = await create_org(client, kind="company")
        assert_problem(
            await transfer(client, holder, other, issued.batch_id, 1), 409, "insufficient_credits"
        )
        await assert_books_clean(session)

        # Once released, they can.
        await offsets_service.release_credits(session, uuid.UUID(issued.batch_id), hold_id)
        await session.commit()
        assert (await retired(client, holder, issued.batch_id, 60))["serial_ranges"] == [
            [s, s + 59]
        ]
        await assert_books_clean(session)

    async def test_idempotent_replay_retires_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        body = {
            "batch_id": issued.batch_id,
            "quantity": 4,
            "purpose": "offset",
            "beneficiary_name": "Sakura",
        }
        headers = {**holder.headers, "Idempotency-Key": "retire-0001"}
        first = await client.post("/v1/retirements", json=body, headers=headers)
        assert first.status_code == 201, first.text
        second = await client.post("/v1/retirements", json=body, headers=headers)
        assert second.status_code == 201, second.text
        assert second.headers["idempotent-replayed"] == "true"
        assert second.json() == first.json()
        assert await count_rows(session, "offset_retirements") == 1
        assert await credit_balances(client, holder) == {issued.batch_id: (6, 0)}
        await assert_books_clean(session)


class TestGetRetirement:
    async def test_owner_reads_it(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 2)
        r = await client.get(f"/v1/retirements/{retirement['id']}", headers=holder.headers)
        assert r.status_code == 200, r.text
        assert r.json() == retirement

    async def test_another_org_gets_404(self, client: httpx.AsyncClient) -> None:
        holder = await create_org(client, kind="company")
        stranger = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 2)
        r = await client.get(f"/v1/retirements/{retirement['id']}", headers=stranger.headers)
        assert_problem(r, 404, "retirement_not_found")
        r = await client.get(f"/v1/retirements/{uuid.uuid4()}", headers=holder.headers)
        assert_problem(r, 404, "retirement_not_found")


class TestPublicRegister:
    async def test_json_pages_and_csv_list_only_public_retirements(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company", name="Hokkaido Dairy K.K.")
        issued = await new_batch(client, holder, 100)
        public = [await retired(client, holder, issued.batch_id, q) for q in (1, 2, 3)]
        r = await retire(client, holder, issued.batch_id, 4, public=False)
        assert r.status_code == 201, r.text
        private = r.json()
        assert private["public"] is False

        first = await client.get("/v1/public/retirements", params={"limit": 2})
        assert first.status_code == 200, first.text
        page1 = first.json()
        assert len(page1["data"]) == 2
        assert page1["next_cursor"]
        second = await client.get(
            "/v1/public/retirements", params={"limit": 2, "cursor": page1["next_cursor"]}
        )
        page2 = second.json()
        assert len(page2["data"]) == 1
        assert page2["next_cursor"] is None
        codes = [x["code"] for x in page1["data"] + page2["data"]]
        # Newest first; the private one is nowhere.
        assert codes == [p["code"] for p in reversed(public)]
        entry = page1["data"][0]
        assert entry["retired_by"] == "Hokkaido Dairy K.K."
        assert entry["project_name"] == issued.project["name"]
        assert entry["methodology"] == "FO-001"
        assert entry["quantity"] == 3
        assert entry["serial_ranges"] == public[2]["serial_ranges"]

        everything = (await client.get("/v1/public/retirements")).json()
        assert private["code"] not in [x["code"] for x in everything["data"]]
        assert everything["next_cursor"] is None

        r = await client.get("/v1/public/retirements", params={"format": "csv"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == CSV_COLUMNS
        assert [row[0] for row in rows[1:]] == [p["code"] for p in reversed(public)]
        assert private["code"] not in r.text
        first_row = dict(zip(CSV_COLUMNS, rows[1], strict=True))
        assert first_row["retired_by"] == "Hokkaido Dairy K.K."
        assert first_row["quantity"] == "3"
        assert first_row["purpose_detail"] == ""

        r = await client.get("/v1/public/retirements", params={"format": "csv", "limit": 1})
        assert len(list(csv.reader(io.StringIO(r.text)))) == 2
        assert r.headers["x-next-cursor"]
        await assert_books_clean(session)

    async def test_bad_paging_is_422(self, client: httpx.AsyncClient) -> None:
        for params in ({"limit": 0}, {"limit": 501}, {"cursor": "!!!"}, {"format": "xml"}):
            r = await client.get("/v1/public/retirements", params=params)
            assert_problem(r, 422, "validation_error")

    async def test_one_public_retirement_by_code(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder = await create_org(client, kind="company", name="Tohoku Rail")
        issued = await new_batch(client, holder, 100)
        retirement = await retired(client, holder, issued.batch_id, 7)
        r = await client.get(f"/v1/public/retirements/{retirement['code']}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["code"] == retirement["code"]
        assert body["retired_by"] == "Tohoku Rail"
        assert body["serial_ranges"] == retirement["serial_ranges"]
        assert body["serial_display"] == retirement["serial_display"]
        assert body["quantity"] == 7

        r = await retire(client, holder, issued.batch_id, 1, public=False)
        private = r.json()
        r = await client.get(f"/v1/public/retirements/{private['code']}")
        assert_problem(r, 404, "retirement_not_found")
        r = await client.get("/v1/public/retirements/RT-0000-0000-0000")
        assert_problem(r, 404, "retirement_not_found")


class TestRetiredBlocksAreFrozen:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE offset_blocks SET closed_at = now() WHERE retirement_id = :r",
            "UPDATE offset_blocks SET holder_organization_id = holder_organization_id"
            " WHERE retirement_id = :r",
            "DELETE FROM offset_blocks WHERE retirement_id = :r",
        ],
    )
    async def test_sql_cannot_change_a_retired_block(
        self, client: httpx.AsyncClient, session: AsyncSession, statement: str
    ) -> None:
        holder = await create_org(client, kind="company")
        issued = await new_batch(client, holder, 10)
        retirement = await retired(client, holder, issued.batch_id, 4)
        with pytest.raises(DBAPIError) as raised:
            await session.execute(text(statement), {"r": uuid.UUID(retirement["id"])})
        await session.rollback()
        assert getattr(raised.value.orig, "sqlstate", None) == "TN005"
        assert await live_blocks(session, issued.batch_id) == [
            (issued.start, issued.start + 3, "retired"),
            (issued.start + 4, issued.end, "active"),
        ]
        await assert_books_clean(session)
