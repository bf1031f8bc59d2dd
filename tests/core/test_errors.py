"""Every error is an RFC 9457 problem document (``application/problem+json``)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from app.core.errors import InvalidInput, problem_responses
from app.core.errors import NotFound as CoreNotFound
from tests.core.helpers import assert_problem, error_locations
from tests.factories import ADMIN, create_org


class TestProblemDocuments:
    async def test_401(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/v1/me"), 401, "invalid_api_key")
        assert body["title"] == "Unauthorized"

    async def test_403(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["read"])
        r = await client.get("/v1/organizations", headers=org.headers)
        body = assert_problem(r, 403, "insufficient_scope")
        assert body["required"] == ["admin"]

    async def test_404_domain_error(self, client: httpx.AsyncClient) -> None:
        r = await client.get(f"/v1/organizations/{uuid.uuid4()}", headers=ADMIN)
        assert_problem(r, 404, "organization_not_found")

    @pytest.mark.parametrize("path", ["/nope", "/v1/organisations"])
    async def test_404_unknown_route(self, client: httpx.AsyncClient, path: str) -> None:
        body = assert_problem(await client.get(path, headers=ADMIN), 404, "not_found")
        assert body["detail"] == "Not Found"

    async def test_405_names_the_allowed_methods(self, client: httpx.AsyncClient) -> None:
        r = await client.put("/v1/me", headers=ADMIN)
        assert_problem(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET"

    async def test_409(self, client: httpx.AsyncClient) -> None:
        body = {"name": "A", "kind": "company", "corporate_number": "7000012050002"}
        assert (await client.post("/v1/organizations", json=body, headers=ADMIN)).is_success
        r = await client.post("/v1/organizations", json=body, headers=ADMIN)
        assert_problem(r, 409, "corporate_number_taken")

    async def test_422_lists_each_field_without_echoing_input(
        self, client: httpx.AsyncClient
    ) -> None:
        secret = "do-not-echo-" + "x" * 300
        r = await client.post(
            "/v1/organizations", json={"name": secret, "kind": "bogus"}, headers=ADMIN
        )
        body = assert_problem(r, 422, "validation_error")
        assert error_locations(body) == {("body", "name"), ("body", "kind")}
        assert "do-not-echo" not in r.text

    async def test_422_from_a_service_names_its_field(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.post(
            f"/v1/organizations/{org.id}/api-keys",
            json={"name": "k", "scopes": ["registry"]},
            headers=ADMIN,
        )
        body = assert_problem(r, 422, "scope_not_allowed")
        assert body["errors"] == [
            {"loc": ["body", "scopes"], "msg": body["detail"], "type": "value_error"}
        ]

    async def test_500_is_a_bare_problem_logged_with_the_request_id(self, app: FastAPI) -> None:
        async def explode() -> None:
            raise RuntimeError("secret internals")

        app.add_api_route("/explode", explode)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            with capture_logs(processors=[merge_contextvars]) as logs:
                r = await client.get("/explode", headers={"X-Request-ID": "boom-1"})
        body = assert_problem(r, 500, "internal_error")
        assert "secret internals" not in r.text
        assert set(body) == {"type", "title", "status", "detail", "code", "instance"}
        errors = [e for e in logs if e["event"] == "http.unhandled_error"]
        assert len(errors) == 1
        assert errors[0]["path"] == "/explode"
        assert errors[0]["request_id"] == "boom-1"
        assert r.headers["x-request-id"] == "boom-1"  # the client can quote it
        access = [e for e in logs if e["event"] == "http.request"]
        assert [e["status"] for e in access] == [500]


class TestInvalidInput:
    def test_body_field_by_default(self) -> None:
        error = InvalidInput("bad", field="name")
        assert error.status_code == 422
        assert error.extra["errors"] == [
            {"loc": ["body", "name"], "msg": "bad", "type": "value_error"}
        ]

    def test_other_locations(self) -> None:
        error = InvalidInput("bad cursor", field="cursor", location="query")
        assert error.extra["errors"][0]["loc"] == ["query", "cursor"]

    def test_without_a_field(self) -> None:
        assert InvalidInput("bad").extra["errors"][0]["loc"] == ["body"]


class TestProblemResponses:
    def test_codes_of_one_status_are_listed_together(self) -> None:
        class Missing(CoreNotFound):
            code = "missing"

        responses = problem_responses(CoreNotFound, Missing, CoreNotFound)
        assert list(responses) == [404]
        assert responses[404]["description"] == "not_found, missing"
