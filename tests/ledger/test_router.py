"""The ledger's HTTP API: deposits, balances, accounts and postings."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger import service as ledger
from app.ledger.models import AccountKind, AssetKind
from app.ledger.posting import MAX_AMOUNT, transfer
from app.ledger.service import CASH, EntrySpec
from tests.factories import ADMIN, Org, create_org, deposit


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def error_fields(body: dict[str, Any]) -> set[str]:
    return {str(e["loc"][-1]) for e in body["errors"] if e["loc"]}


async def cash_account(session: AsyncSession, org: Org, kind: AccountKind) -> uuid.UUID:
    account = await ledger.account_id(session, uuid.UUID(org.id), CASH, kind)
    await session.commit()
    return account


async def walk(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], limit: int
) -> list[Any]:
    """Every item of a list endpoint, page by page; checks no page is over ``limit``."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = await client.get(url, params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["data"]) <= limit
        items.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination never ended")


class TestCreateDeposit:
    async def test_admin_records_a_deposit(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.post(
            "/v1/deposits",
            json={"organization_id": org.id, "amount": 12_345, "reference": "bank-1"},
            headers=ADMIN,
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["amount"] == 12_345
        assert body["status"] == "completed"
        assert body["organization_id"] == org.id
        assert body["reference"] == "bank-1"
        uuid.UUID(body["id"])
        r = await client.get("/v1/balances", headers=org.headers)
        assert r.json()["cash"] == {"available": 12_345, "held": 0}

    async def test_exactly_the_maximum_amount_is_accepted(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        assert (await deposit(client, org, MAX_AMOUNT))["amount"] == MAX_AMOUNT

    async def test_reference_is_stripped(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        assert (await deposit(client, org, 5, "  bank-9  "))["reference"] == "bank-9"

    async def test_organisation_key_is_forbidden(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.post(
            "/v1/deposits",
            json={"organization_id": org.id, "amount": 100, "reference": "self-made"},
            headers=org.headers,
        )
        problem(r, 403, "insufficient_scope")
        r = await client.get("/v1/balances", headers=org.headers)
        assert r.json()["cash"] == {"available": 0, "held": 0}

    async def test_no_key_is_unauthorised(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.post(
            "/v1/deposits", json={"organization_id": org.id, "amount": 100, "reference": "x"}
        )
        assert r.status_code == 401, r.text

    async def test_unknown_organisation(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/deposits",
            json={"organization_id": str(uuid.uuid4()), "amount": 100, "reference": "x"},
            headers=ADMIN,
        )
        problem(r, 404, "organization_not_found")

    @pytest.mark.parametrize(
        "amount",
        [
            pytest.param(0, id="zero"),
            pytest.param(-100, id="negative"),
            pytest.param(100.5, id="float"),
            pytest.param(100.0, id="integral-float"),
            pytest.param("100", id="string"),
            pytest.param(MAX_AMOUNT + 1, id="beyond-max"),
            pytest.param(2**64, id="beyond-bigint"),
            pytest.param(True, id="bool"),
            pytest.param(None, id="null"),
        ],
    )
    async def test_invalid_amount(self, client: httpx.AsyncClient, amount: object) -> None:
        org = await create_org(client)
        r = await client.post(
            "/v1/deposits",
            json={"organization_id": org.id, "amount": amount, "reference": "bank-1"},
            headers=ADMIN,
        )
        assert error_fields(problem(r, 422, "validation_error")) == {"amount"}
        r = await client.get("/v1/balances", headers=org.headers)
        assert r.json()["cash"] == {"available": 0, "held": 0}

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            pytest.param({"amount": None}, "amount", id="missing-amount"),
            pytest.param({"reference": None}, "reference", id="missing-reference"),
            pytest.param({"reference": ""}, "reference", id="empty-reference"),
            pytest.param({"reference": "   "}, "reference", id="blank-reference"),
            pytest.param({"reference": "r" * 201}, "reference", id="long-reference"),
            pytest.param({"organization_id": "not-a-uuid"}, "organization_id", id="bad-org-id"),
            pytest.param({"fee": 1}, "fee", id="unknown-field"),
        ],
    )
    async def test_invalid_body(
        self, client: httpx.AsyncClient, change: dict[str, Any], field: str
    ) -> None:
        org = await create_org(client)
        body: dict[str, Any] = {"organization_id": org.id, "amount": 100, "reference": "bank-1"}
        for key, value in change.items():
            if value is None:
                body.pop(key)
            else:
                body[key] = value
        r = await client.post("/v1/deposits", json=body, headers=ADMIN)
        assert field in error_fields(problem(r, 422, "validation_error"))

    async def test_duplicate_reference_for_the_same_organisation(
        self, client: httpx.AsyncClient
    ) -> None:
        org = await create_org(client)
        await deposit(client, org, 1_000, "bank-1")
        r = await client.post(
            "/v1/deposits",
            json={"organization_id": org.id, "amount": 1_000, "reference": "bank-1"},
            headers=ADMIN,
        )
        problem(r, 409, "duplicate_deposit")
        r = await client.get("/v1/balances", headers=org.headers)
        assert r.json()["cash"] == {"available": 1_000, "held": 0}

    async def test_same_reference_for_another_organisation(self, client: httpx.AsyncClient) -> None:
        first, second = await create_org(client), await create_org(client)
        await deposit(client, first, 1_000, "bank-1")
        await deposit(client, second, 2_000, "bank-1")
        r = await client.get("/v1/balances", headers=second.headers)
        assert r.json()["cash"] == {"available": 2_000, "held": 0}


class TestGetBalances:
    async def test_new_organisation_has_nothing(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.get("/v1/balances", headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"cash": {"available": 0, "held": 0}, "credits": []}

    async def test_available_held_and_credits(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org, other = await create_org(client), await create_org(client)
        await deposit(client, org, 10_000)
        await deposit(client, other, 777)
        batch = uuid.uuid4()
        credit = ledger.credit_asset(batch)
        await ledger.ensure_asset(session, credit, AssetKind.credit, "batch")
        owner = uuid.UUID(org.id)
        external = await ledger.account_id(session, None, credit, AccountKind.external)
        holding = await ledger.account_id(session, owner, credit, AccountKind.available)
        await ledger.post_entry(
            session, EntrySpec(kind="issue", legs=transfer(external, holding, credit, 40))
        )
        await ledger.reserve(session, owner, CASH, 2_500)
        await ledger.reserve(session, owner, credit, 15)
        await session.commit()
        r = await client.get("/v1/balances", headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "cash": {"available": 7_500, "held": 2_500},
            "credits": [{"batch_id": str(batch), "available": 25, "held": 15}],
        }

    async def test_read_scope_is_required(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["trade"])
        problem(await client.get("/v1/balances", headers=org.headers), 403, "insufficient_scope")

    async def test_no_key_is_unauthorised(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/v1/balances")).status_code == 401


class TestListAccounts:
    async def test_only_the_callers_accounts(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org, other = await create_org(client), await create_org(client)
        await deposit(client, org, 1_000)
        await deposit(client, other, 2_000)
        await ledger.reserve(session, uuid.UUID(org.id), CASH, 300)
        await session.commit()
        r = await client.get("/v1/accounts", headers=org.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["next_cursor"] is None
        rows = {(a["asset"], a["kind"], a["balance"]) for a in body["data"]}
        assert rows == {(CASH, "available", 700), (CASH, "held", 300)}
        mine = {
            await cash_account(session, org, AccountKind.available),
            await cash_account(session, org, AccountKind.held),
        }
        assert {uuid.UUID(a["id"]) for a in body["data"]} == mine

    async def test_pagination_walks_every_account_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client)
        owner = uuid.UUID(org.id)
        expected = set()
        for _ in range(3):
            credit = ledger.credit_asset(uuid.uuid4())
            await ledger.ensure_asset(session, credit, AssetKind.credit, "batch")
            for kind in (AccountKind.available, AccountKind.held):
                expected.add(await ledger.account_id(session, owner, credit, kind))
        expected.add(await ledger.account_id(session, owner, CASH, AccountKind.available))
        await session.commit()
        items = await walk(client, "/v1/accounts", org.headers, limit=2)
        ids = [uuid.UUID(a["id"]) for a in items]
        assert len(ids) == len(set(ids)) == 7
        assert set(ids) == expected

    async def test_read_scope_is_required(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client, scopes=["trade"])
        problem(await client.get("/v1/accounts", headers=org.headers), 403, "insufficient_scope")

    async def test_invalid_cursor(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        not_a_uuid = base64.urlsafe_b64encode(b"not-a-uuid").decode()
        for cursor in ("!!!", not_a_uuid):
            r = await client.get("/v1/accounts", params={"cursor": cursor}, headers=org.headers)
            problem(r, 422, "validation_error")

    @pytest.mark.parametrize("limit", [0, 501])
    async def test_limit_out_of_range(self, client: httpx.AsyncClient, limit: int) -> None:
        org = await create_org(client)
        r = await client.get("/v1/accounts", params={"limit": limit}, headers=org.headers)
        assert "limit" in error_fields(problem(r, 422, "validation_error"))


class TestListPostings:
    async def test_newest_first_with_running_balance(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client)
        await deposit(client, org, 1_000, "bank-1")
        await deposit(client, org, 500, "bank-2")
        hold_id = await ledger.reserve(session, uuid.UUID(org.id), CASH, 300, reference="bid-1")
        await session.commit()
        await ledger.release(session, hold_id, 100)
        await session.commit()
        account = await cash_account(session, org, AccountKind.available)
        r = await client.get(f"/v1/accounts/{account}/postings", headers=org.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["next_cursor"] is None
        got = [
            (p["entry_kind"], p["amount"], p["balance_after"], p["reference"]) for p in body["data"]
        ]
        assert got == [
            ("release", 100, 1_300, "bid-1"),
            ("hold", -300, 1_200, "bid-1"),
            ("deposit", 500, 1_500, "bank-2"),
            ("deposit", 1_000, 1_000, "bank-1"),
        ]
        assert all(uuid.UUID(p["entry_id"]) for p in body["data"])
        r = await client.get("/v1/accounts", headers=org.headers)
        balances = {a["id"]: a["balance"] for a in r.json()["data"]}
        assert balances[str(account)] == body["data"][0]["balance_after"]

    async def test_pagination_walks_every_posting_newest_first(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client)
        for n in range(1, 8):
            await deposit(client, org, n, f"bank-{n}")
        account = await cash_account(session, org, AccountKind.available)
        items = await walk(client, f"/v1/accounts/{account}/postings", org.headers, limit=3)
        assert [p["amount"] for p in items] == [7, 6, 5, 4, 3, 2, 1]
        assert [p["balance_after"] for p in items] == [28, 21, 15, 10, 6, 3, 1]
        assert len({p["id"] for p in items}) == 7

    async def test_another_organisations_account_is_not_found(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org, other = await create_org(client), await create_org(client)
        await deposit(client, other, 1_000)
        account = await cash_account(session, other, AccountKind.available)
        r = await client.get(f"/v1/accounts/{account}/postings", headers=org.headers)
        body = problem(r, 404, "account_not_found")
        # Indistinguishable from an account that does not exist.
        ghost = await client.get(f"/v1/accounts/{uuid.uuid4()}/postings", headers=org.headers)
        unknown = problem(ghost, 404, "account_not_found")
        body.pop("instance")
        unknown.pop("instance")
        assert body == unknown

    async def test_unknown_account_is_not_found(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.get(f"/v1/accounts/{uuid.uuid4()}/postings", headers=org.headers)
        problem(r, 404, "account_not_found")

    async def test_system_account_is_not_found(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client)
        await deposit(client, org, 1_000)
        external = await ledger.account_id(session, None, CASH, AccountKind.external)
        r = await client.get(f"/v1/accounts/{external}/postings", headers=org.headers)
        problem(r, 404, "account_not_found")

    async def test_admin_reads_any_account(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client)
        await deposit(client, org, 1_000)
        account = await cash_account(session, org, AccountKind.available)
        r = await client.get(f"/v1/accounts/{account}/postings", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert [p["amount"] for p in r.json()["data"]] == [1_000]

    async def test_read_scope_is_required(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        org = await create_org(client, scopes=["trade"])
        account = await cash_account(session, org, AccountKind.available)
        r = await client.get(f"/v1/accounts/{account}/postings", headers=org.headers)
        problem(r, 403, "insufficient_scope")

    async def test_invalid_cursor(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        org = await create_org(client)
        account = await cash_account(session, org, AccountKind.available)
        for key in ("not-a-number", "9" * 30, "1.5", ""):
            cursor = base64.urlsafe_b64encode(key.encode()).decode() or "!!!"
            r = await client.get(
                f"/v1/accounts/{account}/postings", params={"cursor": cursor}, headers=org.headers
            )
            problem(r, 422, "validation_error")

    async def test_invalid_account_id(self, client: httpx.AsyncClient) -> None:
        org = await create_org(client)
        r = await client.get("/v1/accounts/not-a-uuid/postings", headers=org.headers)
        problem(r, 422, "validation_error")
