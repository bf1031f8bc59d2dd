"""``Idempotency-Key`` on POST: replay, reuse, scope, errors not stored, and racing retries."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.idempotency import open_body, seal_body
from tests.core.helpers import assert_problem, error_locations, scalar
from tests.factories import ADMIN, create_org

ORG_BODY = {"name": "Idempotent Org", "kind": "company"}


def _with_key(key: str, headers: dict[str, str] = ADMIN) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def _org_count(engine: AsyncEngine) -> int:
    count: int = await scalar(engine, "SELECT count(*) FROM organizations")
    return count


async def _stored_count(engine: AsyncEngine) -> int:
    count: int = await scalar(engine, "SELECT count(*) FROM idempotency_keys")
    return count


async def _execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


class TestReplay:
    async def test_same_key_and_body_replay_the_first_response(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        first = await client.post("/v1/organizations", json=ORG_BODY, headers=_with_key("k-1"))
        second = await client.post("/v1/organizations", json=ORG_BODY, headers=_with_key("k-1"))
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        assert second.status_code == 201
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"
        assert second.headers["content-type"] == "application/json"
        assert int(second.headers["content-length"]) == len(second.content)
        assert await _org_count(engine) == 1

    async def test_replayed_deposit_is_credited_once(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        body = {"organization_id": org.id, "amount": 5_000, "reference": "bank-1"}
        responses = [
            await client.post("/v1/deposits", json=body, headers=_with_key("dep-1"))
            for _ in range(3)
        ]
        assert [r.status_code for r in responses] == [201, 201, 201]
        assert len({r.content for r in responses}) == 1
        assert await scalar(engine, "SELECT count(*) FROM ledger_deposits") == 1
        balances = await client.get("/v1/balances", headers=org.headers)
        assert balances.json()["cash"] == {"available": 5_000, "held": 0}

    async def test_replayed_key_creation_returns_the_same_working_key(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        path = f"/v1/organizations/{org.id}/api-keys"
        body = {"name": "retry", "scopes": ["read"]}
        first = await client.post(path, json=body, headers=_with_key("key-1"))
        replay = await client.post(path, json=body, headers=_with_key("key-1"))
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == first.json()
        me = await client.get("/v1/me", headers={"Authorization": f"Bearer {first.json()['key']}"})
        assert me.status_code == 200, me.text
        count = await scalar(
            engine,
            "SELECT count(*) FROM api_keys WHERE organization_id = :id",
            id=uuid.UUID(org.id),
        )
        assert count == 2  # the factory's key and this one

    async def test_requests_without_a_key_are_not_deduplicated(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        for _ in range(2):
            r = await client.post("/v1/organizations", json=ORG_BODY, headers=ADMIN)
            assert r.status_code == 201
            assert "idempotent-replayed" not in r.headers
        assert await _org_count(engine) == 2
        assert await _stored_count(engine) == 0

    async def test_other_methods_ignore_the_header(self, client: httpx.AsyncClient) -> None:
        for _ in range(2):
            r = await client.get("/v1/me", headers=_with_key("get-1"))
            assert r.status_code == 200
            assert "idempotent-replayed" not in r.headers

    async def test_stored_response_is_sealed(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        body = {"name": "Findable Name Ltd", "kind": "company"}
        r = await client.post("/v1/organizations", json=body, headers=_with_key("seal-1"))
        assert r.status_code == 201
        stored: bytes = await scalar(engine, "SELECT response_body FROM idempotency_keys")
        assert b"Findable" not in stored
        assert r.json()["id"].encode() not in stored


class TestKeyReuse:
    async def test_different_body_is_refused(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        first = await client.post("/v1/organizations", json=ORG_BODY, headers=_with_key("k-2"))
        assert first.status_code == 201
        r = await client.post(
            "/v1/organizations", json={**ORG_BODY, "name": "Other"}, headers=_with_key("k-2")
        )
        body = assert_problem(r, 422, "idempotency_key_reused")
        assert error_locations(body) == {("header", "Idempotency-Key")}
        assert await _org_count(engine) == 1

    async def test_different_path_is_refused(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        first = await client.post(
            f"/v1/organizations/{org.id}/api-keys",
            json={"name": "k", "scopes": ["read"]},
            headers=_with_key("k-3"),
        )
        assert first.status_code == 201
        r = await client.post(
            "/v1/deposits",
            json={"organization_id": org.id, "amount": 1, "reference": "r"},
            headers=_with_key("k-3"),
        )
        assert_problem(r, 422, "idempotency_key_reused")
        assert await scalar(engine, "SELECT count(*) FROM ledger_deposits") == 0


class TestScope:
    async def test_same_key_from_two_api_keys_takes_effect_twice(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        platform = await create_org(client, kind="platform", scopes=["admin"])
        before = await _org_count(engine)
        by_admin = await client.post(
            "/v1/organizations", json=ORG_BODY, headers=_with_key("shared")
        )
        by_platform = await client.post(
            "/v1/organizations", json=ORG_BODY, headers=_with_key("shared", platform.headers)
        )
        assert by_admin.status_code == by_platform.status_code == 201
        assert "idempotent-replayed" not in by_platform.headers
        assert by_admin.json()["id"] != by_platform.json()["id"]
        assert await _org_count(engine) == before + 2


class TestErrorsAreNotStored:
    async def test_retry_after_a_conflict_is_fixed_runs_again(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        taken = {"name": "Holder", "kind": "company", "corporate_number": "7000012050002"}
        holder = await client.post("/v1/organizations", json=taken, headers=ADMIN)
        body = {**taken, "name": "Newcomer"}
        r = await client.post("/v1/organizations", json=body, headers=_with_key("fix-1"))
        assert_problem(r, 409, "corporate_number_taken")
        assert await _stored_count(engine) == 0

        await _execute(
            engine,
            "UPDATE organizations SET corporate_number = NULL WHERE id = :id",
            id=uuid.UUID(holder.json()["id"]),
        )
        retry = await client.post("/v1/organizations", json=body, headers=_with_key("fix-1"))
        assert retry.status_code == 201, retry.text
        assert "idempotent-replayed" not in retry.headers
        assert retry.json()["name"] == "Newcomer"
        assert await _stored_count(engine) == 1

    async def test_retry_after_a_refused_scope_is_fixed_runs_again(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client, kind="company")
        path = f"/v1/organizations/{org.id}/api-keys"
        body = {"name": "registry", "scopes": ["registry"]}
        r = await client.post(path, json=body, headers=_with_key("fix-2"))
        assert_problem(r, 422, "scope_not_allowed")

        await _execute(
            engine,
            "UPDATE organizations SET kind = 'platform' WHERE id = :id",
            id=uuid.UUID(org.id),
        )
        retry = await client.post(path, json=body, headers=_with_key("fix-2"))
        assert retry.status_code == 201, retry.text
        assert retry.json()["scopes"] == ["registry"]

    async def test_a_404_leaves_the_key_free(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        body = {"organization_id": str(uuid.uuid4()), "amount": 10, "reference": "r-404"}
        r = await client.post("/v1/deposits", json=body, headers=_with_key("fix-3"))
        assert_problem(r, 404, "organization_not_found")
        assert await _stored_count(engine) == 0
        # Had the 404 been stored, another body under this key would be 422 idempotency_key_reused.
        body["organization_id"] = org.id
        retry = await client.post("/v1/deposits", json=body, headers=_with_key("fix-3"))
        assert retry.status_code == 201, retry.text


class TestReplayAuthentication:
    async def test_revoked_key_gets_no_replay(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["keys", "read"])
        path = f"/v1/organizations/{org.id}/api-keys"
        body = {"name": "child", "scopes": ["read"]}
        first = await client.post(path, json=body, headers=_with_key("rv-1", org.headers))
        assert first.status_code == 201, first.text
        await client.delete(f"/v1/api-keys/{org.key_id}", headers=ADMIN)

        replay = await client.post(path, json=body, headers=_with_key("rv-1", org.headers))
        assert_problem(replay, 401, "invalid_api_key")
        assert first.json()["key"] not in replay.text
        other = await client.post(
            path, json={**body, "name": "x"}, headers=_with_key("rv-1", org.headers)
        )
        assert_problem(other, 401, "invalid_api_key")

    async def test_suspended_organization_gets_no_replay(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client, scopes=["keys", "read"])
        path = f"/v1/organizations/{org.id}/api-keys"
        body = {"name": "child", "scopes": ["read"]}
        first = await client.post(path, json=body, headers=_with_key("sp-1", org.headers))
        assert first.status_code == 201, first.text
        await _execute(
            engine,
            "UPDATE organizations SET status = 'suspended' WHERE id = :id",
            id=uuid.UUID(org.id),
        )
        replay = await client.post(path, json=body, headers=_with_key("sp-1", org.headers))
        assert_problem(replay, 401, "invalid_api_key")


class TestKeyHeader:
    async def test_key_of_255_characters_is_accepted(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/organizations", json=ORG_BODY, headers=_with_key("k" * 255))
        assert r.status_code == 201, r.text

    @pytest.mark.parametrize("key", ["k" * 256, "   ", "a\x7fb"])
    async def test_invalid_key_is_rejected(
        self, client: httpx.AsyncClient, engine: AsyncEngine, key: str
    ) -> None:
        r = await client.post("/v1/organizations", json=ORG_BODY, headers=_with_key(key))
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("header", "Idempotency-Key")}
        assert await _org_count(engine) == 0

    async def test_anonymous_request_with_a_key_is_unauthorized(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        r = await client.post("/v1/organizations", json=ORG_BODY, headers=_with_key("anon", {}))
        assert_problem(r, 401, "invalid_api_key")
        assert await _stored_count(engine) == 0

    async def test_oversized_body_is_refused(self, client: httpx.AsyncClient) -> None:
        huge = json.dumps({"name": "x" * (1 << 20), "kind": "company"})
        r = await client.post(
            "/v1/organizations",
            content=huge,
            headers={**_with_key("big"), "Content-Type": "application/json"},
        )
        assert_problem(r, 413, "payload_too_large")


class TestSealing:
    def test_round_trip(self) -> None:
        sealed = seal_body("token", "key", b'{"key": "tanso_secret"}')
        assert b"tanso_secret" not in sealed
        assert open_body("token", "key", sealed) == b'{"key": "tanso_secret"}'

    def test_each_seal_is_different(self) -> None:
        assert seal_body("t", "k", b"same") != seal_body("t", "k", b"same")

    def test_another_token_or_key_cannot_open_it(self) -> None:
        sealed = seal_body("token", "key", b"payload-payload-payload")
        with pytest.raises(InvalidTag):
            open_body("other", "key", sealed)
        with pytest.raises(InvalidTag):
            open_body("token", "other", sealed)

    def test_tampering_is_detected(self) -> None:
        sealed = bytearray(seal_body("token", "key", b"payload"))
        sealed[-1] ^= 1
        with pytest.raises(InvalidTag):
            open_body("token", "key", bytes(sealed))

    def test_empty_body(self) -> None:
        assert open_body("t", "k", seal_body("t", "k", b"")) == b""


def _assert_one_original_and_replays(responses: list[httpx.Response]) -> httpx.Response:
    created = [r for r in responses if r.status_code == 201]
    for r in responses:
        if r.status_code != 201:
            assert_problem(r, 409, "idempotency_request_in_progress")
    assert created, [r.text for r in responses]
    originals = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    assert all(r.content == originals[0].content for r in created)
    return originals[0]


@pytest.mark.concurrency
class TestConcurrentRetries:
    async def test_twenty_racing_deposits_are_applied_once(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        org = await create_org(client)
        body = {"organization_id": org.id, "amount": 7_000, "reference": "race-1"}
        responses = await asyncio.gather(
            *(client.post("/v1/deposits", json=body, headers=_with_key("race")) for _ in range(20))
        )
        original = _assert_one_original_and_replays(list(responses))
        assert original.json()["amount"] == 7_000
        assert await scalar(engine, "SELECT count(*) FROM ledger_deposits") == 1
        balances = await client.get("/v1/balances", headers=org.headers)
        assert balances.json()["cash"] == {"available": 7_000, "held": 0}
        late = await client.post("/v1/deposits", json=body, headers=_with_key("race"))
        assert late.status_code == 201
        assert late.headers["idempotent-replayed"] == "true"
        assert late.content == original.content

    async def test_twenty_racing_creates_make_one_organization(
        self, client: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        responses = await asyncio.gather(
            *(
                client.post("/v1/organizations", json=ORG_BODY, headers=_with_key("race-org"))
                for _ in range(20)
            )
        )
        _assert_one_original_and_replays(list(responses))
        assert await _org_count(engine) == 1
        assert await _stored_count(engine) == 1
