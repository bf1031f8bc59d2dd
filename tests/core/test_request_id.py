"""X-Request-ID: echoed when sane, generated otherwise, on every response."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.factories import ADMIN


def _is_generated(value: str) -> bool:
    return uuid.UUID(value).version == 7


class TestRequestId:
    @pytest.mark.parametrize("given", ["abc-123", "req.1:2_3-4", "A" * 128])
    async def test_sane_id_is_echoed(self, client: httpx.AsyncClient, given: str) -> None:
        r = await client.get("/health", headers={"X-Request-ID": given})
        assert r.headers["x-request-id"] == given

    async def test_generated_when_absent(self, client: httpx.AsyncClient) -> None:
        first = (await client.get("/health")).headers["x-request-id"]
        second = (await client.get("/health")).headers["x-request-id"]
        assert _is_generated(first)
        assert _is_generated(second)
        assert first != second

    @pytest.mark.parametrize(
        "given",
        [
            b"",
            b"has space",
            b"A" * 129,
            b"caf\xc3\xa9",
        ],
    )
    async def test_insane_id_is_replaced(self, client: httpx.AsyncClient, given: bytes) -> None:
        r = await client.get("/health", headers=[(b"X-Request-ID", given)])
        assert r.headers.get_list("x-request-id") == [r.headers["x-request-id"]]
        assert _is_generated(r.headers["x-request-id"])

    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/v1/me"), ("GET", "/nowhere"), ("PUT", "/v1/me"), ("GET", "/v1/organizations/x")],
    )
    async def test_present_on_errors(
        self, client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        r = await client.request(method, path, headers={"X-Request-ID": "err-1"})
        assert r.status_code >= 400
        assert r.headers["x-request-id"] == "err-1"

    async def test_present_on_idempotent_replay_with_the_new_requests_id(
        self, client: httpx.AsyncClient
    ) -> None:
        body = {"name": "Replayed", "kind": "company"}
        headers = {**ADMIN, "Idempotency-Key": "rid-1"}
        first = await client.post(
            "/v1/organizations", json=body, headers={**headers, "X-Request-ID": "one"}
        )
        replay = await client.post(
            "/v1/organizations", json=body, headers={**headers, "X-Request-ID": "two"}
        )
        assert first.headers["x-request-id"] == "one"
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers.get_list("x-request-id") == ["two"]
