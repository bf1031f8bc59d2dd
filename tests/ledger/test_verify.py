"""``tanso ledger verify``: clean books pass; every kind of corruption is found and named.

The CLI runs for real (``typer.testing.CliRunner`` on ``app.cli.app``) against the test
database, in a thread because it starts its own event loop. Corruptions the CLI must see are
committed (with the append-only trigger switched off for the one statement that needs it);
the per-check scenarios corrupt and check inside one transaction and roll it back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from app.cli import app as cli
from app.config import get_settings
from app.ledger import service as ledger
from app.ledger.models import AccountKind
from app.ledger.service import CASH
from app.ledger.verify import LEDGER_CHECKS, run_checks
from tests.ledger.helpers import fund, make_credit_asset

CHECK_NAMES = [name for name, *_ in LEDGER_CHECKS]


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The CLI reads settings from the environment; don't let its copy outlive the test."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def run_verify(database_url: str) -> Result:
    def invoke() -> Result:
        get_settings.cache_clear()
        return CliRunner().invoke(
            cli, ["ledger", "verify"], env={"TANSO_DATABASE__URL": database_url}
        )

    return await asyncio.to_thread(invoke)


async def some_books(
    session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID, *, credits: bool = True
) -> None:
    """Deposits, holds, a settlement and a release: every kind of row verify reads.

    ``credits``: also a credit asset with balances and a hold. Registry checks (run by the
    CLI too) expect a credit balance to have serial blocks, which only ``offsets`` makes, so
    the CLI tests use cash only."""
    await ledger.record_deposit(session, org, 10_000, "bank-1")
    hold = await ledger.reserve(session, org, CASH, 4_000)
    seller = await ledger.account_id(session, other_org, CASH, AccountKind.available)
    await ledger.settle_hold(session, hold, seller, 1_500)
    await ledger.release(session, hold, 500)
    await ledger.reserve(session, other_org, CASH, 1_000)
    if credits:
        credit = await make_credit_asset(session)
        await fund(session, other_org, 50, credit)
        await ledger.reserve(session, other_org, credit, 20)
    await session.commit()


async def posting_of(session: AsyncSession, kind: str) -> tuple[int, uuid.UUID, uuid.UUID]:
    """(posting id, entry id, account id) of the first posting of the first entry of ``kind``."""
    row = (
        await session.execute(
            text(
                "SELECT p.id, p.entry_id, p.account_id FROM ledger_postings p"
                " JOIN ledger_entries e ON e.id = p.entry_id WHERE e.kind = :k ORDER BY p.id LIMIT 1"
            ),
            {"k": kind},
        )
    ).one()
    return int(row[0]), uuid.UUID(str(row[1])), uuid.UUID(str(row[2]))


def assert_named(output: str, check: str, *objects: object) -> None:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL {check}:"))
    following = []
    for line in lines[start + 1 :]:
        if not line.strip().startswith("violation:"):
            break
        following.append(line)
    assert following, f"{check} lists no violation"
    for obj in objects:
        assert any(str(obj) in line for line in following), (check, obj, following)


@pytest.mark.usefixtures("fresh_settings")
class TestVerifyCommand:
    async def test_clean_books_pass(
        self, session: AsyncSession, database_url: str, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await some_books(session, org, other_org, credits=False)
        result = await run_verify(database_url)
        assert result.exit_code == 0, result.output
        for name in CHECK_NAMES:
            line = next(li for li in result.output.splitlines() if f" {name}: " in li)
            assert line.startswith("ok  "), line
            assert "(0 checked)" not in line, line
        assert "FAIL" not in result.output
        assert "violation" not in result.output

    async def test_empty_books_pass(self, database_url: str) -> None:
        result = await run_verify(database_url)
        assert result.exit_code == 0, result.output

    async def test_altered_posting_amount_fails(
        self, session: AsyncSession, database_url: str, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await some_books(session, org, other_org, credits=False)
        posting, entry, account = await posting_of(session, "settle")
        await session.execute(
            text("ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_append_only")
        )
        await session.execute(
            text("UPDATE ledger_postings SET amount = amount + 1 WHERE id = :id"), {"id": posting}
        )
        await session.execute(
            text("ALTER TABLE ledger_postings ENABLE TRIGGER ledger_postings_append_only")
        )
        await session.commit()
        result = await run_verify(database_url)
        assert result.exit_code == 1, result.output
        assert_named(result.output, "entries_balance", entry)
        assert_named(result.output, "balances_match_postings", account)
        assert_named(result.output, "running_balances", posting)
        assert "checks passed;" in result.output

    async def test_altered_cached_balance_fails(
        self, session: AsyncSession, database_url: str, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await some_books(session, org, other_org, credits=False)
        account = await ledger.account_id(session, org, CASH, AccountKind.available)
        await session.execute(
            text("UPDATE ledger_accounts SET balance = balance + 7 WHERE id = :id"), {"id": account}
        )
        await session.commit()
        result = await run_verify(database_url)
        assert result.exit_code == 1, result.output
        assert_named(result.output, "balances_match_postings", account)
        assert_named(result.output, "conservation", CASH)
        for name in ("entries_balance", "running_balances", "holds_match_held"):
            assert f"ok   {name}:" in result.output


SCENARIOS: list[tuple[str, list[str], str, str]] = [
    # (id, SQL that corrupts, the check that must fail, the parameter its violation names).
    # Bound: :posting (the deposit's posting on :account, the payer's available cash account),
    # :entry (the deposit), :hold (a cash hold of :org), :credit (a credit asset).
    (
        "posting-amount",
        [
            "ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_append_only",
            "UPDATE ledger_postings SET amount = amount - 1 WHERE id = :posting",
        ],
        "entries_balance",
        "entry",
    ),
    (
        "posting-deleted",
        [
            "ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_append_only",
            "DELETE FROM ledger_postings WHERE id = :posting",
        ],
        "entries_balance",
        "entry",
    ),
    (
        "cached-balance",
        ["UPDATE ledger_accounts SET balance = balance + 1 WHERE id = :account"],
        "balances_match_postings",
        "account",
    ),
    (
        "balance-after",
        [
            "ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_append_only",
            "UPDATE ledger_postings SET balance_after = balance_after + 1 WHERE id = :posting",
        ],
        "running_balances",
        "posting",
    ),
    (
        "negative-participant",
        [
            "ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_non_negative_check",
            "UPDATE ledger_accounts SET balance = -1 WHERE id = :account",
        ],
        "non_negative",
        "account",
    ),
    (
        "posting-asset",
        [
            "ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_append_only",
            "ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_account_id_asset_fkey",
            "UPDATE ledger_postings SET asset = :credit WHERE id = :posting",
        ],
        "posting_assets",
        "posting",
    ),
    (
        "conservation",
        ["UPDATE ledger_accounts SET balance = balance + 1 WHERE id = :account"],
        "conservation",
        "asset",
    ),
    (
        "hold-remaining",
        ["UPDATE ledger_holds SET remaining = remaining - 1 WHERE id = :hold"],
        "holds_match_held",
        "org",
    ),
    (
        "hold-closed-early",
        [
            "UPDATE ledger_holds SET remaining = 0, status = 'closed' WHERE id = :hold",
        ],
        "holds_match_held",
        "org",
    ),
]


class TestRunChecks:
    async def test_clean_books_have_no_violation(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        await some_books(session, org, other_org)
        results = await run_checks(session)
        assert [r.name for r in results][: len(CHECK_NAMES)] == CHECK_NAMES
        assert {r.name: r.violations for r in results if not r.ok} == {}
        assert all(r.checked > 0 for r in results if r.name in CHECK_NAMES)

    @pytest.mark.parametrize(
        ("statements", "check", "named"), [pytest.param(*rest, id=i) for i, *rest in SCENARIOS]
    )
    async def test_corruption_is_found(
        self,
        session: AsyncSession,
        org: uuid.UUID,
        other_org: uuid.UUID,
        statements: list[str],
        check: str,
        named: str,
    ) -> None:
        await some_books(session, org, other_org)
        account = await ledger.account_id(session, org, CASH, AccountKind.available)
        row = (
            await session.execute(
                text(
                    "SELECT p.id, p.entry_id FROM ledger_postings p"
                    " JOIN ledger_entries e ON e.id = p.entry_id"
                    " WHERE e.kind = 'deposit' AND p.account_id = :a"
                ),
                {"a": account},
            )
        ).one()
        params = {
            "posting": row[0],
            "entry": row[1],
            "account": account,
            "hold": await session.scalar(
                text("SELECT id FROM ledger_holds WHERE organization_id = :o"), {"o": org}
            ),
            "credit": await session.scalar(
                text("SELECT code FROM ledger_assets WHERE code <> 'JPY'")
            ),
            "org": org,
            "asset": CASH,
        }
        for statement in statements:
            used = {n: v for n, v in params.items() if f":{n}" in statement}
            await session.execute(text(statement), used)
        results = {r.name: r for r in await run_checks(session)}
        await session.rollback()
        assert not results[check].ok, f"{check} missed the corruption"
        assert any(str(params[named]) in v for v in results[check].violations), results[check]
