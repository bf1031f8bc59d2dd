"""The database's own backstops: whatever SQL reaches it, the ledger's invariants hold.

Each test writes raw SQL, bypassing ``app.ledger.service``, and checks the SQLSTATE the
migration's triggers and constraints raise: TN002 (unbalanced entry, at COMMIT), TN003
(posting added to an entry of another transaction, or after the balance checks ran), TN004
(update or delete of the append-only tables), 23514 (a CHECK constraint).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import SessionMaker
from app.ledger import service as ledger
from app.ledger.errors import LedgerInvariantViolated
from app.ledger.models import AccountKind
from app.ledger.posting import transfer
from app.ledger.service import CASH, EntrySpec
from tests.ledger.helpers import balance, entry_count, fund, make_credit_asset, posting_count


def sqlstate(error: DBAPIError) -> str | None:
    code = getattr(error.orig, "sqlstate", None)
    return None if code is None else str(code)


async def insert_entry(session: AsyncSession, entry_id: uuid.UUID | None = None) -> uuid.UUID:
    entry_id = entry_id or uuid.uuid4()
    await session.execute(
        text("INSERT INTO ledger_entries (id, kind) VALUES (:id, 'raw')"), {"id": entry_id}
    )
    return entry_id


async def insert_posting(
    session: AsyncSession, entry: uuid.UUID, account: uuid.UUID, amount: int, asset: str = CASH
) -> None:
    await session.execute(
        text(
            "INSERT INTO ledger_postings (entry_id, account_id, asset, amount, balance_after)"
            " VALUES (:e, :a, :asset, :amount, 0)"
        ),
        {"e": entry, "a": account, "asset": asset, "amount": amount},
    )


async def two_accounts(session: AsyncSession, org: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """An external (may be negative) and a participant account, committed."""
    external = await ledger.account_id(session, None, CASH, AccountKind.external)
    available = await ledger.account_id(session, org, CASH, AccountKind.available)
    await session.commit()
    return external, available


async def expect_sqlstate(session: AsyncSession, code: str, statement: str, **params: Any) -> None:
    with pytest.raises(DBAPIError) as caught:
        await session.execute(text(statement), params)
    assert sqlstate(caught.value) == code, caught.value
    await session.rollback()


class TestBalancedAtCommit:
    async def test_balanced_raw_entry_commits(self, session: AsyncSession, org: uuid.UUID) -> None:
        """The control: the trigger lets a correct entry through."""
        external, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, available, 10)
        await session.commit()
        assert await posting_count(session) == 2

    async def test_unbalanced_entry_is_rejected_at_commit(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        external, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, available, 9)  # accepted: the check is deferred
        with pytest.raises(DBAPIError) as caught:
            await session.commit()
        assert sqlstate(caught.value) == "TN002"
        assert "does not balance" in str(caught.value)
        await session.rollback()
        assert (await entry_count(session), await posting_count(session)) == (0, 0)

    async def test_entry_balanced_only_across_assets_is_rejected(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        external, _ = await two_accounts(session, org)
        credit_account = await ledger.account_id(session, org, credit, AccountKind.available)
        await session.commit()
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, credit_account, 10, credit)
        with pytest.raises(DBAPIError) as caught:
            await session.commit()
        assert sqlstate(caught.value) == "TN002"
        await session.rollback()

    async def test_entry_with_one_posting_is_rejected(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        _, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, available, 10)
        with pytest.raises(DBAPIError) as caught:
            await session.commit()
        assert sqlstate(caught.value) == "TN002"
        assert "1 posting(s)" in str(caught.value)
        await session.rollback()

    async def test_entry_with_no_posting_is_rejected(self, session: AsyncSession) -> None:
        await insert_entry(session)
        with pytest.raises(DBAPIError) as caught:
            await session.commit()
        assert sqlstate(caught.value) == "TN002"
        await session.rollback()
        assert await entry_count(session) == 0

    async def test_posting_function_called_with_unbalanced_legs_is_rejected_at_commit(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        """The SQL function trusts Python's validation; the trigger does not."""
        external, available = await two_accounts(session, org)
        entry = uuid.uuid4()
        await session.execute(
            text(
                "SELECT ledger_post_entries(ARRAY[:e]::uuid[], ARRAY['raw'], ARRAY[NULL]::text[],"
                " ARRAY[NULL]::text[], ARRAY[NULL]::jsonb[], ARRAY[:e, :e]::uuid[],"
                " ARRAY[:x, :a]::uuid[], ARRAY['JPY', 'JPY'], ARRAY[-10, 11]::bigint[])"
            ),
            {"e": entry, "x": external, "a": available},
        )
        with pytest.raises(DBAPIError) as caught:
            await session.commit()
        assert sqlstate(caught.value) == "TN002"
        await session.rollback()
        assert await balance(session, available) == 0


class TestChecksRunEarly:
    """``SET CONSTRAINTS ... IMMEDIATE`` runs the deferred balance checks on the spot."""

    async def test_unbalanced_entry_fails_at_once(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        external, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, available, 9)
        await expect_sqlstate(session, "TN002", "SET CONSTRAINTS ALL IMMEDIATE")

    async def test_posting_added_after_the_checks_ran_is_rejected(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        """Otherwise an entry checked early could be unbalanced afterwards and still commit."""
        external, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, available, 10)
        await session.execute(text("SET CONSTRAINTS ledger_entries_balanced IMMEDIATE"))
        await session.execute(text("SET CONSTRAINTS ledger_entries_balanced DEFERRED"))
        with pytest.raises(DBAPIError) as caught:
            await insert_posting(session, entry, available, 1_000)
        assert sqlstate(caught.value) == "TN003"
        assert "after the balance checks ran" in str(caught.value)
        await session.rollback()
        assert await posting_count(session) == 0

    async def test_the_service_cannot_post_after_the_checks_ran(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        external, available = await two_accounts(session, org)
        await ledger.post_entry(
            session, EntrySpec(kind="t", legs=transfer(external, available, CASH, 5))
        )
        await session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        await session.execute(text("SET CONSTRAINTS ALL DEFERRED"))
        with pytest.raises(LedgerInvariantViolated) as caught:
            await ledger.post_entry(
                session, EntrySpec(kind="t", legs=transfer(external, available, CASH, 5))
            )
        assert caught.value.extra["sqlstate"] == "TN003"
        assert "after the balance checks ran" in caught.value.detail
        await session.rollback()

    async def test_a_rolled_back_savepoint_forgets_the_early_check(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        """Checks run inside a savepoint that is rolled back are undone, and run again at
        commit: a posting added afterwards is allowed, and its imbalance is still caught."""
        external, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, available, 10)
        savepoint = await session.begin_nested()
        await session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        await savepoint.rollback()
        await insert_posting(session, entry, available, 1_000)
        with pytest.raises(DBAPIError) as caught:
            await session.commit()
        assert sqlstate(caught.value) == "TN002"
        await session.rollback()
        assert await posting_count(session) == 0

    async def test_checks_are_per_transaction(self, session: AsyncSession, org: uuid.UUID) -> None:
        external, available = await two_accounts(session, org)
        await session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        await session.commit()
        await ledger.post_entry(
            session, EntrySpec(kind="t", legs=transfer(external, available, CASH, 5))
        )
        await session.commit()
        assert await balance(session, available) == 5


class TestPostingsOnlyInTheEntrysTransaction:
    async def test_posting_added_to_an_earlier_entry_is_rejected(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        external, available = await two_accounts(session, org)
        entry = await session.scalar(text("SELECT id FROM ledger_entries"))
        assert entry is not None
        # Even a pair that balances: the entry was checked when its own transaction committed.
        with pytest.raises(DBAPIError) as caught:
            await session.execute(
                text(
                    "INSERT INTO ledger_postings (entry_id, account_id, asset, amount,"
                    " balance_after) VALUES (:e, :x, 'JPY', -5, 0), (:e, :a, 'JPY', 5, 0)"
                ),
                {"e": entry, "x": external, "a": available},
            )
        assert sqlstate(caught.value) == "TN003"
        await session.rollback()
        assert await posting_count(session) == 2

    async def test_posting_added_from_another_session_is_rejected(
        self, session: AsyncSession, sessions: SessionMaker, org: uuid.UUID
    ) -> None:
        """Two transactions open at once: the second cannot add to the first's entry."""
        external, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        await insert_posting(session, entry, external, -10)
        await insert_posting(session, entry, available, 10)
        await session.commit()
        async with sessions() as other:
            with pytest.raises(DBAPIError) as caught:
                await insert_posting(other, entry, available, 1)
            assert sqlstate(caught.value) == "TN003"

    async def test_service_cannot_reuse_an_entry_id(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        external, available = await two_accounts(session, org)
        spec = EntrySpec(kind="t", legs=transfer(external, available, CASH, 5))
        await ledger.post_entry(session, spec)
        await session.commit()
        with pytest.raises(DBAPIError) as caught:
            await ledger.post_entry(
                session,
                EntrySpec(kind="t", legs=transfer(external, available, CASH, 5), id=spec.id),
            )
        assert sqlstate(caught.value) == "23505"
        await session.rollback()
        assert await balance(session, available) == 105


class TestAppendOnly:
    @pytest.mark.parametrize(
        "statement",
        [
            pytest.param("UPDATE ledger_postings SET amount = amount * 2", id="update-postings"),
            pytest.param("UPDATE ledger_postings SET balance_after = 0", id="update-balance-after"),
            pytest.param("DELETE FROM ledger_postings", id="delete-postings"),
            pytest.param("UPDATE ledger_entries SET kind = 'forged'", id="update-entries"),
            pytest.param("DELETE FROM ledger_entries", id="delete-entries"),
        ],
    )
    async def test_rejected(self, session: AsyncSession, org: uuid.UUID, statement: str) -> None:
        await fund(session, org, 100)
        await expect_sqlstate(session, "TN004", statement)
        assert (await entry_count(session), await posting_count(session)) == (1, 2)

    async def test_rejected_even_when_no_row_matches(self, session: AsyncSession) -> None:
        await expect_sqlstate(session, "TN004", "DELETE FROM ledger_postings WHERE false")


class TestNonNegativeCheck:
    async def test_raw_update_below_zero_is_rejected(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await fund(session, org, 100)
        _, available = await two_accounts(session, org)
        with pytest.raises(DBAPIError) as caught:
            await session.execute(
                text("UPDATE ledger_accounts SET balance = balance - 101 WHERE id = :id"),
                {"id": available},
            )
        assert sqlstate(caught.value) == "23514"
        assert "ledger_accounts_non_negative_check" in str(caught.value)
        await session.rollback()
        assert await balance(session, available) == 100

    async def test_raw_update_to_zero_is_allowed(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        """The CHECK allows zero (verify, not the CHECK, notices the cached balance is wrong)."""
        await fund(session, org, 100)
        _, available = await two_accounts(session, org)
        await session.execute(
            text("UPDATE ledger_accounts SET balance = 0 WHERE id = :id"), {"id": available}
        )
        await session.rollback()

    async def test_external_account_may_be_negative(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        external, _ = await two_accounts(session, org)
        await session.execute(
            text("UPDATE ledger_accounts SET balance = -1 WHERE id = :id"), {"id": external}
        )
        await session.rollback()

    async def test_new_participant_account_cannot_start_negative(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        await expect_sqlstate(
            session,
            "23514",
            "INSERT INTO ledger_accounts (id, organization_id, asset, kind, is_non_negative,"
            " balance, created_at) VALUES (:id, :org, 'JPY', 'available', true, -1, now())",
            id=uuid.uuid4(),
            org=org,
        )


class TestPostingConstraints:
    async def test_zero_amount_is_rejected(self, session: AsyncSession, org: uuid.UUID) -> None:
        external, _ = await two_accounts(session, org)
        entry = await insert_entry(session)
        with pytest.raises(DBAPIError) as caught:
            await insert_posting(session, entry, external, 0)
        assert sqlstate(caught.value) == "23514"
        await session.rollback()

    async def test_posting_in_another_asset_than_its_account_is_rejected(
        self, session: AsyncSession, org: uuid.UUID
    ) -> None:
        credit = await make_credit_asset(session)
        _, available = await two_accounts(session, org)
        entry = await insert_entry(session)
        with pytest.raises(DBAPIError) as caught:
            await insert_posting(session, entry, available, 10, credit)
        assert sqlstate(caught.value) == "23503"
        await session.rollback()
