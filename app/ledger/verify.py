"""``tanso ledger verify``: recompute the books from the postings and check every invariant.

Each check is one SQL query that returns the offending rows (none when all is well). Other
domains register their own checks (e.g. the registry's serial partition) with ``register``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass
class CheckResult:
    name: str
    description: str
    checked: int
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


Check = Callable[[AsyncSession], Awaitable[CheckResult]]
_EXTRA_CHECKS: list[Check] = []


def register(check: Check) -> Check:
    _EXTRA_CHECKS.append(check)
    return check


async def sql_check(
    session: AsyncSession, name: str, description: str, count_sql: str, violations_sql: str
) -> CheckResult:
    checked = int(await session.scalar(text(count_sql)) or 0)
    rows = (await session.execute(text(violations_sql + " LIMIT 20"))).all()
    return CheckResult(name, description, checked, [" ".join(str(v) for v in row) for row in rows])


LEDGER_CHECKS: list[tuple[str, str, str, str]] = [
    (
        "entries_balance",
        "every entry has two or more postings, summing to zero per asset",
        "SELECT count(*) FROM ledger_entries",
        """SELECT e.id, coalesce(s.asset, '-'), coalesce(s.total, 0), coalesce(c.n, 0)
             FROM ledger_entries e
             LEFT JOIN (SELECT entry_id, count(*) n FROM ledger_postings GROUP BY entry_id) c
                    ON c.entry_id = e.id
             LEFT JOIN (SELECT entry_id, asset, sum(amount) total FROM ledger_postings
                         GROUP BY entry_id, asset HAVING sum(amount) <> 0) s ON s.entry_id = e.id
            WHERE coalesce(c.n, 0) < 2 OR s.entry_id IS NOT NULL""",
    ),
    (
        "balances_match_postings",
        "every account's balance equals the sum of its postings",
        "SELECT count(*) FROM ledger_accounts",
        """SELECT a.id, a.balance, coalesce(p.total, 0)
             FROM ledger_accounts a
             LEFT JOIN (SELECT account_id, sum(amount) total FROM ledger_postings
                         GROUP BY account_id) p ON p.account_id = a.id
            WHERE a.balance <> coalesce(p.total, 0)""",
    ),
    (
        "running_balances",
        "every posting's balance_after is the running sum of its account's postings",
        "SELECT count(*) FROM ledger_postings",
        """SELECT id, account_id, balance_after, running FROM (
               SELECT id, account_id, balance_after,
                      sum(amount) OVER (PARTITION BY account_id ORDER BY id) AS running
                 FROM ledger_postings) r
            WHERE balance_after <> running""",
    ),
    (
        "non_negative",
        "no non-negative account is below zero",
        "SELECT count(*) FROM ledger_accounts WHERE is_non_negative",
        "SELECT id, balance FROM ledger_accounts WHERE is_non_negative AND balance < 0",
    ),
    (
        "posting_assets",
        "every posting is in its account's asset",
        "SELECT count(*) FROM ledger_postings",
        """SELECT p.id, p.asset, a.asset FROM ledger_postings p
             JOIN ledger_accounts a ON a.id = p.account_id WHERE a.asset <> p.asset""",
    ),
    (
        "conservation",
        "for every asset, all balances sum to zero (sources are negative)",
        "SELECT count(*) FROM ledger_assets",
        """SELECT asset, sum(balance) FROM ledger_accounts GROUP BY asset
            HAVING sum(balance) <> 0""",
    ),
    (
        "holds_match_held",
        "every held account's balance equals its owner's open holds of that asset",
        "SELECT count(*) FROM ledger_accounts WHERE kind = 'held'",
        """SELECT coalesce(a.organization_id, h.organization_id), coalesce(a.asset, h.asset),
                  coalesce(a.balance, 0), coalesce(h.total, 0)
             FROM (SELECT organization_id, asset, balance FROM ledger_accounts
                    WHERE kind = 'held') a
             FULL JOIN (SELECT organization_id, asset, sum(remaining) total FROM ledger_holds
                         WHERE status = 'active' GROUP BY organization_id, asset) h
               ON h.organization_id = a.organization_id AND h.asset = a.asset
            WHERE coalesce(a.balance, 0) <> coalesce(h.total, 0)""",
    ),
]


async def run_checks(session: AsyncSession) -> list[CheckResult]:
    results = [await sql_check(session, *check) for check in LEDGER_CHECKS]
    for extra in _EXTRA_CHECKS:
        results.append(await extra(session))
    return results
