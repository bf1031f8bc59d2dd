"""Category products: a sell order holds the seller's eligible credits (category, vintage window,
labels) oldest vintage first, possibly across several batches; a fill spanning two batches is
one trade row per batch; cancelling releases what is left of every hold. Real database, every
scenario ends with ``assert_market_clean``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.time import utc_now
from app.market.service import take_oldest_first
from tests.factories import ADMIN, Org, create_org, deposit
from tests.market.helpers import Market, assert_market_clean, cash, credits, ordered
from tests.offsets.helpers import assert_problem, create_project, issue, registry_org

Json = dict[str, Any]


@dataclass
class Holdings:
    seller: Org
    buyer: Org
    batches: dict[str, str]  # name -> batch id


async def _category_product(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body: Json = {
        "code": f"JCR-CAT-{uuid.uuid4().hex[:8].upper()}",
        "name": "J-Credit forest",
        "category": "forest",
        **fields,
    }
    return await client.post("/v1/products", json=body, headers=ADMIN)


async def _market(client: httpx.AsyncClient, **fields: Any) -> Market:
    r = await _category_product(client, **fields)
    assert r.status_code == 201, r.text
    return Market(dict(r.json()), [], [])


async def _holdings(client: httpx.AsyncClient) -> Holdings:
    """A seller holding forest batches of vintages 2023, 2022 (two: the second with the
    ``removal`` label) and 2020, and an energy-saving batch of 2021; a funded buyer."""
    registry = await registry_org(client)
    seller = await create_org(client)
    buyer = await create_org(client)
    await deposit(client, buyer, 10_000_000)
    forest = await create_project(client, registry, seller, category="forest")
    energy = await create_project(
        client, registry, seller, category="energy_saving", methodology="EN-S-001"
    )

    async def batch(project: Json, quantity: int, fy_end: str, labels: list[str]) -> str:
        issued = await issue(
            client,
            registry,
            project,
            seller,
            quantity,
            period_start="2019-04-01",
            period_end=fy_end,
            labels=labels,
        )
        return str(issued["id"])

    batches = {
        "2023": await batch(forest, 10, "2024-03-31", []),
        "2022a": await batch(forest, 5, "2023-03-31", []),
        "2022b": await batch(forest, 7, "2023-03-31", ["removal"]),
        "2020": await batch(forest, 3, "2021-03-31", ["removal"]),
        "energy": await batch(energy, 100, "2022-03-31", []),
    }
    return Holdings(seller, buyer, batches)


def _same_vintage_in_id_order(h: Holdings) -> list[str]:
    """The two 2022 batches in delivery order (by batch id)."""
    return sorted([h.batches["2022a"], h.batches["2022b"]])


class TestProductCreation:
    async def test_category_product_fields(self, client: httpx.AsyncClient) -> None:
        r = await _category_product(
            client, vintage_min=2021, vintage_max=2023, labels=["removal", "jcm", "removal"]
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["batch_id"] is None
        assert (body["category"], body["vintage_min"], body["vintage_max"]) == (
            "forest",
            2021,
            2023,
        )
        assert body["labels"] == ["jcm", "removal"]
        assert (body["maker_fee_bps"], body["taker_fee_bps"]) == (0, 0)

    async def test_exactly_one_source(self, client: httpx.AsyncClient) -> None:
        h = await _holdings(client)
        r = await _category_product(client, batch_id=h.batches["2023"])
        body = assert_problem(r, 422, "invalid_product")
        assert "exactly one of batch_id" in body["detail"]
        r = await _category_product(client, category=None)
        assert_problem(r, 422, "invalid_product")

    async def test_filters_refine_a_category_only(self, client: httpx.AsyncClient) -> None:
        h = await _holdings(client)
        for field, value in (("vintage_min", 2020), ("vintage_max", 2020), ("labels", ["jcm"])):
            r = await client.post(
                "/v1/products",
                json={
                    "code": f"JCR-B-{field.upper().replace('_', '-')}",
                    "name": "batch",
                    "batch_id": h.batches["2023"],
                    field: value,
                },
                headers=ADMIN,
            )
            body = assert_problem(r, 422, "invalid_product")
            assert body["errors"][0]["loc"] == ["body", field], body

    async def test_bad_windows_and_labels(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(
            await _category_product(client, vintage_min=2024, vintage_max=2023),
            422,
            "invalid_product",
        )
        assert body["errors"][0]["loc"] == ["body", "vintage_min"]
        for bad in (
            {"vintage_min": "2020"},
            {"vintage_max": 1999},
            {"vintage_min": 2101},
            {"labels": ["Removal"]},
            {"labels": [""]},
            {"labels": "removal"},
            {"labels": ["x" * 41]},
            {"category": "coal"},
        ):
            r = await _category_product(client, **bad)
            assert r.status_code == 422, (bad, r.text)
        r = await client.get("/v1/products", headers=ADMIN)
        assert r.json() == []


class TestSellHolds:
    async def test_oldest_vintage_first_across_batches_then_cancel(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        h = await _holdings(client)
        m = await _market(client, vintage_min=2021)  # 2020 is out of the window
        first, second = _same_vintage_in_id_order(h)
        sell = await ordered(client, h.seller, m, "sell", 1000, 14)
        assert sell["status"] == "open"
        # Vintage 2022 first (both batches, by id), then 2023; 2020 and energy untouched.
        held_first = 5 if first == h.batches["2022a"] else 7
        assert await credits(client, h.seller, first) == (0, held_first)
        assert await credits(client, h.seller, second) == (0, 12 - held_first)
        assert await credits(client, h.seller, h.batches["2023"]) == (8, 2)
        assert await credits(client, h.seller, h.batches["2020"]) == (3, 0)
        assert await credits(client, h.seller, h.batches["energy"]) == (100, 0)
        positions = (
            await session.execute(
                text(
                    "SELECT batch_id, quantity FROM market_order_credit_holds"
                    " WHERE order_id = :o ORDER BY position"
                ),
                {"o": sell["id"]},
            )
        ).all()
        await session.rollback()
        assert [(str(b), q) for b, q in positions] == [
            (first, held_first),
            (second, 12 - held_first),
            (h.batches["2023"], 2),
        ]

        r = await client.delete(f"/v1/orders/{sell['id']}", headers=h.seller.headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled"
        for name, quantity in (("2022a", 5), ("2022b", 7), ("2023", 10)):
            assert await credits(client, h.seller, h.batches[name]) == (quantity, 0)
        await assert_market_clean(session)

    async def test_a_fill_spanning_two_batches_is_a_trade_per_batch(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        h = await _holdings(client)
        m = await _market(client, vintage_min=2021)
        first, second = _same_vintage_in_id_order(h)
        held_first = 5 if first == h.batches["2022a"] else 7
        sell = await ordered(client, h.seller, m, "sell", 1000, 14)
        buy = await ordered(client, h.buyer, m, "buy", 1000, held_first + 1)
        assert buy["status"] == "filled"
        trades = buy["trades"]
        assert [(t["batch_id"], t["quantity"]) for t in trades] == [
            (first, held_first),
            (second, 1),
        ]
        for t in trades:
            assert sum(e - s + 1 for s, e in t["serial_ranges"]) == t["quantity"]
            assert (t["price"], t["fee"], t["liquidity"]) == (1000, 0, "taker")
        assert await credits(client, h.buyer, first) == (held_first, 0)
        assert await credits(client, h.buyer, second) == (1, 0)
        assert await cash(client, h.buyer) == (10_000_000 - 1000 * (held_first + 1), 0)
        assert await cash(client, h.seller) == (1000 * (held_first + 1), 0)

        # The seller's view: the same two rows, on its order, as the maker.
        r = await client.get("/v1/trades", headers=h.seller.headers)
        mine = r.json()["data"]
        assert sorted((t["batch_id"], t["quantity"], t["side"]) for t in mine) == sorted(
            [(first, held_first, "sell"), (second, 1, "sell")]
        )
        assert {t["order_id"] for t in mine} == {sell["id"]}
        r = await client.get(f"/v1/orders/{sell['id']}", headers=h.seller.headers)
        assert r.json()["filled_quantity"] == held_first + 1
        assert r.json()["remaining_quantity"] == 14 - held_first - 1

        # The rest fills later from the rest of the second batch, then 2023.
        buy = await ordered(client, h.buyer, m, "buy", 1000, 14 - held_first - 1)
        assert [(t["batch_id"], t["quantity"]) for t in buy["trades"]] == [
            (second, 12 - held_first - 1),
            (h.batches["2023"], 2),
        ]
        r = await client.get(f"/v1/orders/{sell['id']}", headers=h.seller.headers)
        assert r.json()["status"] == "filled"
        await assert_market_clean(session)

    async def test_labels_and_window_narrow_the_eligible_credits(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        h = await _holdings(client)
        removal = await _market(client, labels=["removal"])
        # Eligible: 2020 (3, removal) then 2022b (7, removal): 10 in all.
        r = await client.post(
            "/v1/orders",
            json={"product": removal.code, "side": "sell", "price": 1000, "quantity": 11},
            headers=h.seller.headers,
        )
        body = assert_problem(r, 409, "insufficient_credits")
        assert (body["requested"], body["available"]) == (11, 10)
        await ordered(client, h.seller, removal, "sell", 1000, 10)
        assert await credits(client, h.seller, h.batches["2020"]) == (0, 3)
        assert await credits(client, h.seller, h.batches["2022b"]) == (0, 7)
        assert await credits(client, h.seller, h.batches["2022a"]) == (5, 0)

        recent = await _market(client, vintage_min=2023, vintage_max=2023)
        r = await client.post(
            "/v1/orders",
            json={"product": recent.code, "side": "sell", "price": 1000, "quantity": 11},
            headers=h.seller.headers,
        )
        assert_problem(r, 409, "insufficient_credits")
        await ordered(client, h.seller, recent, "sell", 1000, 10)
        assert await credits(client, h.seller, h.batches["2023"]) == (0, 10)

        # Nothing eligible is left at all; the energy credits never count for forest.
        r = await client.post(
            "/v1/orders",
            json={"product": recent.code, "side": "sell", "price": 1000, "quantity": 1},
            headers=h.seller.headers,
        )
        body = assert_problem(r, 409, "insufficient_credits")
        assert body["available"] == 0
        await assert_market_clean(session)

    async def test_a_seller_without_credits_and_an_ioc_remainder(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        h = await _holdings(client)
        m = await _market(client)
        r = await client.post(
            "/v1/orders",
            json={"product": m.code, "side": "sell", "price": 1000, "quantity": 1},
            headers=h.buyer.headers,
        )
        assert_problem(r, 409, "insufficient_credits")
        # An IOC sell that fills part: the unfilled part of every hold goes back.
        await ordered(client, h.buyer, m, "buy", 1000, 4)
        sell = await ordered(client, h.seller, m, "sell", 1000, 20, time_in_force="ioc")
        assert (sell["status"], sell["filled_quantity"]) == ("cancelled", 4)
        for name in ("2020", "2022a", "2022b", "2023"):
            assert (await credits(client, h.seller, h.batches[name]))[1] == 0
        assert await credits(client, h.buyer, h.batches["2020"]) == (3, 0)
        await assert_market_clean(session)

    async def test_an_expired_sell_releases_every_hold_then_a_market_sell(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        h = await _holdings(client)
        m = await _market(client, reference_price=1000)
        first, _ = _same_vintage_in_id_order(h)
        held_first = 5 if first == h.batches["2022a"] else 7
        later = (utc_now() + timedelta(hours=1)).isoformat()
        sell = await ordered(
            client, h.seller, m, "sell", 1000, 20, time_in_force="gtd", expires_at=later
        )
        buy = await ordered(client, h.buyer, m, "buy", 1000, 4)  # 3 of 2020, 1 of the first 2022
        assert [(t["batch_id"], t["quantity"]) for t in buy["trades"]] == [
            (h.batches["2020"], 3),
            (first, 1),
        ]
        await session.execute(
            text("UPDATE market_orders SET expires_at = now() - interval '1 second' WHERE id = :o"),
            {"o": uuid.UUID(sell["id"])},
        )
        await session.commit()
        # The next order expires it first: every hold's rest goes back, nothing trades.
        buy = await ordered(client, h.buyer, m, "buy", 1000, 5)
        assert (buy["status"], buy["trades"]) == ("open", [])
        r = await client.get(f"/v1/orders/{sell['id']}", headers=h.seller.headers)
        assert (r.json()["status"], r.json()["filled_quantity"]) == ("expired", 4)
        assert await credits(client, h.seller, first) == (held_first - 1, 0)
        for name in ("2020", "2022a", "2022b", "2023"):
            assert (await credits(client, h.seller, h.batches[name]))[1] == 0

        # A market sell delivers the oldest left: the rest of the first 2022 batch.
        sold = await ordered(client, h.seller, m, "sell", None, 2, type="market")
        assert [(t["batch_id"], t["quantity"]) for t in sold["trades"]] == [(first, 2)]
        assert sold["status"] == "filled"
        await assert_market_clean(session)


@given(
    holdings=st.lists(st.integers(min_value=0, max_value=50), max_size=6),
    quantity=st.integers(min_value=1, max_value=200),
)
def test_take_oldest_first(holdings: list[int], quantity: int) -> None:
    """Each batch is used up before the next; never more than asked or held; no empty take."""
    ids = [uuid.UUID(int=i + 1) for i in range(len(holdings))]
    taken = take_oldest_first(list(zip(ids, holdings, strict=True)), quantity)
    assert sum(n for _, n in taken) == min(quantity, sum(holdings))
    assert all(n > 0 for _, n in taken)
    by_id = dict(zip(ids, holdings, strict=True))
    assert all(n <= by_id[b] for b, n in taken)
    order = [ids.index(b) for b, _ in taken]
    assert order == sorted(order)
    # Every batch before the last one used was used up (or held nothing).
    if taken:
        last = ids.index(taken[-1][0])
        used = dict(taken)
        assert all(used.get(ids[i], 0) == holdings[i] for i in range(last))
