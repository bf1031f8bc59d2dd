"""Credit transfers through the API: which serials move, refusals, merges, idempotency."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import create_org
from tests.offsets.helpers import (
    assert_books_clean,
    assert_problem,
    count_rows,
    credit_balances,
    holdings,
    live_blocks,
    new_batch,
    transfer,
)


class TestTransfer:
    async def test_the_lowest_serials_move(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 1_000)
        s, e = issued.start, issued.end

        r = await transfer(client, seller, buyer, issued.batch_id, 100)
        assert r.status_code == 201, r.text
        record = r.json()
        assert record["serial_ranges"] == [[s, s + 99]]
        assert record["from_organization_id"] == seller.id
        assert record["to_organization_id"] == buyer.id
        assert record["quantity"] == 100
        assert len(record["serial_display"]) == 1

        r = await transfer(client, seller, buyer, issued.batch_id, 50)
        assert r.status_code == 201, r.text
        assert r.json()["serial_ranges"] == [[s + 100, s + 149]]

        seller_holding = (await holdings(client, seller))[issued.batch_id]
        buyer_holding = (await holdings(client, buyer))[issued.batch_id]
        assert seller_holding["serial_ranges"] == [[s + 150, e]]
        assert seller_holding["available"] == 850
        # The second transfer touches the first: the buyer holds one merged range.
        assert buyer_holding["serial_ranges"] == [[s, s + 149]]
        assert buyer_holding["available"] == 150
        assert await live_blocks(session, issued.batch_id, buyer.id) == [(s, s + 149, "active")]
        assert await credit_balances(client, seller) == {issued.batch_id: (850, 0)}
        assert await credit_balances(client, buyer) == {issued.batch_id: (150, 0)}
        await assert_books_clean(session)

    async def test_the_whole_holding_can_move(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 10)
        r = await transfer(client, seller, buyer, issued.batch_id, 10)
        assert r.status_code == 201, r.text
        assert r.json()["serial_ranges"] == [[issued.start, issued.end]]
        assert await holdings(client, seller) == {}
        assert (await holdings(client, buyer))[issued.batch_id]["available"] == 10
        await assert_books_clean(session)

    async def test_more_than_held_is_409_and_changes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 100)
        assert (await transfer(client, seller, buyer, issued.batch_id, 30)).status_code == 201
        before_seller = await holdings(client, seller)
        before_buyer = await holdings(client, buyer)
        blocks = await live_blocks(session, issued.batch_id)

        r = await transfer(client, seller, buyer, issued.batch_id, 71)
        body = assert_problem(r, 409, "insufficient_credits")
        assert body["requested"] == 71
        assert body["available"] == 70

        assert await holdings(client, seller) == before_seller
        assert await holdings(client, buyer) == before_buyer
        assert await live_blocks(session, issued.batch_id) == blocks
        assert await count_rows(session, "offset_transfers") == 1
        assert await credit_balances(client, seller) == {issued.batch_id: (70, 0)}
        await assert_books_clean(session)

    async def test_to_self_is_422(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        seller = await create_org(client, kind="seller")
        issued = await new_batch(client, seller, 100)
        r = await transfer(client, seller, seller, issued.batch_id, 10)
        body = assert_problem(r, 422, "invalid_transfer")
        assert body["errors"][0]["loc"] == ["body", "to_organization_id"]
        assert await count_rows(session, "offset_transfers") == 0
        assert await live_blocks(session, issued.batch_id) == [(issued.start, issued.end, "active")]
        await assert_books_clean(session)

    async def test_unknown_recipient_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        issued = await new_batch(client, seller, 100)
        r = await client.post(
            "/v1/credit-transfers",
            json={
                "to_organization_id": str(uuid.uuid4()),
                "batch_id": issued.batch_id,
                "quantity": 10,
            },
            headers=seller.headers,
        )
        assert_problem(r, 404, "organization_not_found")
        assert await count_rows(session, "offset_transfers") == 0
        assert await credit_balances(client, seller) == {issued.batch_id: (100, 0)}
        await assert_books_clean(session)

    async def test_a_batch_the_caller_does_not_hold_is_409(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        stranger = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 100)
        r = await transfer(client, stranger, seller, issued.batch_id, 1)
        body = assert_problem(r, 409, "insufficient_credits")
        assert body["available"] == 0
        assert body["requested"] == 1
        assert await holdings(client, stranger) == {}
        assert await credit_balances(client, seller) == {issued.batch_id: (100, 0)}
        await assert_books_clean(session)

    async def test_unknown_batch_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        await new_batch(client, seller, 100)
        r = await transfer(client, seller, buyer, str(uuid.uuid4()), 1)
        assert_problem(r, 404, "batch_not_found")
        assert await count_rows(session, "offset_transfers") == 0
        await assert_books_clean(session)

    async def test_transfer_scope_required(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller", scopes=["read", "trade", "retire"])
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 100)
        r = await transfer(client, seller, buyer, issued.batch_id, 1)
        assert_problem(r, 403, "insufficient_scope")
        r = await client.post(
            "/v1/credit-transfers",
            json={"to_organization_id": buyer.id, "batch_id": issued.batch_id, "quantity": 1},
        )
        assert_problem(r, 401, "invalid_api_key")
        assert await count_rows(session, "offset_transfers") == 0
        await assert_books_clean(session)

    async def test_invalid_quantity_is_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 100)
        for quantity in [0, -5, 1.0, 2.5, "3", None, True, 1_000_000_001]:
            r = await transfer(client, seller, buyer, issued.batch_id, quantity)
            assert_problem(r, 422, "validation_error")
        assert await count_rows(session, "offset_transfers") == 0
        await assert_books_clean(session)

    async def test_transfer_back_merges_blocks(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        a = await create_org(client, kind="seller")
        b = await create_org(client, kind="company")
        issued = await new_batch(client, a, 500)
        s, e = issued.start, issued.end

        assert (await transfer(client, a, b, issued.batch_id, 120)).status_code == 201
        assert (await holdings(client, a))[issued.batch_id]["serial_ranges"] == [[s + 120, e]]

        r = await transfer(client, b, a, issued.batch_id, 120)
        assert r.status_code == 201, r.text
        assert r.json()["serial_ranges"] == [[s, s + 119]]
        holding = (await holdings(client, a))[issued.batch_id]
        assert holding["serial_ranges"] == [[s, e]]
        assert holding["available"] == 500
        assert await holdings(client, b) == {}
        assert await live_blocks(session, issued.batch_id) == [(s, e, "active")]
        await assert_books_clean(session)

    async def test_partial_transfer_back_merges_what_touches(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        a = await create_org(client, kind="seller")
        b = await create_org(client, kind="company")
        issued = await new_batch(client, a, 100)
        s, e = issued.start, issued.end
        assert (await transfer(client, a, b, issued.batch_id, 40)).status_code == 201
        # B sends back its lowest 10: [s, s+9] does not touch A's [s+40, e].
        assert (await transfer(client, b, a, issued.batch_id, 10)).status_code == 201
        assert (await holdings(client, a))[issued.batch_id]["serial_ranges"] == [
            [s, s + 9],
            [s + 40, e],
        ]
        # The rest comes back and closes the gap: one range again.
        assert (await transfer(client, b, a, issued.batch_id, 30)).status_code == 201
        assert (await holdings(client, a))[issued.batch_id]["serial_ranges"] == [[s, e]]
        assert await live_blocks(session, issued.batch_id) == [(s, e, "active")]
        await assert_books_clean(session)

    async def test_idempotent_replay_has_one_effect(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 100)
        body = {"to_organization_id": buyer.id, "batch_id": issued.batch_id, "quantity": 25}
        headers = {**seller.headers, "Idempotency-Key": "transfer-0001"}

        first = await client.post("/v1/credit-transfers", json=body, headers=headers)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        second = await client.post("/v1/credit-transfers", json=body, headers=headers)
        assert second.status_code == 201, second.text
        assert second.headers["idempotent-replayed"] == "true"
        assert second.json() == first.json()

        assert await count_rows(session, "offset_transfers") == 1
        assert await credit_balances(client, seller) == {issued.batch_id: (75, 0)}
        assert await credit_balances(client, buyer) == {issued.batch_id: (25, 0)}

        # The same key with another body is refused and does nothing.
        r = await client.post(
            "/v1/credit-transfers", json={**body, "quantity": 26}, headers=headers
        )
        assert_problem(r, 422, "idempotency_key_reused")
        assert await count_rows(session, "offset_transfers") == 1

        # A refused transfer is not stored: after the holder has enough, the key works.
        r = await client.post(
            "/v1/credit-transfers",
            json={**body, "quantity": 1_000},
            headers={**seller.headers, "Idempotency-Key": "transfer-0002"},
        )
        assert_problem(r, 409, "insufficient_credits")
        assert await credit_balances(client, seller) == {issued.batch_id: (75, 0)}
        await assert_books_clean(session)
