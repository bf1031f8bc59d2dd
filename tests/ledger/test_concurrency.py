"""Races with real commits: many sessions at once against the same accounts and holds.

Every task has its own session (its own connection and transaction) and commits; then the
books are checked: nothing overdrawn, nothing lost or made up, no deadlock, verify clean.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import SessionMaker
from app.ledger import service as ledger
from app.ledger.errors import DuplicateDeposit, HoldNotActive, InsufficientBalance, InvalidEntry
from app.ledger.models import Account, AccountKind, Deposit, Hold, HoldStatus
from app.ledger.posting import Leg, transfer
from app.ledger.service import CASH, EntrySpec
from app.ledger.verify import run_checks
from tests.ledger.helpers import OrgMaker, available_and_held, balance, entry_count, fund

pytestmark = pytest.mark.concurrency

T = TypeVar("T")
Expected = (InsufficientBalance, InvalidEntry, HoldNotActive, DuplicateDeposit)


async def in_own_session(
    sessions: SessionMaker, op: Callable[[AsyncSession], Awaitable[T]]
) -> T | Exception:
    """Run ``op`` in a new session and commit; an expected refusal is returned, not raised."""
    async with sessions() as session:
        try:
            result = await op(session)
        except Expected as exc:
            await session.rollback()
            return exc
        await session.commit()
        return result


async def race(
    sessions: SessionMaker, ops: list[Callable[[AsyncSession], Awaitable[T]]]
) -> list[T | Exception]:
    """Start every op at once; any unexpected error (a deadlock, say) fails the test."""
    return list(await asyncio.gather(*(in_own_session(sessions, op) for op in ops)))


async def assert_books_clean(session: AsyncSession) -> None:
    failed = {r.name: r.violations for r in await run_checks(session) if not r.ok}
    assert failed == {}
    totals = (
        await session.execute(
            text("SELECT asset, sum(balance) FROM ledger_accounts GROUP BY asset")
        )
    ).all()
    assert all(total == 0 for _, total in totals)
    negative = await session.scalar(
        text("SELECT count(*) FROM ledger_accounts WHERE is_non_negative AND balance < 0")
    )
    assert negative == 0


class TestOverdraftRace:
    async def test_concurrent_holds_take_exactly_what_the_funds_allow(
        self, session: AsyncSession, sessions: SessionMaker, org: uuid.UUID
    ) -> None:
        await fund(session, org, 2_550)
        await ledger.account_id(session, org, CASH, AccountKind.held)
        await session.commit()

        def reserve(s: AsyncSession) -> Awaitable[uuid.UUID]:
            return ledger.reserve(s, org, CASH, 100)

        outcomes = await race(sessions, [reserve] * 60)
        won = [o for o in outcomes if isinstance(o, uuid.UUID)]
        lost = [o for o in outcomes if isinstance(o, InsufficientBalance)]
        assert (len(won), len(lost)) == (25, 35)
        assert await available_and_held(session, org) == (50, 2_500)
        holds = (await session.scalars(select(Hold.id))).all()
        assert set(holds) == set(won)
        await assert_books_clean(session)

    async def test_concurrent_transfers_never_overdraw(
        self, session: AsyncSession, sessions: SessionMaker, new_org: OrgMaker
    ) -> None:
        payer = await new_org()
        payees = [await new_org() for _ in range(5)]
        await fund(session, payer, 1_234)
        source = await ledger.account_id(session, payer, CASH, AccountKind.available)
        targets = [await ledger.account_id(session, p, CASH, AccountKind.available) for p in payees]
        await session.commit()

        def pay(target: uuid.UUID) -> Callable[[AsyncSession], Awaitable[uuid.UUID | None]]:
            def op(s: AsyncSession) -> Awaitable[uuid.UUID | None]:
                return ledger.post_entry(
                    s, EntrySpec(kind="transfer", legs=transfer(source, target, CASH, 50))
                )

            return op

        outcomes = await race(sessions, [pay(targets[i % 5]) for i in range(60)])
        won = sum(isinstance(o, uuid.UUID) for o in outcomes)
        lost = sum(isinstance(o, InsufficientBalance) for o in outcomes)
        assert (won, lost) == (24, 36)
        assert await balance(session, source) == 34
        received = [await balance(session, t) for t in targets]
        assert sum(received) == 1_200
        await assert_books_clean(session)

    async def test_concurrent_settlements_of_one_hold_never_exceed_it(
        self, session: AsyncSession, sessions: SessionMaker, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 95)
        seller = await ledger.account_id(session, other_org, CASH, AccountKind.available)
        await session.commit()

        def settle(s: AsyncSession) -> Awaitable[None]:
            return ledger.settle_hold(s, hold_id, seller, 10)

        def release(s: AsyncSession) -> Awaitable[int]:
            return ledger.release(s, hold_id, 10)

        outcomes = await race(sessions, [settle, release] * 15)
        settled = sum(o is None for o in outcomes[0::2])
        released = sum(o == 10 for o in outcomes[1::2])
        assert settled + released == 9  # 95 held: nine takes of 10, then 5 left
        assert all(isinstance(o, InvalidEntry) for o in outcomes if o is not None and o != 10)
        assert await balance(session, seller) == 10 * settled
        assert await available_and_held(session, org) == (905 + 10 * released, 5)
        hold = await session.get(Hold, hold_id, populate_existing=True)
        assert hold is not None
        assert (hold.remaining, hold.status) == (5, HoldStatus.active)
        await assert_books_clean(session)


class TestLockOrder:
    async def test_overlapping_batches_in_opposite_orders_never_deadlock(
        self, session: AsyncSession, sessions: SessionMaker, new_org: OrgMaker
    ) -> None:
        owners = [await new_org() for _ in range(5)]
        for owner in owners:
            await fund(session, owner, 1_000_000)
        accounts = [
            await ledger.account_id(session, o, CASH, AccountKind.available) for o in owners
        ]
        await session.commit()
        before = {a: await balance(session, a) for a in accounts}
        rng = random.Random(20261128)
        batches: list[list[EntrySpec]] = []
        for _ in range(20):
            batch = []
            for _ in range(10):
                source, dest = rng.sample(accounts, 2)
                batch.append(
                    EntrySpec(
                        kind="transfer", legs=transfer(source, dest, CASH, rng.randint(1, 1_000))
                    )
                )
            batches.append(batch)
        # Half the batches walk the accounts backwards: the classic lock-order deadlock.
        for batch in batches[::2]:
            batch.reverse()

        def post(batch: list[EntrySpec]) -> Callable[[AsyncSession], Awaitable[list[uuid.UUID]]]:
            def op(s: AsyncSession) -> Awaitable[list[uuid.UUID]]:
                return ledger.post_entries(s, batch)

            return op

        outcomes = await race(sessions, [post(b) for b in batches])
        assert all(isinstance(o, list) and len(o) == 10 for o in outcomes), outcomes
        expected = dict(before)
        for batch in batches:
            for spec in batch:
                for leg in spec.legs:
                    expected[leg.account_id] += leg.amount
        assert {a: await balance(session, a) for a in accounts} == expected
        assert sum(expected.values()) == sum(before.values())
        assert await entry_count(session) == 5 + 200
        await assert_books_clean(session)

    async def test_multi_leg_entries_over_shared_accounts_never_deadlock(
        self, session: AsyncSession, sessions: SessionMaker, new_org: OrgMaker
    ) -> None:
        """Each entry touches every account, listed in a different order."""
        owners = [await new_org() for _ in range(5)]
        for owner in owners:
            await fund(session, owner, 10_000)
        accounts = [
            await ledger.account_id(session, o, CASH, AccountKind.available) for o in owners
        ]
        await session.commit()
        rng = random.Random(7)

        def rotate(s: AsyncSession) -> Awaitable[uuid.UUID | None]:
            order = rng.sample(accounts, len(accounts))
            legs = [Leg(order[0], CASH, -4), *(Leg(a, CASH, 1) for a in order[1:])]
            return ledger.post_entry(s, EntrySpec(kind="split", legs=legs))

        outcomes = await race(sessions, [rotate] * 30)
        assert all(isinstance(o, uuid.UUID) for o in outcomes), outcomes
        total = sum([await balance(session, a) for a in accounts])
        assert total == 50_000
        await assert_books_clean(session)


class TestGetOrCreateRace:
    async def test_concurrent_account_id_returns_one_account(
        self, sessions: SessionMaker, session: AsyncSession, org: uuid.UUID
    ) -> None:
        def get(s: AsyncSession) -> Awaitable[uuid.UUID]:
            return ledger.account_id(s, org, CASH, AccountKind.held)

        outcomes = await race(sessions, [get] * 30)
        assert len(set(outcomes)) == 1
        assert isinstance(outcomes[0], uuid.UUID)
        count = await session.scalar(
            select(func.count()).select_from(Account).where(Account.organization_id == org)
        )
        assert count == 1

    async def test_concurrent_system_account_id_returns_one_account(
        self, sessions: SessionMaker, session: AsyncSession
    ) -> None:
        """System accounts have no owner: NULLS NOT DISTINCT keeps them unique too."""

        def get(s: AsyncSession) -> Awaitable[uuid.UUID]:
            return ledger.account_id(s, None, CASH, AccountKind.external)

        outcomes = await race(sessions, [get] * 30)
        assert len(set(outcomes)) == 1
        count = await session.scalar(select(func.count()).select_from(Account))
        assert count == 1

    async def test_first_deposits_of_a_new_organisation_race_to_create_its_account(
        self, sessions: SessionMaker, session: AsyncSession, org: uuid.UUID
    ) -> None:
        def deposit(n: int) -> Callable[[AsyncSession], Awaitable[object]]:
            def op(s: AsyncSession) -> Awaitable[object]:
                return ledger.record_deposit(s, org, 100, f"bank-{n}")

            return op

        outcomes = await race(sessions, [deposit(n) for n in range(20)])
        assert all(not isinstance(o, Exception) for o in outcomes), outcomes
        assert await available_and_held(session, org) == (2_000, 0)
        await assert_books_clean(session)


class TestIdempotencyRace:
    async def test_same_key_racing_is_written_once(
        self, sessions: SessionMaker, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        source = await ledger.account_id(session, org, CASH, AccountKind.available)
        dest = await ledger.account_id(session, other_org, CASH, AccountKind.available)
        await session.commit()

        def post(s: AsyncSession) -> Awaitable[uuid.UUID | None]:
            return ledger.post_entry(
                s,
                EntrySpec(
                    kind="transfer", legs=transfer(source, dest, CASH, 100), idempotency_key="once"
                ),
            )

        outcomes = await race(sessions, [post] * 20)
        assert sum(isinstance(o, uuid.UUID) for o in outcomes) == 1
        assert sum(o is None for o in outcomes) == 19
        assert (await balance(session, source), await balance(session, dest)) == (900, 100)
        await assert_books_clean(session)

    async def test_batches_replaying_keys_in_opposite_orders_never_deadlock(
        self, sessions: SessionMaker, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        """A client retries a batch while another, listing the same keys in another order, is
        in flight: each key is taken once, and neither waits for the other forever."""
        await fund(session, org, 1_000_000)
        source = await ledger.account_id(session, org, CASH, AccountKind.available)
        dest = await ledger.account_id(session, other_org, CASH, AccountKind.available)
        await session.commit()

        def batch(keys: list[str]) -> Callable[[AsyncSession], Awaitable[list[uuid.UUID]]]:
            def op(s: AsyncSession) -> Awaitable[list[uuid.UUID]]:
                return ledger.post_entries(
                    s,
                    [
                        EntrySpec(
                            kind="transfer",
                            legs=transfer(source, dest, CASH, 1),
                            idempotency_key=key,
                        )
                        for key in keys
                    ],
                )

            return op

        for round_ in range(8):
            keys = [f"r{round_}-k{n:02}" for n in range(10)]
            outcomes = await race(sessions, [batch(keys), batch(keys[::-1])] * 3)
            assert all(isinstance(o, list) for o in outcomes), outcomes
            written = [entry for o in outcomes if isinstance(o, list) for entry in o]
            assert len(written) == 10
        assert await balance(session, dest) == 80
        await assert_books_clean(session)

    async def test_same_deposit_reference_racing_is_recorded_once(
        self, sessions: SessionMaker, session: AsyncSession, org: uuid.UUID
    ) -> None:
        def deposit(s: AsyncSession) -> Awaitable[object]:
            return ledger.record_deposit(s, org, 500, "bank-same")

        outcomes = await race(sessions, [deposit] * 20)
        assert sum(isinstance(o, DuplicateDeposit) for o in outcomes) == 19
        assert await available_and_held(session, org) == (500, 0)
        assert await session.scalar(select(func.count()).select_from(Deposit)) == 1
        await assert_books_clean(session)
