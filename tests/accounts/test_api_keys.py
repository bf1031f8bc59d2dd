"""API keys: creation, listing, revocation; GET /v1/me; authentication and scopes."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ADMIN_KEY
from tests.core.helpers import assert_problem, error_locations, scalar, tables_containing
from tests.factories import ADMIN, Org, create_org

ALL_SCOPES = [
    "admin",
    "auctioneer",
    "bid",
    "keys",
    "read",
    "registry",
    "retire",
    "trade",
    "transfer",
]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _create_key(
    client: httpx.AsyncClient,
    org_id: str,
    scopes: list[str],
    headers: dict[str, str] = ADMIN,
    name: str = "ci",
) -> httpx.Response:
    return await client.post(
        f"/v1/organizations/{org_id}/api-keys",
        json={"name": name, "scopes": scopes},
        headers=headers,
    )


async def _key_count(engine: AsyncEngine, org: Org) -> int:
    count: int = await scalar(
        engine,
        "SELECT count(*) FROM api_keys WHERE organization_id = :id",
        id=uuid.UUID(org.id),
    )
    return count


class TestCreateApiKey:
    async def test_admin_creates_a_key_that_works(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await _create_key(client, org.id, ["trade", "read"], name="trading bot")
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["organization_id"] == org.id
        assert body["name"] == "trading bot"
        assert body["scopes"] == ["read", "trade"]
        assert body["revoked_at"] is None
        assert body["key"].startswith("tanso_")
        assert len(body["key"]) >= 40
        assert body["prefix"] == body["key"][:12]
        assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
        me = await client.get("/v1/me", headers=_bearer(body["key"]))
        assert me.status_code == 200, me.text
        assert me.json()["api_key"] == {"id": body["id"], "scopes": ["read", "trade"]}

    async def test_key_is_stored_only_as_a_hash(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        key = (await _create_key(client, org.id, ["read"])).json()["key"]
        secret_part = key.removeprefix("tanso_")
        found = await scalar(
            engine,
            "SELECT count(*) FROM api_keys AS k WHERE position(:secret IN k::text) > 0",
            secret=secret_part,
        )
        assert found == 0
        stored_hash = await scalar(
            engine, "SELECT key_hash FROM api_keys WHERE key_hash = :h", h=_sha256(key)
        )
        assert stored_hash == _sha256(key)

    async def test_key_created_with_an_idempotency_key_is_stored_nowhere_in_clear(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        # The replayable response used to be stored verbatim, secret included.
        org = await create_org(client)
        r = await client.post(
            f"/v1/organizations/{org.id}/api-keys",
            json={"name": "retry-safe", "scopes": ["read"]},
            headers={**ADMIN, "Idempotency-Key": "create-key-1"},
        )
        assert r.status_code == 201, r.text
        secret_part = r.json()["key"].removeprefix("tanso_")
        assert await tables_containing(engine, secret_part) == []

    async def test_every_key_is_different(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        keys = {(await _create_key(client, org.id, ["read"])).json()["key"] for _ in range(3)}
        assert len(keys) == 3

    async def test_repeated_scopes_are_collapsed(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await _create_key(client, org.id, ["trade", "read", "trade"])
        assert r.status_code == 201, r.text
        assert r.json()["scopes"] == ["read", "trade"]

    async def test_organization_with_keys_scope_creates_its_own_key(
        self, client: httpx.AsyncClient
    ) -> None:
        org = await create_org(client, scopes=["keys", "read", "trade"])
        r = await _create_key(client, org.id, ["read"], headers=org.headers)
        assert r.status_code == 201, r.text
        assert r.json()["organization_id"] == org.id
        assert r.json()["scopes"] == ["read"]

    async def test_organization_without_keys_scope_is_forbidden(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client, scopes=["read", "trade"])
        r = await _create_key(client, org.id, ["read"], headers=org.headers)
        body = assert_problem(r, 403, "insufficient_scope")
        assert body["required"] == ["keys"]
        assert await _key_count(engine, org) == 1

    async def test_key_cannot_grant_scopes_it_lacks(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client, scopes=["keys", "read"])
        r = await _create_key(client, org.id, ["read", "trade"], headers=org.headers)
        body = assert_problem(r, 422, "scope_not_allowed")
        assert error_locations(body) == {("body", "scopes")}
        assert "trade" in body["detail"]
        assert await _key_count(engine, org) == 1

    async def test_another_organizations_keys_cannot_be_created(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        mine = await create_org(client)
        theirs = await create_org(client)
        r = await _create_key(client, theirs.id, ["read"], headers=mine.headers)
        assert_problem(r, 404, "organization_not_found")
        assert await _key_count(engine, theirs) == 1

    @pytest.mark.parametrize(
        ("kind", "scope"),
        [
            ("company", "admin"),
            ("company", "auctioneer"),
            ("municipality", "auctioneer"),
            ("government", "admin"),
            ("government", "registry"),
        ],
    )
    async def test_platform_only_scopes_are_refused_to_other_kinds(
        self, client: httpx.AsyncClient, engine: AsyncEngine, kind: str, scope: str
    ) -> None:
        org = await create_org(client, kind=kind, scopes=["read"])
        r = await _create_key(client, org.id, ["read", scope])
        body = assert_problem(r, 422, "scope_not_allowed")
        assert error_locations(body) == {("body", "scopes")}
        assert scope in body["detail"]
        assert await _key_count(engine, org) == 1

    async def test_government_may_hold_auctioneer(self, client: httpx.AsyncClient) -> None:
        gov = await create_org(client, kind="government", scopes=["keys", "auctioneer"])
        r = await _create_key(client, gov.id, ["auctioneer"], headers=gov.headers)
        assert r.status_code == 201, r.text
        assert r.json()["scopes"] == ["auctioneer"]

    async def test_platform_may_hold_every_scope(self, client: httpx.AsyncClient) -> None:
        platform = await create_org(client, kind="platform", scopes=["read"])
        r = await _create_key(client, platform.id, ALL_SCOPES)
        assert r.status_code == 201, r.text
        assert r.json()["scopes"] == ALL_SCOPES

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"name": "k", "scopes": []}, "scopes"),
            ({"name": "k", "scopes": ["superuser"]}, "scopes"),
            ({"name": "k", "scopes": ["read"] * 10}, "scopes"),
            ({"name": "  ", "scopes": ["read"]}, "name"),
            ({"name": "k" * 101, "scopes": ["read"]}, "name"),
            ({"name": "k\x00", "scopes": ["read"]}, "name"),
            ({"name": "k", "scopes": ["read"], "key": "tanso_chosen"}, "key"),
        ],
    )
    async def test_invalid_body_is_rejected(
        self, client: httpx.AsyncClient, body: dict[str, Any], field: str
    ) -> None:
        org = await create_org(client)
        r = await client.post(f"/v1/organizations/{org.id}/api-keys", json=body, headers=ADMIN)
        problem = assert_problem(r, 422, "validation_error")
        assert {loc[1] for loc in error_locations(problem)} == {field}

    async def test_unknown_organization_is_not_found(self, client: httpx.AsyncClient) -> None:
        r = await _create_key(client, str(uuid.uuid4()), ["read"])
        assert_problem(r, 404, "organization_not_found")

    async def test_malformed_organization_id_is_rejected(self, client: httpx.AsyncClient) -> None:
        r = await _create_key(client, "nope", ["read"])
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("path", "organization_id")}

    async def test_anonymous_is_unauthorized(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        assert_problem(
            await _create_key(client, org.id, ["read"], headers={}), 401, "invalid_api_key"
        )


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class TestListApiKeys:
    async def test_lists_keys_without_their_secrets(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        created = (await _create_key(client, org.id, ["read"], name="second")).json()
        r = await client.get(f"/v1/organizations/{org.id}/api-keys", headers=ADMIN)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [k["id"] for k in data] == [created["id"], org.key_id]  # newest first
        assert all("key" not in k for k in data)
        for secret in (created["key"], org.key):
            assert secret.removeprefix("tanso_") not in r.text
        listed = data[0]
        assert listed == {k: v for k, v in created.items() if k != "key"}

    async def test_organization_lists_its_own_keys(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["read"])
        r = await client.get(f"/v1/organizations/{org.id}/api-keys", headers=org.headers)
        assert r.status_code == 200, r.text
        assert [k["id"] for k in r.json()["data"]] == [org.key_id]

    async def test_another_organizations_keys_are_not_found(
        self, client: httpx.AsyncClient
    ) -> None:
        mine = await create_org(client)
        theirs = await create_org(client)
        r = await client.get(f"/v1/organizations/{theirs.id}/api-keys", headers=mine.headers)
        assert_problem(r, 404, "organization_not_found")

    async def test_pages_through_keys(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        ids = [org.key_id, (await _create_key(client, org.id, ["read"])).json()["id"]]
        r = await client.get(
            f"/v1/organizations/{org.id}/api-keys", params={"limit": 1}, headers=ADMIN
        )
        first = r.json()
        assert [k["id"] for k in first["data"]] == [ids[1]]
        r = await client.get(
            f"/v1/organizations/{org.id}/api-keys",
            params={"limit": 1, "cursor": first["next_cursor"]},
            headers=ADMIN,
        )
        assert [k["id"] for k in r.json()["data"]] == [ids[0]]
        assert r.json()["next_cursor"] is None


class TestRevokeApiKey:
    async def test_admin_revokes_and_the_key_stops_working_at_once(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
        r = await client.delete(f"/v1/api-keys/{org.key_id}", headers=ADMIN)
        assert r.status_code == 204, r.text
        assert r.content == b""
        assert_problem(await client.get("/v1/me", headers=org.headers), 401, "invalid_api_key")
        revoked_at = await scalar(
            engine, "SELECT revoked_at FROM api_keys WHERE id = :id", id=uuid.UUID(org.key_id)
        )
        assert revoked_at is not None
        listed = await client.get(f"/v1/organizations/{org.id}/api-keys", headers=ADMIN)
        assert listed.json()["data"][0]["revoked_at"] is not None

    async def test_owner_with_keys_scope_revokes_another_of_its_keys(
        self, client: httpx.AsyncClient
    ) -> None:
        org = await create_org(client, scopes=["keys", "read"])
        other = (await _create_key(client, org.id, ["read"])).json()
        r = await client.delete(f"/v1/api-keys/{other['id']}", headers=org.headers)
        assert r.status_code == 204, r.text
        assert_problem(
            await client.get("/v1/me", headers=_bearer(other["key"])), 401, "invalid_api_key"
        )
        assert (await client.get("/v1/me", headers=org.headers)).status_code == 200

    async def test_key_may_revoke_itself(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["keys"])
        r = await client.delete(f"/v1/api-keys/{org.key_id}", headers=org.headers)
        assert r.status_code == 204, r.text
        assert_problem(await client.get("/v1/me", headers=org.headers), 401, "invalid_api_key")

    async def test_another_organizations_key_is_not_found(self, client: httpx.AsyncClient) -> None:
        mine = await create_org(client)
        theirs = await create_org(client)
        r = await client.delete(f"/v1/api-keys/{theirs.key_id}", headers=mine.headers)
        assert_problem(r, 404, "api_key_not_found")
        assert (await client.get("/v1/me", headers=theirs.headers)).status_code == 200

    async def test_owner_without_keys_scope_is_forbidden(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["read"])
        other = (await _create_key(client, org.id, ["read"])).json()
        r = await client.delete(f"/v1/api-keys/{other['id']}", headers=org.headers)
        assert_problem(r, 403, "insufficient_scope")
        assert (await client.get("/v1/me", headers=_bearer(other["key"]))).status_code == 200

    async def test_revoking_twice_is_fine_and_keeps_the_first_time(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        assert (await client.delete(f"/v1/api-keys/{org.key_id}", headers=ADMIN)).status_code == 204
        sql = "SELECT revoked_at FROM api_keys WHERE id = :id"
        first = await scalar(engine, sql, id=uuid.UUID(org.key_id))
        assert (await client.delete(f"/v1/api-keys/{org.key_id}", headers=ADMIN)).status_code == 204
        assert await scalar(engine, sql, id=uuid.UUID(org.key_id)) == first

    async def test_revoked_key_cannot_revoke(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["keys", "read"])
        other = (await _create_key(client, org.id, ["read"])).json()
        await client.delete(f"/v1/api-keys/{org.key_id}", headers=ADMIN)
        r = await client.delete(f"/v1/api-keys/{other['id']}", headers=org.headers)
        assert_problem(r, 401, "invalid_api_key")

    async def test_unknown_key_is_not_found(self, client: httpx.AsyncClient) -> None:
        r = await client.delete(f"/v1/api-keys/{uuid.uuid4()}", headers=ADMIN)
        assert_problem(r, 404, "api_key_not_found")

    async def test_malformed_id_is_rejected(self, client: httpx.AsyncClient) -> None:
        r = await client.delete("/v1/api-keys/admin", headers=ADMIN)
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("path", "api_key_id")}


class TestMe:
    async def test_organization_key(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["trade", "read"])
        r = await client.get("/v1/me", headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "organization": org.body,
            "api_key": {"id": org.key_id, "scopes": ["read", "trade"]},
        }

    async def test_admin_key(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/me", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json() == {"organization": None, "api_key": {"id": "admin", "scopes": ALL_SCOPES}}


class TestAuthentication:
    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "Bearer ",
            "Bearer tanso_" + "A" * 43,
            f"Bearer {ADMIN_KEY}x",
            f"Basic {ADMIN_KEY}",
            ADMIN_KEY,
        ],
    )
    async def test_missing_or_invalid_credentials_are_unauthorized(
        self, client: httpx.AsyncClient, authorization: str | None
    ) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        r = await client.get("/v1/me", headers=headers)
        assert_problem(r, 401, "invalid_api_key")

    async def test_scheme_is_case_insensitive(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/me", headers={"Authorization": f"bearer {ADMIN_KEY}"})
        assert r.status_code == 200, r.text

    async def test_suspended_organizations_keys_are_unauthorized(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE organizations SET status = 'suspended' WHERE id = :id"),
                {"id": uuid.UUID(org.id)},
            )
        assert_problem(await client.get("/v1/me", headers=org.headers), 401, "invalid_api_key")

    @pytest.mark.parametrize(
        ("scopes", "method", "path", "required"),
        [
            (["read"], "POST", "/v1/organizations", ["admin"]),
            (["trade"], "GET", "/v1/balances", ["read"]),
            (["keys", "trade"], "GET", "/v1/organizations", ["admin"]),
        ],
    )
    async def test_missing_scope_is_forbidden(
        self,
        client: httpx.AsyncClient,
        scopes: list[str],
        method: str,
        path: str,
        required: list[str],
    ) -> None:
        org = await create_org(client, scopes=scopes)
        json = {"name": "X", "kind": "company"} if method == "POST" else None
        r = await client.request(method, path, headers=org.headers, json=json)
        body = assert_problem(r, 403, "insufficient_scope")
        assert body["required"] == required
