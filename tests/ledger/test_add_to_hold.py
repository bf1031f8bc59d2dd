"""``ledger.add_to_hold`` (the SQL function ``ledger_hold_add`` of migration 0014): growing an
active hold, against the real database with real commits.

A successful call posts ONE balanced ``hold`` entry (available → held, with the ``hold_id``
metadata) and grows the hold's amount and remaining by the same figure; every refusal
(unknown hold, closed hold, a bad amount, a shortfall) leaves balances, the hold row and the
entries exactly as they were. A Hypothesis property then drives random sequences of reserve /
add / partial release / settle on one hold: the held balance always equals the hold's
remaining and the ledger's checkers stay clean.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.core.ids import new_id
from app.db.session import SessionMaker, create_sessionmaker
from app.db.url import async_url
from app.ledger import service as ledger
from app.ledger.errors import HoldNotActive, HoldNotFound, InsufficientBalance, InvalidEntry
from app.ledger.models import AccountKind, Entry, HoldStatus, Posting
from app.ledger.posting import MAX_AMOUNT
from app.ledger.service import CASH
from tests.conftest import _truncate as truncate
from tests.ledger.helpers import (
    assert_verified,
    available_and_held,
    entry_count,
    fund,
    make_credit_asset,
    make_org,
    posting_count,
    trace,
)

FUNDS = 1_000


async def hold_row(session: AsyncSession, hold_id: uuid.UUID) -> tuple[int, int, str, str | None]:
    """(amount, remaining, status, reference), read fresh."""
    row = (
        await session.execute(
            text("SELECT amount, remaining, status, reference FROM ledger_holds WHERE id = :id"),
            {"id": hold_id},
        )
    ).one()
    return int(row[0]), int(row[1]), str(row[2]), row[3]


async def snapshot(session: AsyncSession, org: uuid.UUID, hold_id: uuid.UUID) -> tuple[Any, ...]:
    """Everything a refused call must leave unchanged."""
    state = (
        await available_and_held(session, org),
        await hold_row(session, hold_id),
        await entry_count(session),
        await posting_count(session),
    )
    await session.rollback()
    return state


class TestGrows:
    async def test_one_balanced_entry_moves_available_to_held(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, FUNDS)
        hold_id = await ledger.reserve(session, org, CASH, 400, reference="order:1")
        await session.commit()
        entries, postings = await entry_count(session), await posting_count(session)

        await ledger.add_to_hold(session, hold_id, 250, reference="order:2")
        await session.commit()

        assert await available_and_held(session, org) == (350, 650)
        assert await hold_row(session, hold_id) == (650, 650, HoldStatus.active, "order:1")
        assert await entry_count(session) == entries + 1
        assert await posting_count(session) == postings + 2
        assert await trace(session, hold_id) == [("hold", "order:1", 400), ("hold", "order:2", 250)]
        # The new entry: two postings, available −250 and held +250, summing to zero.
        added = (
            await session.execute(
                select(Entry.kind, Posting.amount, Posting.account_id)
                .join(Posting, Posting.entry_id == Entry.id)
                .where(
                    Entry.metadata_["hold_id"].astext == str(hold_id),
                    Entry.reference == "order:2",
                )
                .order_by(Posting.amount)
            )
        ).all()
        available = await ledger.account_id(session, org, CASH, AccountKind.available)
        held = await ledger.account_id(session, org, CASH, AccountKind.held)
        assert [(k, int(a), acct) for k, a, acct in added] == [
            ("hold", -250, available),
            ("hold", 250, held),
        ]
        await assert_verified(session)

    async def test_without_a_reference_the_entry_takes_the_holds(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, FUNDS)
        hold_id = await ledger.reserve(session, org, CASH, 100, reference="order:7")
        await ledger.add_to_hold(session, hold_id, 50)
        await session.commit()
        assert await trace(session, hold_id) == [("hold", "order:7", 100), ("hold", "order:7", 50)]
        assert await hold_row(session, hold_id) == (150, 150, HoldStatus.active, "order:7")
        await assert_verified(session)

    async def test_after_a_partial_release_amount_and_remaining_grow_together(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, FUNDS)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await ledger.release(session, hold_id, 100)
        payee = await ledger.account_id(session, other_org, CASH, AccountKind.available)
        await ledger.settle_hold(session, hold_id, payee, 50)
        await session.commit()
        await ledger.add_to_hold(session, hold_id, 120)
        await session.commit()
        # amount 400 + 120; remaining 400 − 100 − 50 + 120.
        assert (await hold_row(session, hold_id))[:3] == (520, 370, HoldStatus.active)
        assert await available_and_held(session, org) == (FUNDS - 50 - 370, 370)
        await assert_verified(session)

    async def test_exactly_the_available_balance(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, FUNDS)
        hold_id = await ledger.reserve(session, org, CASH, 300)
        await ledger.add_to_hold(session, hold_id, 700)
        await session.commit()
        assert await available_and_held(session, org) == (0, FUNDS)
        assert (await hold_row(session, hold_id))[:3] == (FUNDS, FUNDS, HoldStatus.active)
        # The grown hold gives everything back in one release and closes.
        assert await ledger.release(session, hold_id) == FUNDS
        await session.commit()
        assert (await hold_row(session, hold_id))[:3] == (FUNDS, 0, HoldStatus.closed)
        assert await available_and_held(session, org) == (FUNDS, 0)
        await assert_verified(session)

    async def test_a_credit_hold_grows_too(self, session: AsyncSession, org: uuid.UUID) -> None:
        asset = await make_credit_asset(session)
        await fund(session, org, 50, asset)
        hold_id = await ledger.reserve(session, org, asset, 10)
        await ledger.add_to_hold(session, hold_id, 15)
        await session.commit()
        assert await available_and_held(session, org, asset) == (25, 25)
        assert await available_and_held(session, org) == (0, 0)  # no cash touched
        await assert_verified(session)

    async def test_only_the_holds_owner_is_charged(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, FUNDS)
        await fund(session, other_org, FUNDS)
        hold_id = await ledger.reserve(session, org, CASH, 100)
        await ledger.add_to_hold(session, hold_id, 100)
        await session.commit()
        assert await available_and_held(session, org) == (800, 200)
        assert await available_and_held(session, other_org) == (FUNDS, 0)
        await assert_verified(session)


class TestRefusals:
    async def _hold(self, session: AsyncSession, org: uuid.UUID) -> uuid.UUID:
        await fund(session, org, FUNDS)
        hold_id = await ledger.reserve(session, org, CASH, 400, reference="order:1")
        await session.commit()
        return hold_id

    async def test_unknown_hold(self, session: AsyncSession, org: uuid.UUID) -> None:
        hold_id = await self._hold(session, org)
        before = await snapshot(session, org, hold_id)
        with pytest.raises(HoldNotFound):
            await ledger.add_to_hold(session, uuid.uuid4(), 10)
        await session.rollback()
        assert await snapshot(session, org, hold_id) == before

    @pytest.mark.parametrize("how", ["released", "settled", "released in two"])
    async def test_closed_hold(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID, how: str
    ) -> None:
        hold_id = await self._hold(session, org)
        if how == "released":
            await ledger.release(session, hold_id)
        elif how == "settled":
            payee = await ledger.account_id(session, other_org, CASH, AccountKind.available)
            await ledger.settle_hold(session, hold_id, payee, 400)
        else:
            await ledger.release(session, hold_id, 150)
            await ledger.release(session, hold_id, 250)
        await session.commit()
        before = await snapshot(session, org, hold_id)
        assert before[1][1:3] == (0, HoldStatus.closed)
        with pytest.raises(HoldNotActive):
            await ledger.add_to_hold(session, hold_id, 10)
        await session.rollback()
        assert await snapshot(session, org, hold_id) == before
        await assert_verified(session)

    @pytest.mark.parametrize("amount", [0, -5, MAX_AMOUNT + 1, 1.5, True, "10"])
    async def test_bad_amount(self, session: AsyncSession, org: uuid.UUID, amount: Any) -> None:
        hold_id = await self._hold(session, org)
        before = await snapshot(session, org, hold_id)
        with pytest.raises(InvalidEntry):
            await ledger.add_to_hold(session, hold_id, amount)
        await session.rollback()
        assert await snapshot(session, org, hold_id) == before

    @pytest.mark.parametrize("amount", [0, -5])
    async def test_the_sql_function_refuses_a_non_positive_amount_itself(
        self, session: AsyncSession, org: uuid.UUID, amount: int
    ) -> None:
        """``ledger_hold_add`` guards its own input (TN013), not only the Python check."""
        hold_id = await self._hold(session, org)
        before = await snapshot(session, org, hold_id)
        with pytest.raises(InvalidEntry):
            await ledger._hold_call(
                session, ledger._ADD_FAST_SQL, [hold_id, new_id(), amount, None], hold_id
            )
        await session.rollback()
        assert await snapshot(session, org, hold_id) == before

    async def test_shortfall(self, session: AsyncSession, org: uuid.UUID) -> None:
        hold_id = await self._hold(session, org)  # available 600
        before = await snapshot(session, org, hold_id)
        with pytest.raises(InsufficientBalance):
            await ledger.add_to_hold(session, hold_id, 601)
        await session.rollback()
        assert await snapshot(session, org, hold_id) == before
        # The same session works on afterwards: the refusal left nothing half-done.
        await ledger.add_to_hold(session, hold_id, 600)
        await session.commit()
        assert await available_and_held(session, org) == (0, FUNDS)
        await assert_verified(session)

    async def test_a_refusal_inside_a_transaction_keeps_nothing_of_it(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        """A grow that succeeded earlier in the same transaction goes with the rollback."""
        hold_id = await self._hold(session, org)
        before = await snapshot(session, org, hold_id)
        await ledger.add_to_hold(session, hold_id, 100)
        with pytest.raises(InsufficientBalance):
            await ledger.add_to_hold(session, hold_id, 501)
        await session.rollback()
        assert await snapshot(session, org, hold_id) == before
        await assert_verified(session)


@pytest.mark.concurrency
async def test_concurrent_grows_never_overdraw(
    session: AsyncSession, org: uuid.UUID, sessions: SessionMaker
) -> None:
    """Ten sessions grow one hold at once with cash for four more: exactly four commit, the
    others are refused whole, and the hold equals the held balance."""
    await fund(session, org, FUNDS)
    hold_id = await ledger.reserve(session, org, CASH, 200)
    await session.commit()

    async def grow() -> bool:
        async with sessions() as s:
            try:
                await ledger.add_to_hold(s, hold_id, 200)
            except InsufficientBalance:
                await s.rollback()
                return False
            await s.commit()
            return True

    outcomes = await asyncio.wait_for(asyncio.gather(*(grow() for _ in range(10))), 60)
    assert outcomes.count(True) == 4
    assert await available_and_held(session, org) == (0, FUNDS)
    assert (await hold_row(session, hold_id))[:3] == (FUNDS, FUNDS, HoldStatus.active)
    await assert_verified(session)


# --- property: a random life of one hold ----------------------------------------------------


@dataclass(frozen=True)
class Op:
    name: str  # add, release, settle, release_all
    amount: int


ops = st.lists(
    st.one_of(
        st.builds(Op, st.just("add"), st.integers(min_value=1, max_value=700)),
        st.builds(Op, st.just("release"), st.integers(min_value=1, max_value=400)),
        st.builds(Op, st.just("settle"), st.integers(min_value=1, max_value=400)),
        st.builds(Op, st.just("release_all"), st.just(0)),
    ),
    min_size=1,
    max_size=12,
)


async def _apply(session: AsyncSession, hold_id: uuid.UUID, destination: uuid.UUID, op: Op) -> None:
    if op.name == "add":
        await ledger.add_to_hold(session, hold_id, op.amount)
    elif op.name == "release":
        await ledger.release(session, hold_id, op.amount)
    elif op.name == "settle":
        await ledger.settle_hold(session, hold_id, destination, op.amount)
    else:
        await ledger.release(session, hold_id)


async def _life(sessions: SessionMaker, first: int, steps: list[Op]) -> None:
    """Reserve ``first``, then run ``steps`` (each committed, or refused and rolled back);
    a plain model predicts every outcome; after each step held == remaining."""
    async with sessions() as session:
        payer, payee = await make_org(session), await make_org(session)
        await fund(session, payer, FUNDS)
        destination = await ledger.account_id(session, payee, CASH, AccountKind.available)
        hold_id = await ledger.reserve(session, payer, CASH, first)
        await session.commit()
        available, remaining, amount, paid = FUNDS - first, first, first, 0
        for op in steps:
            expected: type[Exception] | None = None
            if remaining == 0:
                expected = HoldNotActive
            elif op.name == "add" and op.amount > available:
                expected = InsufficientBalance
            elif op.name in ("release", "settle") and op.amount > remaining:
                expected = InvalidEntry
            if expected is not None:
                with pytest.raises(expected):
                    await _apply(session, hold_id, destination, op)
                await session.rollback()
            else:
                await _apply(session, hold_id, destination, op)
                await session.commit()
                if op.name == "add":
                    available, remaining, amount = (
                        available - op.amount,
                        remaining + op.amount,
                        amount + op.amount,
                    )
                elif op.name == "release":
                    available, remaining = available + op.amount, remaining - op.amount
                elif op.name == "settle":
                    paid, remaining = paid + op.amount, remaining - op.amount
                else:
                    available, remaining = available + remaining, 0
            got_available, held = await available_and_held(session, payer)
            row = await hold_row(session, hold_id)
            await session.rollback()
            assert held == row[1] == remaining, (op, held, row)
            assert got_available == available
            assert row[:3] == (
                amount,
                remaining,
                HoldStatus.active if remaining else HoldStatus.closed,
            )
        payee_available, _ = await available_and_held(session, payee)
        assert payee_available == paid
        assert available + remaining + paid == FUNDS
        await assert_verified(session)


def test_a_random_life_of_one_hold_keeps_held_equal_to_remaining(database_url: str) -> None:
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        engine = create_async_engine(async_url(database_url), pool_size=2, max_overflow=0)
        sessions = create_sessionmaker(engine)

        @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.integers(min_value=1, max_value=600), ops)
        def check(first: int, steps: list[Op]) -> None:
            runner.run(_life(sessions, first, steps))

        try:
            check()
        finally:
            runner.run(truncate(engine))
            runner.run(engine.dispose())
