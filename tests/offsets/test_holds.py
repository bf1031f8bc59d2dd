"""Credit holds (for sell orders and auction lots) through the service: hold, settle, release."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.offsets import service as offsets_service
from app.offsets.errors import InsufficientCredits, InvalidTransfer
from tests.factories import create_org
from tests.offsets.helpers import assert_books_clean, credit_balances, holdings, new_batch


class TestHoldSettleRelease:
    async def test_a_hold_settles_and_releases_the_lowest_serials(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 100)
        s, e = issued.start, issued.end
        batch_id, seller_id = uuid.UUID(issued.batch_id), uuid.UUID(seller.id)

        hold = await offsets_service.hold_credits(
            session, seller_id, batch_id, 30, reference="order-1"
        )
        await session.commit()
        holding = (await holdings(client, seller))[issued.batch_id]
        assert (holding["available"], holding["held"]) == (70, 30)
        assert holding["serial_ranges"] == [[s + 30, e]]
        assert holding["held_serial_ranges"] == [[s, s + 29]]
        assert await credit_balances(client, seller) == {issued.batch_id: (70, 30)}
        await assert_books_clean(session)

        delivered = await offsets_service.settle_credits(
            session, batch_id, hold, uuid.UUID(buyer.id), 10, reference="trade-1"
        )
        await session.commit()
        assert delivered == [[s, s + 9]]
        assert (await holdings(client, buyer))[issued.batch_id]["serial_ranges"] == [[s, s + 9]]
        assert await credit_balances(client, seller) == {issued.batch_id: (70, 20)}
        assert await credit_balances(client, buyer) == {issued.batch_id: (10, 0)}
        await assert_books_clean(session)

        assert await offsets_service.release_credits(session, batch_id, hold, 5) == 5
        await session.commit()
        holding = (await holdings(client, seller))[issued.batch_id]
        assert holding["serial_ranges"] == [[s + 10, s + 14], [s + 30, e]]
        assert holding["held_serial_ranges"] == [[s + 15, s + 29]]
        await assert_books_clean(session)

        assert await offsets_service.release_credits(session, batch_id, hold) == 15
        await session.commit()
        holding = (await holdings(client, seller))[issued.batch_id]
        assert holding["serial_ranges"] == [[s + 10, e]]
        assert (holding["available"], holding["held"]) == (90, 0)
        assert await credit_balances(client, seller) == {issued.batch_id: (90, 0)}
        await assert_books_clean(session)

        # The hold is used up: nothing more can be released or delivered from it.
        with pytest.raises(InvalidTransfer):
            await offsets_service.release_credits(session, batch_id, hold)
        await session.rollback()
        with pytest.raises(InvalidTransfer):
            await offsets_service.settle_credits(
                session, batch_id, hold, uuid.UUID(buyer.id), 1, reference="trade-2"
            )
        await session.rollback()
        await assert_books_clean(session)

    async def test_refusals_change_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        buyer = await create_org(client, kind="company")
        issued = await new_batch(client, seller, 10)
        batch_id, seller_id = uuid.UUID(issued.batch_id), uuid.UUID(seller.id)

        with pytest.raises(InsufficientCredits):
            await offsets_service.hold_credits(session, seller_id, batch_id, 11, reference="o")
        await session.rollback()
        with pytest.raises(InsufficientCredits):
            await offsets_service.hold_credits(
                session, uuid.UUID(buyer.id), batch_id, 1, reference="o"
            )
        await session.rollback()

        hold = await offsets_service.hold_credits(session, seller_id, batch_id, 4, reference="o")
        await session.commit()
        with pytest.raises(InsufficientCredits):
            await offsets_service.release_credits(session, batch_id, hold, 5)
        await session.rollback()
        with pytest.raises(InsufficientCredits):
            await offsets_service.settle_credits(
                session, batch_id, hold, uuid.UUID(buyer.id), 5, reference="t"
            )
        await session.rollback()
        with pytest.raises(InvalidTransfer):
            await offsets_service.release_credits(session, batch_id, uuid.uuid4())
        await session.rollback()

        assert await credit_balances(client, seller) == {issued.batch_id: (6, 4)}
        assert await holdings(client, buyer) == {}
        await assert_books_clean(session)

    async def test_settling_to_the_holder_is_a_release(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        seller = await create_org(client, kind="seller")
        issued = await new_batch(client, seller, 10)
        batch_id, seller_id = uuid.UUID(issued.batch_id), uuid.UUID(seller.id)
        hold = await offsets_service.hold_credits(session, seller_id, batch_id, 4, reference="o")
        await session.commit()
        await offsets_service.settle_credits(session, batch_id, hold, seller_id, 4, reference="t")
        await session.commit()
        holding = (await holdings(client, seller))[issued.batch_id]
        assert holding["serial_ranges"] == [[issued.start, issued.end]]
        assert await credit_balances(client, seller) == {issued.batch_id: (10, 0)}
        await assert_books_clean(session)
