"""The one-call hold operations (``reserve``, ``settle_hold``, ``release``, ``release_rest``:
SQL functions of migration 0013) against the real database.

Each scenario must leave exactly what a plain model says: balances, hold rows and entries
(kind, reference, ``hold_id`` metadata); bad inputs are refused with the domain errors,
writing nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger import service as ledger
from app.ledger.errors import HoldNotActive, HoldNotFound, InsufficientBalance, InvalidEntry
from app.ledger.models import AccountKind, AssetKind, Hold, HoldStatus
from app.ledger.posting import MAX_AMOUNT
from app.ledger.service import CASH
from tests.ledger.helpers import (
    assert_verified,
    available_and_held,
    balance,
    entry_count,
    fund,
    trace,
)

FUNDS = 1_000
Step = Callable[[AsyncSession, uuid.UUID, uuid.UUID], Awaitable[None]]


def expected(spec: list[tuple[str, int | None]]) -> tuple[Any, ...]:
    """What a scenario must leave, from a plain model: the payer's (available, held), the
    payee's cash, the hold's (amount, remaining, status, reference) and its entry trail."""
    available, held, paid = FUNDS, 0, 0
    trail: list[tuple[str, str | None, int]] = []
    amount = 0
    for name, value in spec:
        if name == "reserve":
            assert value is not None
            amount, available, held = value, available - value, held + value
            trail.append(("hold", "order:1", value))
        elif name == "settle":
            assert value is not None
            held, paid = held - value, paid + value
            trail.append(("trade", "trade:1", value))
        else:
            take = held if value is None else value
            held, available = held - take, available + take
            trail.append(("release", "order:1", take))
    status = HoldStatus.active if held else HoldStatus.closed
    return (available, held), paid, (amount, held, status, "order:1"), trail


async def run_scenario(
    session: AsyncSession,
    new_org: Callable[[], Awaitable[uuid.UUID]],
    spec: list[tuple[str, int | None]],
) -> None:
    """Run the steps for a new payer and payee, then compare everything the ledger holds with
    the model."""
    payer, payee = await new_org(), await new_org()
    await fund(session, payer, FUNDS)
    for step in steps(spec):
        await step(session, payer, payee)
    hold = await session.scalar(select(Hold).where(Hold.organization_id == payer))
    assert hold is not None
    payee_cash = await ledger.account_id(session, payee, CASH, AccountKind.available)
    got = (
        await available_and_held(session, payer),
        await balance(session, payee_cash),
        (hold.amount, hold.remaining, hold.status, hold.reference),
        await trace(session, hold.id),
    )
    assert got == expected(spec)
    await assert_verified(session)


async def _hold_of(session: AsyncSession, org: uuid.UUID) -> uuid.UUID:
    hold_id = await session.scalar(select(Hold.id).where(Hold.organization_id == org))
    assert hold_id is not None
    return hold_id


def reserve(amount: int) -> Step:
    async def step(session: AsyncSession, payer: uuid.UUID, payee: uuid.UUID) -> None:
        await ledger.reserve(session, payer, CASH, amount, reference="order:1")

    return step


def settle(amount: int) -> Step:
    async def step(session: AsyncSession, payer: uuid.UUID, payee: uuid.UUID) -> None:
        destination = await ledger.account_id(session, payee, CASH, AccountKind.available)
        await ledger.settle_hold(
            session,
            await _hold_of(session, payer),
            destination,
            amount,
            kind="trade",
            reference="trade:1",
        )

    return step


def release(amount: int | None) -> Step:
    async def step(session: AsyncSession, payer: uuid.UUID, payee: uuid.UUID) -> None:
        await ledger.release(session, await _hold_of(session, payer), amount)

    return step


SCENARIOS: dict[str, list[tuple[str, int | None]]] = {
    "reserve": [("reserve", 400)],
    "reserve all": [("reserve", 1_000)],
    "settle part": [("reserve", 400), ("settle", 150)],
    "settle all": [("reserve", 400), ("settle", 400)],
    "settle then release the rest": [("reserve", 400), ("settle", 150), ("release", None)],
    "release part then all": [("reserve", 400), ("release", 100), ("release", None)],
    "settle, release part, settle": [
        ("reserve", 500),
        ("settle", 100),
        ("release", 50),
        ("settle", 350),
    ],
}


def steps(spec: list[tuple[str, int | None]]) -> list[Step]:
    out = []
    for name, amount in spec:
        if name == "reserve":
            assert amount is not None
            out.append(reserve(amount))
        elif name == "settle":
            assert amount is not None
            out.append(settle(amount))
        else:
            out.append(release(amount))
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_each_scenario_leaves_what_the_model_says(
    session: AsyncSession, new_org: Callable[[], Awaitable[uuid.UUID]], name: str
) -> None:
    await run_scenario(session, new_org, SCENARIOS[name])


class TestReserve:
    async def test_creates_the_accounts_on_first_use(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        """No held account exists before the first hold: the function creates it."""
        await fund(session, org, 100)
        await ledger.reserve(session, org, CASH, 100)
        await session.commit()
        assert await available_and_held(session, org) == (0, 100)
        await assert_verified(session)

    async def test_more_than_available_writes_nothing(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        entries = await entry_count(session)
        with pytest.raises(InsufficientBalance):
            await ledger.reserve(session, org, CASH, 1_001)
        await session.rollback()
        assert await available_and_held(session, org) == (1_000, 0)
        assert (await session.scalars(select(Hold))).all() == []
        assert await entry_count(session) == entries

    @pytest.mark.parametrize("amount", [0, -5, MAX_AMOUNT + 1])
    async def test_bad_amount_is_refused(
        self, session: AsyncSession, org: uuid.UUID, amount: int
    ) -> None:
        await fund(session, org, 1_000)
        with pytest.raises(InvalidEntry):
            await ledger.reserve(session, org, CASH, amount)
        await session.rollback()
        assert await available_and_held(session, org) == (1_000, 0)


class TestTake:
    async def test_more_than_remaining_is_refused_with_the_remaining(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await ledger.release(session, hold_id, 100)
        await session.commit()
        with pytest.raises(InvalidEntry, match="remaining 300"):
            await ledger.release(session, hold_id, 301)
        await session.rollback()
        destination = await ledger.account_id(session, org, CASH, AccountKind.available)
        with pytest.raises(InvalidEntry, match="remaining 300"):
            await ledger.settle_hold(session, hold_id, destination, 301)
        await session.rollback()
        assert await available_and_held(session, org) == (700, 300)
        await assert_verified(session)

    @pytest.mark.parametrize("amount", [0, -1])
    async def test_non_positive_amount_is_refused(
        self, session: AsyncSession, org: uuid.UUID, amount: int
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.release(session, hold_id, amount)
        await session.rollback()
        assert await available_and_held(session, org) == (600, 400)

    async def test_closed_and_unknown_holds_are_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        assert await ledger.release(session, hold_id) == 400
        await session.commit()
        with pytest.raises(HoldNotActive):
            await ledger.release(session, hold_id)
        await session.rollback()
        with pytest.raises(HoldNotFound):
            await ledger.release(session, uuid.uuid4(), 1)
        await session.rollback()
        assert await available_and_held(session, org) == (1_000, 0)

    async def test_destination_of_another_asset_is_refused(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await session.commit()
        asset = ledger.credit_asset(uuid.uuid4())
        await ledger.ensure_asset(session, asset, AssetKind.credit, "test batch")
        wrong = await ledger.account_id(session, other_org, asset, AccountKind.available)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.settle_hold(session, hold_id, wrong, 100)
        await session.rollback()
        assert await available_and_held(session, org) == (600, 400)


class TestReleaseRest:
    async def test_gives_back_what_is_left(self, session: AsyncSession, org: uuid.UUID) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400, reference="order:9")
        await ledger.release(session, hold_id, 150, reference="trade:1")
        assert await ledger.release_rest(session, hold_id) == 250
        await session.commit()
        assert await available_and_held(session, org) == (1_000, 0)
        assert await trace(session, hold_id) == [
            ("hold", "order:9", 400),
            ("release", "trade:1", 150),
            ("release", "order:9", 250),  # the hold's own reference
        ]
        await assert_verified(session)

    async def test_a_used_up_hold_is_no_error_and_writes_nothing(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await ledger.release(session, hold_id)
        await session.commit()
        entries = await entry_count(session)
        assert await ledger.release_rest(session, hold_id) == 0
        await session.commit()
        assert await entry_count(session) == entries
        assert await available_and_held(session, org) == (1_000, 0)

    async def test_unknown_hold_is_refused(self, session: AsyncSession) -> None:
        with pytest.raises(HoldNotFound):
            await ledger.release_rest(session, uuid.uuid4())
