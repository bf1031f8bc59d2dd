"""POST /v1/organizations, GET /v1/organizations/{id}, GET /v1/organizations."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.core.helpers import assert_problem, error_locations, scalar
from tests.factories import ADMIN, create_org

VALID_CORPORATE_NUMBER = "7000012050002"


async def _create(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/organizations", json=body, headers=ADMIN)


class TestCreateOrganization:
    async def test_admin_creates_an_organization(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        r = await _create(
            client,
            name="Tanso Trading",
            kind="company",
            prefecture="13",
            corporate_number=VALID_CORPORATE_NUMBER,
            group="Tanso Group",
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) >= {"id", "name", "kind", "prefecture", "status"}
        assert body["name"] == "Tanso Trading"
        assert body["kind"] == "company"
        assert body["prefecture"] == "13"
        assert body["corporate_number"] == VALID_CORPORATE_NUMBER
        assert body["group"] == "Tanso Group"
        assert body["status"] == "active"
        uuid.UUID(body["id"])
        assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
        row = await scalar(
            engine,
            "SELECT json_build_object('name', name, 'kind', kind, 'prefecture', prefecture,"
            " 'corporate_number', corporate_number, 'status', status)"
            " FROM organizations WHERE id = :id",
            id=uuid.UUID(body["id"]),
        )
        assert row == {
            "name": "Tanso Trading",
            "kind": "company",
            "prefecture": "13",
            "corporate_number": VALID_CORPORATE_NUMBER,
            "status": "active",
        }

    async def test_every_kind_is_accepted(self, client: httpx.AsyncClient) -> None:
        for kind in ["company", "municipality", "seller", "government", "platform"]:
            r = await _create(client, name=f"A {kind}", kind=kind)
            assert r.status_code == 201, r.text
            assert r.json()["kind"] == kind

    async def test_optional_fields_default_to_null(self, client: httpx.AsyncClient) -> None:
        r = await _create(client, name="Minimal", kind="seller")
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["prefecture"] is None
        assert body["corporate_number"] is None
        assert body["group"] is None

    async def test_name_is_trimmed(self, client: httpx.AsyncClient) -> None:
        r = await _create(client, name="  北海道庁\u3000", kind="municipality", group=" G ")
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "北海道庁"
        assert r.json()["group"] == "G"

    async def test_prefecture_codes_01_to_47(self, client: httpx.AsyncClient) -> None:
        for prefecture in ["01", "13", "47"]:
            r = await _create(client, name="P", kind="municipality", prefecture=prefecture)
            assert r.status_code == 201, r.text
            assert r.json()["prefecture"] == prefecture

    # Every malformed shape is covered by test_validation.py; here the API's handling of them.
    # "13\n" passed the old `$`-anchored check and then overflowed the column: a 500.
    @pytest.mark.parametrize("prefecture", ["48", "00", 13, "13\n"])
    async def test_invalid_prefecture_is_rejected(
        self, client: httpx.AsyncClient, engine: AsyncEngine, prefecture: object
    ) -> None:
        r = await _create(client, name="P", kind="municipality", prefecture=prefecture)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "prefecture")}
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 0

    async def test_valid_corporate_number_is_accepted(self, client: httpx.AsyncClient) -> None:
        r = await _create(client, name="C", kind="company", corporate_number="1180301018771")
        assert r.status_code == 201, r.text
        assert r.json()["corporate_number"] == "1180301018771"

    @pytest.mark.parametrize("first", ["8", "0"])
    async def test_corporate_number_with_a_wrong_check_digit_is_rejected(
        self, client: httpx.AsyncClient, first: str
    ) -> None:
        r = await _create(
            client, name="C", kind="company", corporate_number=first + VALID_CORPORATE_NUMBER[1:]
        )
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "corporate_number")}
        assert "check digit" in body["errors"][0]["msg"]

    @pytest.mark.parametrize(
        "number",
        ["700001205000", "7000012050002\n", 7000012050002],
    )
    async def test_malformed_corporate_number_is_rejected(
        self, client: httpx.AsyncClient, number: object
    ) -> None:
        r = await _create(client, name="C", kind="company", corporate_number=number)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "corporate_number")}
        assert "int()" not in body["errors"][0]["msg"]  # no Python internals leak out

    async def test_duplicate_corporate_number_conflicts(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        first = await _create(
            client, name="First", kind="company", corporate_number=VALID_CORPORATE_NUMBER
        )
        assert first.status_code == 201, first.text
        r = await _create(
            client, name="Second", kind="seller", corporate_number=VALID_CORPORATE_NUMBER
        )
        body = assert_problem(r, 409, "corporate_number_taken")
        assert body["corporate_number"] == VALID_CORPORATE_NUMBER
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 1

    @pytest.mark.concurrency
    async def test_concurrent_creates_with_one_corporate_number_make_one_organization(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        responses = await asyncio.gather(
            *(
                _create(client, name=f"Racer {i}", kind="company", corporate_number="1180301018771")
                for i in range(10)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] + [409] * 9, [r.text for r in responses]
        for r in responses:
            if r.status_code == 409:
                assert_problem(r, 409, "corporate_number_taken")
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 1

    @pytest.mark.parametrize("field", ["status", "Name"])
    async def test_unknown_fields_are_rejected(
        self, client: httpx.AsyncClient, engine: AsyncEngine, field: str
    ) -> None:
        r = await client.post(
            "/v1/organizations", json={"name": "X", "kind": "company", field: "x"}, headers=ADMIN
        )
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", field)}
        assert body["errors"][0]["type"] == "extra_forbidden"
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 0

    async def test_every_invalid_field_is_listed(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/organizations",
            json={"name": 123, "kind": "Company", "prefecture": 13, "group": []},
            headers=ADMIN,
        )
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {
            ("body", "name"),
            ("body", "kind"),
            ("body", "prefecture"),
            ("body", "group"),
        }

    async def test_missing_required_fields_are_listed(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/organizations", json={}, headers=ADMIN)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "name"), ("body", "kind")}

    @pytest.mark.parametrize("kind", ["Company", "individual", None])
    async def test_unknown_kind_is_rejected(self, client: httpx.AsyncClient, kind: object) -> None:
        r = await _create(client, name="K", kind=kind)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "kind")}

    @pytest.mark.parametrize("name", ["", "\u3000\t ", None])
    async def test_blank_name_is_rejected(self, client: httpx.AsyncClient, name: object) -> None:
        r = await _create(client, name=name, kind="company")
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "name")}

    async def test_name_of_200_characters_is_accepted(self, client: httpx.AsyncClient) -> None:
        r = await _create(client, name="名" * 200, kind="company")
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "名" * 200

    @pytest.mark.parametrize("length", [201, 100_000])
    async def test_overlong_name_is_rejected(
        self, client: httpx.AsyncClient, engine: AsyncEngine, length: int
    ) -> None:
        r = await _create(client, name="x" * length, kind="company")
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "name")}
        assert len(r.content) < 1_000  # the input is not echoed back
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 0

    async def test_overlong_group_is_rejected(self, client: httpx.AsyncClient) -> None:
        r = await _create(client, name="G", kind="company", group="g" * 101)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "group")}

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("name", "Acme\x00Corp"),  # PostgreSQL cannot store NUL: this was a 500
            ("name", "two\nlines"),
            ("group", "g\x00"),
        ],
    )
    async def test_control_characters_are_rejected(
        self, client: httpx.AsyncClient, engine: AsyncEngine, field: str, value: str
    ) -> None:
        body_in = {"name": "Plain", "kind": "company", field: value}
        r = await client.post("/v1/organizations", json=body_in, headers=ADMIN)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", field)}
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 0

    async def test_lone_surrogate_is_rejected(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/organizations",
            content=b'{"name": "bad \\ud800 name", "kind": "company"}',
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "name")}

    @pytest.mark.parametrize("content", [b"[]", b"{", b""])
    async def test_body_must_be_a_json_object(
        self, client: httpx.AsyncClient, content: bytes
    ) -> None:
        r = await client.post(
            "/v1/organizations",
            content=content,
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert_problem(r, 422, "validation_error")

    async def test_member_key_is_forbidden(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        r = await client.post(
            "/v1/organizations", json={"name": "X", "kind": "company"}, headers=org.headers
        )
        body = assert_problem(r, 403, "insufficient_scope")
        assert body["required"] == ["admin"]
        assert await scalar(engine, "SELECT count(*) FROM organizations") == 1

    async def test_anonymous_is_unauthorized(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/organizations", json={"name": "X", "kind": "company"})
        assert_problem(r, 401, "invalid_api_key")

    async def test_platform_key_with_admin_scope_may_create(
        self, client: httpx.AsyncClient
    ) -> None:
        platform = await create_org(client, kind="platform", scopes=["admin"])
        r = await client.post(
            "/v1/organizations", json={"name": "X", "kind": "company"}, headers=platform.headers
        )
        assert r.status_code == 201, r.text


class TestGetOrganization:
    async def test_admin_reads_any_organization(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, prefecture="27")
        r = await client.get(f"/v1/organizations/{org.id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json() == org.body

    async def test_organization_reads_itself_with_any_scope(
        self, client: httpx.AsyncClient
    ) -> None:
        org = await create_org(client, scopes=["trade"])
        r = await client.get(f"/v1/organizations/{org.id}", headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.json() == org.body

    async def test_another_organization_is_not_found(self, client: httpx.AsyncClient) -> None:
        mine = await create_org(client)
        theirs = await create_org(client)
        r = await client.get(f"/v1/organizations/{theirs.id}", headers=mine.headers)
        hidden = assert_problem(r, 404, "organization_not_found")
        unknown = assert_problem(
            await client.get(f"/v1/organizations/{uuid.uuid4()}", headers=mine.headers),
            404,
            "organization_not_found",
        )
        # Indistinguishable from an id that does not exist: nothing about the other org leaks.
        assert {k: v for k, v in hidden.items() if k != "instance"} == {
            k: v for k, v in unknown.items() if k != "instance"
        }

    async def test_unknown_id_is_not_found(self, client: httpx.AsyncClient) -> None:
        r = await client.get(f"/v1/organizations/{uuid.uuid4()}", headers=ADMIN)
        assert_problem(r, 404, "organization_not_found")

    async def test_malformed_id_is_rejected(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/organizations/not-a-uuid", headers=ADMIN)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("path", "organization_id")}

    async def test_anonymous_is_unauthorized(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        assert_problem(await client.get(f"/v1/organizations/{org.id}"), 401, "invalid_api_key")


async def _make_orgs(client: httpx.AsyncClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = await _create(client, name=f"Paged {i}", kind="company")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


async def _walk(client: httpx.AsyncClient, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        r = await client.get("/v1/organizations", params=params, headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"data", "next_cursor"}
        pages.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


class TestListOrganizations:
    async def test_lists_newest_first_with_default_limit(self, client: httpx.AsyncClient) -> None:
        ids = await _make_orgs(client, 3)
        r = await client.get("/v1/organizations", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert [o["id"] for o in r.json()["data"]] == ids[::-1]
        assert r.json()["next_cursor"] is None

    async def test_default_limit_is_50(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO organizations (id, name, kind, status, created_at, updated_at)"
                    " SELECT gen_random_uuid(), 'Bulk ' || g, 'company', 'active', now(), now()"
                    " FROM generate_series(1, 51) AS g"
                )
            )
        r = await client.get("/v1/organizations", headers=ADMIN)
        assert len(r.json()["data"]) == 50
        assert r.json()["next_cursor"] is not None

    async def test_walking_every_page_yields_each_organization_once(
        self, client: httpx.AsyncClient
    ) -> None:
        ids = await _make_orgs(client, 23)
        pages = await _walk(client, limit=5)
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        seen = [o["id"] for page in pages for o in page]
        assert len(seen) == len(set(seen))  # no duplicates
        assert seen == ids[::-1]  # no gaps, newest first

    async def test_last_full_page_has_no_cursor(self, client: httpx.AsyncClient) -> None:
        await _make_orgs(client, 10)
        pages = await _walk(client, limit=5)
        assert [len(p) for p in pages] == [5, 5]

    async def test_organizations_created_between_pages_do_not_disturb_the_walk(
        self, client: httpx.AsyncClient
    ) -> None:
        ids = await _make_orgs(client, 6)
        r = await client.get("/v1/organizations", params={"limit": 3}, headers=ADMIN)
        first = [o["id"] for o in r.json()["data"]]
        await _make_orgs(client, 2)  # newer than the cursor: not on later pages
        r = await client.get(
            "/v1/organizations",
            params={"limit": 3, "cursor": r.json()["next_cursor"]},
            headers=ADMIN,
        )
        assert first + [o["id"] for o in r.json()["data"]] == ids[::-1]
        assert r.json()["next_cursor"] is None

    @pytest.mark.parametrize("limit", [1, 500])
    async def test_limit_bounds_are_accepted(self, client: httpx.AsyncClient, limit: int) -> None:
        await _make_orgs(client, 2)
        r = await client.get("/v1/organizations", params={"limit": limit}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == min(limit, 2)

    @pytest.mark.parametrize("limit", ["0", "501", "abc"])
    async def test_limit_out_of_bounds_is_rejected(
        self, client: httpx.AsyncClient, limit: str
    ) -> None:
        r = await client.get("/v1/organizations", params={"limit": limit}, headers=ADMIN)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("query", "limit")}

    @pytest.mark.parametrize(
        "cursor",
        [
            "zzzz",  # base64 of bytes that are not a key
            "a",  # impossible base64 length
            base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),  # not UTF-8
            "x" * 201,  # over the maximum length
        ],
    )
    async def test_bad_cursor_is_rejected(self, client: httpx.AsyncClient, cursor: str) -> None:
        r = await client.get("/v1/organizations", params={"cursor": cursor}, headers=ADMIN)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("query", "cursor")}

    async def test_member_key_is_forbidden(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.get("/v1/organizations", headers=org.headers)
        assert_problem(r, 403, "insufficient_scope")

    async def test_anonymous_is_unauthorized(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/v1/organizations"), 401, "invalid_api_key")
