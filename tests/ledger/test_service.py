"""The ledger service against the real database (``app.ledger.service``).

The ``session`` fixture is a plain session on the test database: ``commit()`` really commits,
so the deferred balance trigger runs, and the tables are emptied after each test.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import SessionMaker
from app.ledger import service as ledger
from app.ledger.errors import (
    DuplicateDeposit,
    HoldNotActive,
    HoldNotFound,
    InsufficientBalance,
    InvalidEntry,
)
from app.ledger.models import (
    Account,
    AccountKind,
    AssetKind,
    Deposit,
    Entry,
    Hold,
    HoldStatus,
    Posting,
)
from app.ledger.posting import MAX_AMOUNT, Leg, transfer
from app.ledger.service import CASH, EntrySpec
from app.ledger.verify import run_checks
from tests.ledger.helpers import (
    available_and_held,
    balance,
    entry_count,
    fund,
    make_credit_asset,
    posted_sum,
    posting_count,
)


async def accounts_of(session: AsyncSession, org: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    available = await ledger.account_id(session, org, CASH, AccountKind.available)
    held = await ledger.account_id(session, org, CASH, AccountKind.held)
    return available, held


async def external(session: AsyncSession, asset: str = CASH) -> uuid.UUID:
    return await ledger.account_id(session, None, asset, AccountKind.external)


async def assert_verified(session: AsyncSession) -> None:
    failed = {r.name: r.violations for r in await run_checks(session) if not r.ok}
    assert failed == {}


class TestAccountId:
    async def test_creates_on_first_use_and_returns_the_same_id_after(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        first = await ledger.account_id(session, org, CASH, AccountKind.available)
        await session.commit()
        again = await ledger.account_id(session, org, CASH, AccountKind.available)
        assert again == first
        count = await session.scalar(
            text("SELECT count(*) FROM ledger_accounts WHERE organization_id = :o"), {"o": org}
        )
        assert count == 1

    async def test_same_id_within_one_transaction(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        first = await ledger.account_id(session, org, CASH, AccountKind.held)
        assert await ledger.account_id(session, org, CASH, AccountKind.held) == first

    async def test_kinds_assets_and_owners_get_their_own_accounts(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        ids = {
            await ledger.account_id(session, org, CASH, AccountKind.available),
            await ledger.account_id(session, org, CASH, AccountKind.held),
            await ledger.account_id(session, org, credit, AccountKind.available),
            await ledger.account_id(session, other_org, CASH, AccountKind.available),
            await ledger.account_id(session, None, CASH, AccountKind.external),
            await ledger.account_id(session, None, CASH, AccountKind.fees),
        }
        assert len(ids) == 6

    async def test_system_account_is_shared(self, session: AsyncSession) -> None:
        first = await external(session)
        await session.commit()
        assert await external(session) == first

    async def test_participant_accounts_are_non_negative_and_external_is_not(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        available, held = await accounts_of(session, org)
        ext = await external(session)
        fees = await ledger.account_id(session, None, CASH, AccountKind.fees)
        rows = dict(
            (
                await session.execute(
                    select(Account.id, Account.is_non_negative).where(
                        Account.id.in_([available, held, ext, fees])
                    )
                )
            ).all()
        )
        assert rows == {available: True, held: True, ext: False, fees: True}


class TestPostEntries:
    async def test_transfer_moves_the_amount_and_records_running_balances(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        entry = EntrySpec(kind="transfer", legs=transfer(a, b, CASH, 300), reference="r1")
        assert await ledger.post_entry(session, entry) == entry.id
        await session.commit()

        assert await balance(session, a) == 700
        assert await balance(session, b) == 300
        rows = (
            await session.execute(
                select(Posting.account_id, Posting.amount, Posting.balance_after)
                .where(Posting.entry_id == entry.id)
                .order_by(Posting.id)
            )
        ).all()
        assert [tuple(r) for r in rows] == [(a, -300, 700), (b, 300, 300)]
        stored = await session.get(Entry, entry.id)
        assert stored is not None
        assert (stored.kind, stored.reference) == ("transfer", "r1")
        await assert_verified(session)

    async def test_version_counts_the_postings(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await ledger.post_entries(
            session,
            [EntrySpec(kind="t", legs=transfer(a, b, CASH, 1)) for _ in range(3)],
        )
        await session.commit()
        versions = dict(
            (
                await session.execute(
                    select(Account.id, Account.version).where(Account.id.in_([a, b]))
                )
            ).all()
        )
        assert versions == {a: 4, b: 3}

    async def test_batch_writes_every_entry_atomically(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        specs = [EntrySpec(kind="t", legs=transfer(a, b, CASH, n)) for n in (1, 2, 3)]
        written = await ledger.post_entries(session, specs)
        await session.commit()
        assert sorted(written) == sorted(s.id for s in specs)
        assert await balance(session, a) == 994
        assert await balance(session, b) == 6
        assert await entry_count(session) == 4
        await assert_verified(session)

    async def test_running_balances_follow_the_order_of_the_batch(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await ledger.post_entries(
            session,
            [
                EntrySpec(kind="t", legs=transfer(a, b, CASH, 60)),
                EntrySpec(kind="t", legs=transfer(b, a, CASH, 10)),
                EntrySpec(kind="t", legs=transfer(a, b, CASH, 50)),
            ],
        )
        await session.commit()
        after = (
            await session.scalars(
                select(Posting.balance_after).where(Posting.account_id == a).order_by(Posting.id)
            )
        ).all()
        assert list(after) == [100, 40, 50, 0]
        await assert_verified(session)

    async def test_multi_asset_entry(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        await fund(session, org, 5_000)
        await fund(session, other_org, 10, credit)
        buyer_cash, _ = await accounts_of(session, org)
        seller_cash, _ = await accounts_of(session, other_org)
        buyer_credit = await ledger.account_id(session, org, credit, AccountKind.available)
        seller_credit = await ledger.account_id(session, other_org, credit, AccountKind.available)
        legs = [
            Leg(buyer_cash, CASH, -4_000),
            Leg(seller_cash, CASH, 4_000),
            Leg(seller_credit, credit, -4),
            Leg(buyer_credit, credit, 4),
        ]
        await ledger.post_entry(session, EntrySpec(kind="trade", legs=legs))
        await session.commit()
        assert await available_and_held(session, org) == (1_000, 0)
        assert await available_and_held(session, org, credit) == (4, 0)
        assert await available_and_held(session, other_org) == (4_000, 0)
        assert await available_and_held(session, other_org, credit) == (6, 0)
        await assert_verified(session)

    async def test_external_account_may_go_negative(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 250)
        assert await balance(session, await external(session)) == -250

    async def test_metadata_is_stored(self, session: AsyncSession, org: uuid.UUID) -> None:
        await fund(session, org, 10)
        a, held = await accounts_of(session, org)
        entry = EntrySpec(
            kind="t", legs=transfer(a, held, CASH, 1), metadata={"order": "o-1", "n": 2}
        )
        await ledger.post_entry(session, entry)
        await session.commit()
        stored = await session.get(Entry, entry.id)
        assert stored is not None
        assert stored.metadata_ == {"order": "o-1", "n": 2}

    async def test_empty_batch_writes_nothing(self, session: AsyncSession) -> None:
        assert await ledger.post_entries(session, []) == []
        assert await entry_count(session) == 0


class TestIdempotencyKey:
    async def test_replayed_key_is_skipped(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        first = EntrySpec(kind="t", legs=transfer(a, b, CASH, 100), idempotency_key="k-1")
        assert await ledger.post_entry(session, first) == first.id
        await session.commit()
        replay = EntrySpec(kind="t", legs=transfer(a, b, CASH, 100), idempotency_key="k-1")
        assert await ledger.post_entry(session, replay) is None
        await session.commit()
        assert await balance(session, a) == 900
        assert await balance(session, b) == 100
        assert await session.get(Entry, replay.id) is None
        assert await entry_count(session) == 2
        assert await posting_count(session) == 4
        await assert_verified(session)

    async def test_replay_with_other_legs_changes_nothing(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await ledger.post_entry(
            session, EntrySpec(kind="t", legs=transfer(a, b, CASH, 100), idempotency_key="k")
        )
        await session.commit()
        # Even a replay that would overdraw is skipped before any balance is looked at.
        replay = EntrySpec(kind="t", legs=transfer(a, b, CASH, 5_000), idempotency_key="k")
        assert await ledger.post_entries(session, [replay]) == []
        await session.commit()
        assert (await balance(session, a), await balance(session, b)) == (900, 100)

    async def test_only_new_entries_of_a_batch_are_written(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        old = EntrySpec(kind="t", legs=transfer(a, b, CASH, 100), idempotency_key="old")
        await ledger.post_entry(session, old)
        await session.commit()
        again = EntrySpec(kind="t", legs=transfer(a, b, CASH, 100), idempotency_key="old")
        new = EntrySpec(kind="t", legs=transfer(a, b, CASH, 7), idempotency_key="new")
        plain = EntrySpec(kind="t", legs=transfer(a, b, CASH, 3))
        written = await ledger.post_entries(session, [again, new, plain])
        await session.commit()
        assert sorted(written) == sorted([new.id, plain.id])
        assert await balance(session, a) == 890
        assert await balance(session, b) == 110
        await assert_verified(session)

    async def test_same_key_twice_in_one_batch_is_written_once(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        one = EntrySpec(kind="t", legs=transfer(a, b, CASH, 10), idempotency_key="dup")
        two = EntrySpec(kind="t", legs=transfer(a, b, CASH, 10), idempotency_key="dup")
        assert await ledger.post_entries(session, [one, two]) == [one.id]
        await session.commit()
        assert await balance(session, b) == 10
        await assert_verified(session)


class TestInsufficientBalance:
    async def test_overdraft_raises_and_writes_nothing(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await session.commit()
        entries, postings = await entry_count(session), await posting_count(session)
        with pytest.raises(InsufficientBalance) as caught:
            await ledger.post_entry(session, EntrySpec(kind="t", legs=transfer(a, b, CASH, 101)))
        assert caught.value.extra["account_id"] == str(a)
        await session.rollback()
        assert (await balance(session, a), await balance(session, b)) == (100, 0)
        assert (await entry_count(session), await posting_count(session)) == (entries, postings)
        await assert_verified(session)

    async def test_the_whole_batch_is_refused(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await session.commit()
        with pytest.raises(InsufficientBalance):
            await ledger.post_entries(
                session,
                [
                    EntrySpec(kind="t", legs=transfer(a, b, CASH, 60)),
                    EntrySpec(kind="t", legs=transfer(a, b, CASH, 60)),
                ],
            )
        await session.rollback()
        assert (await balance(session, a), await balance(session, b)) == (100, 0)
        assert await entry_count(session) == 1

    async def test_an_intermediate_overdraft_is_refused(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        """Spending before the money arrives, later in the same batch, is still an overdraft."""
        await fund(session, org, 50)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await session.commit()
        with pytest.raises(InsufficientBalance):
            await ledger.post_entries(
                session,
                [
                    EntrySpec(kind="t", legs=transfer(a, b, CASH, 100)),
                    EntrySpec(kind="t", legs=transfer(b, a, CASH, 100)),
                ],
            )
        await session.rollback()
        assert (await balance(session, a), await balance(session, b)) == (50, 0)

    async def test_money_received_earlier_in_the_batch_can_be_spent(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 50)
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await ledger.post_entries(
            session,
            [
                EntrySpec(kind="t", legs=transfer(a, b, CASH, 50)),
                EntrySpec(kind="t", legs=transfer(b, a, CASH, 50)),
                EntrySpec(kind="t", legs=transfer(a, b, CASH, 20)),
            ],
        )
        await session.commit()
        assert (await balance(session, a), await balance(session, b)) == (30, 20)
        await assert_verified(session)

    async def test_empty_account_cannot_pay(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        a, _ = await accounts_of(session, org)
        b, _ = await accounts_of(session, other_org)
        await session.commit()
        with pytest.raises(InsufficientBalance):
            await ledger.post_entry(session, EntrySpec(kind="t", legs=transfer(a, b, CASH, 1)))
        await session.rollback()
        assert await entry_count(session) == 0


class TestInvalidEntry:
    async def test_unbalanced_legs_are_refused_before_the_database(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        a, held = await accounts_of(session, org)
        with pytest.raises(InvalidEntry, match="sum to zero"):
            await ledger.post_entry(
                session, EntrySpec(kind="t", legs=[Leg(a, CASH, -10), Leg(held, CASH, 9)])
            )
        # Nothing reached the database, so the transaction is still usable.
        await session.commit()
        assert await entry_count(session) == 1

    async def test_one_invalid_entry_refuses_the_batch(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        a, held = await accounts_of(session, org)
        with pytest.raises(InvalidEntry):
            await ledger.post_entries(
                session,
                [
                    EntrySpec(kind="t", legs=transfer(a, held, CASH, 10)),
                    EntrySpec(kind="t", legs=[Leg(a, CASH, 0), Leg(held, CASH, 0)]),
                ],
            )
        await session.commit()
        assert await available_and_held(session, org) == (100, 0)

    async def test_unknown_account_is_refused(self, session: AsyncSession, org: uuid.UUID) -> None:
        await fund(session, org, 100)
        a, _ = await accounts_of(session, org)
        await session.commit()
        ghost = uuid.uuid4()
        with pytest.raises(InvalidEntry, match="does not exist"):
            await ledger.post_entry(session, EntrySpec(kind="t", legs=transfer(a, ghost, CASH, 10)))
        await session.rollback()
        assert await balance(session, a) == 100
        assert await entry_count(session) == 1

    async def test_unknown_account_as_the_only_payer_is_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        a, _ = await accounts_of(session, org)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.post_entry(
                session, EntrySpec(kind="t", legs=transfer(uuid.uuid4(), a, CASH, 10))
            )
        await session.rollback()
        assert await balance(session, a) == 0
        assert await entry_count(session) == 0

    async def test_account_of_another_asset_is_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        await fund(session, org, 100)
        a, _ = await accounts_of(session, org)
        credit_account = await ledger.account_id(session, org, credit, AccountKind.available)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.post_entry(
                session,
                EntrySpec(kind="t", legs=[Leg(a, CASH, -10), Leg(credit_account, CASH, 10)]),
            )
        await session.rollback()
        assert await balance(session, a) == 100
        assert await balance(session, credit_account) == 0


class TestReserve:
    async def test_moves_available_to_held_and_opens_a_hold(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400, reference="order-1")
        await session.commit()
        assert await available_and_held(session, org) == (600, 400)
        hold = await session.get(Hold, hold_id)
        assert hold is not None
        assert (hold.amount, hold.remaining, hold.status, hold.reference) == (
            400,
            400,
            HoldStatus.active,
            "order-1",
        )
        entry = await session.scalar(select(Entry).where(Entry.kind == "hold"))
        assert entry is not None
        assert entry.metadata_ == {"hold_id": str(hold_id)}
        await assert_verified(session)

    async def test_the_whole_balance_can_be_held(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        await ledger.reserve(session, org, CASH, 1_000)
        await session.commit()
        assert await available_and_held(session, org) == (0, 1_000)

    async def test_more_than_available_raises_and_opens_no_hold(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        await ledger.reserve(session, org, CASH, 600)
        await session.commit()
        with pytest.raises(InsufficientBalance):
            await ledger.reserve(session, org, CASH, 401)
        await session.rollback()
        assert await available_and_held(session, org) == (400, 600)
        holds = (await session.scalars(select(Hold))).all()
        assert len(holds) == 1
        await assert_verified(session)

    @pytest.mark.parametrize("amount", [0, -5])
    async def test_non_positive_amount_is_refused(
        self, session: AsyncSession, org: uuid.UUID, amount: int
    ) -> None:
        await fund(session, org, 1_000)
        with pytest.raises(InvalidEntry):
            await ledger.reserve(session, org, CASH, amount)
        await session.rollback()
        assert await available_and_held(session, org) == (1_000, 0)


class TestRelease:
    async def test_release_all_closes_the_hold(self, session: AsyncSession, org: uuid.UUID) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await session.commit()
        assert await ledger.release(session, hold_id) == 400
        await session.commit()
        assert await available_and_held(session, org) == (1_000, 0)
        hold = await session.get(Hold, hold_id, populate_existing=True)
        assert hold is not None
        assert (hold.remaining, hold.status) == (0, HoldStatus.closed)
        await assert_verified(session)

    async def test_release_part_keeps_the_hold_open(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await session.commit()
        assert await ledger.release(session, hold_id, 150) == 150
        await session.commit()
        assert await available_and_held(session, org) == (750, 250)
        hold = await session.get(Hold, hold_id, populate_existing=True)
        assert hold is not None
        assert (hold.remaining, hold.status) == (250, HoldStatus.active)
        assert await ledger.release(session, hold_id) == 250
        await session.commit()
        assert await available_and_held(session, org) == (1_000, 0)
        await assert_verified(session)

    async def test_release_exactly_the_remaining_closes_it(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        hold_id = await ledger.reserve(session, org, CASH, 100)
        await ledger.release(session, hold_id, 30)
        await ledger.release(session, hold_id, 70)
        await session.commit()
        hold = await session.get(Hold, hold_id, populate_existing=True)
        assert hold is not None
        assert hold.status == HoldStatus.closed
        await assert_verified(session)

    async def test_more_than_remaining_is_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await ledger.release(session, hold_id, 100)
        await session.commit()
        with pytest.raises(InvalidEntry, match="remaining 300"):
            await ledger.release(session, hold_id, 301)
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

    async def test_closed_hold_is_refused(self, session: AsyncSession, org: uuid.UUID) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await ledger.release(session, hold_id)
        await session.commit()
        with pytest.raises(HoldNotActive):
            await ledger.release(session, hold_id)
        await session.rollback()
        with pytest.raises(HoldNotActive):
            await ledger.release(session, hold_id, 1)
        await session.rollback()
        assert await available_and_held(session, org) == (1_000, 0)

    async def test_unknown_hold_is_refused(self, session: AsyncSession) -> None:
        with pytest.raises(HoldNotFound):
            await ledger.release(session, uuid.uuid4())

    async def test_hold_changed_by_another_session_is_read_fresh(
        self, session: AsyncSession, org: uuid.UUID, sessions: SessionMaker
    ) -> None:
        """A hold already loaded in this session must be re-read under its lock, not trusted."""
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await session.commit()
        loaded = await session.get(Hold, hold_id)  # kept in this session's identity map
        assert loaded is not None
        async with sessions() as other:
            await ledger.release(other, hold_id, 100)
            await other.commit()
        # The hold operations run in SQL under the row lock: the stale copy is not what counts.
        assert await ledger.release(session, hold_id) == 300
        await session.commit()
        await session.refresh(loaded)
        assert (loaded.remaining, loaded.status) == (0, HoldStatus.closed)
        assert await available_and_held(session, org) == (1_000, 0)
        await assert_verified(session)


class TestSettleHold:
    async def test_pays_the_counterparty_from_the_hold(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        seller, _ = await accounts_of(session, other_org)
        await ledger.settle_hold(session, hold_id, seller, 250, reference="trade-1")
        await session.commit()
        assert await available_and_held(session, org) == (600, 150)
        assert await available_and_held(session, other_org) == (250, 0)
        entry = await session.scalar(select(Entry).where(Entry.kind == "settle"))
        assert entry is not None
        assert entry.reference == "trade-1"
        hold = await session.get(Hold, hold_id, populate_existing=True)
        assert hold is not None
        assert (hold.remaining, hold.status) == (150, HoldStatus.active)
        await assert_verified(session)

    async def test_settling_the_rest_closes_the_hold(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400, reference="bid-1")
        seller, _ = await accounts_of(session, other_org)
        await ledger.settle_hold(session, hold_id, seller, 100, kind="auction_settle")
        await ledger.settle_hold(session, hold_id, seller, 300)
        await session.commit()
        hold = await session.get(Hold, hold_id, populate_existing=True)
        assert hold is not None
        assert hold.status == HoldStatus.closed
        assert await available_and_held(session, org) == (600, 0)
        assert await available_and_held(session, other_org) == (400, 0)
        kinds = (await session.scalars(select(Entry.reference).where(Entry.kind != "fund"))).all()
        assert set(kinds) == {"bid-1"}
        with pytest.raises(HoldNotActive):
            await ledger.settle_hold(session, hold_id, seller, 1)
        await session.rollback()
        await assert_verified(session)

    async def test_more_than_remaining_is_refused(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        seller, _ = await accounts_of(session, other_org)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.settle_hold(session, hold_id, seller, 401)
        await session.rollback()
        assert await available_and_held(session, org) == (600, 400)
        assert await available_and_held(session, other_org) == (0, 0)

    async def test_unknown_hold_is_refused(
        self, session: AsyncSession, other_org: uuid.UUID
    ) -> None:
        seller, _ = await accounts_of(session, other_org)
        with pytest.raises(HoldNotFound):
            await ledger.settle_hold(session, uuid.uuid4(), seller, 1)

    async def test_unknown_destination_is_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.settle_hold(session, hold_id, uuid.uuid4(), 100)
        await session.rollback()
        assert await available_and_held(session, org) == (600, 400)
        await assert_verified(session)

    async def test_destination_of_another_asset_is_refused(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        wrong = await ledger.account_id(session, other_org, credit, AccountKind.available)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.settle_hold(session, hold_id, wrong, 100)
        await session.rollback()
        assert await available_and_held(session, org) == (600, 400)

    async def test_settling_into_its_own_held_account_is_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 400)
        _, held = await accounts_of(session, org)
        await session.commit()
        with pytest.raises(InvalidEntry):
            await ledger.settle_hold(session, hold_id, held, 100)
        await session.rollback()
        assert await available_and_held(session, org) == (600, 400)


class TestRecordDeposit:
    async def test_credits_the_organisation_from_the_external_account(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        deposit = await ledger.record_deposit(session, org, 5_000, "bank-1")
        await session.commit()
        assert (deposit.amount, deposit.reference, deposit.status) == (5_000, "bank-1", "completed")
        assert await available_and_held(session, org) == (5_000, 0)
        assert await balance(session, await external(session)) == -5_000
        entry = await session.get(Entry, deposit.entry_id)
        assert entry is not None
        assert (entry.kind, entry.reference) == ("deposit", "bank-1")
        await assert_verified(session)

    async def test_duplicate_reference_is_refused(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await ledger.record_deposit(session, org, 5_000, "bank-1")
        await session.commit()
        with pytest.raises(DuplicateDeposit):
            await ledger.record_deposit(session, org, 5_000, "bank-1")
        await session.rollback()
        assert await available_and_held(session, org) == (5_000, 0)
        assert len((await session.scalars(select(Deposit))).all()) == 1

    async def test_same_reference_for_another_organisation_is_fine(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await ledger.record_deposit(session, org, 5_000, "bank-1")
        await ledger.record_deposit(session, other_org, 7_000, "bank-1")
        await session.commit()
        assert await available_and_held(session, other_org) == (7_000, 0)

    @pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1])
    async def test_invalid_amount_is_refused(
        self, session: AsyncSession, org: uuid.UUID, amount: int
    ) -> None:
        with pytest.raises(InvalidEntry):
            await ledger.record_deposit(session, org, amount, "bank-1")
        await session.rollback()
        assert await entry_count(session) == 0


class TestBalances:
    async def test_available_and_held_per_asset(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        await fund(session, org, 1_000)
        await fund(session, org, 8, credit)
        await fund(session, other_org, 99)
        await ledger.reserve(session, org, CASH, 300)
        await ledger.reserve(session, org, credit, 3)
        await session.commit()
        rows = await ledger.balances(session, org)
        assert {(r.asset, r.asset_kind, r.available, r.held) for r in rows} == {
            (CASH, AssetKind.cash, 700, 300),
            (credit, AssetKind.credit, 5, 3),
        }

    async def test_a_new_organisation_has_none(self, session: AsyncSession, org: uuid.UUID) -> None:
        assert await ledger.balances(session, org) == []

    async def test_cached_balances_equal_the_postings(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await fund(session, org, 1_000)
        hold_id = await ledger.reserve(session, org, CASH, 500)
        seller, _ = await accounts_of(session, other_org)
        await ledger.settle_hold(session, hold_id, seller, 200)
        await ledger.release(session, hold_id, 100)
        await session.commit()
        for account in (*(await accounts_of(session, org)), seller, await external(session)):
            assert await balance(session, account) == await posted_sum(session, account)
