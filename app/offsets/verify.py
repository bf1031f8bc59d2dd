"""Registry checks run by ``tanso ledger verify`` (and after every registry test).

Serial blocks against the ledger: every batch's live blocks partition its serial range, and
each holder's active / held / retired blocks equal its available / held / retired balances of
the batch's asset. Claims against retirements: no gram backs two claims.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.verify import CheckResult, sql_check

REGISTRY_CHECKS: list[tuple[str, str, str, str]] = [
    (
        "serial_partition",
        "every batch's live serial blocks cover its range exactly (no gap, no overlap)",
        "SELECT count(*) FROM offset_batches",
        """SELECT b.id, b.serial_start, b.serial_end, coalesce(s.total, 0), s.lo, s.hi
             FROM offset_batches b
             LEFT JOIN (SELECT batch_id, sum(serial_end - serial_start + 1) total,
                               min(serial_start) lo, max(serial_end) hi
                          FROM offset_blocks WHERE closed_at IS NULL GROUP BY batch_id) s
               ON s.batch_id = b.id
            WHERE coalesce(s.total, 0) <> b.quantity OR s.lo <> b.serial_start
               OR s.hi <> b.serial_end""",
    ),
    (
        "blocks_match_ledger",
        "each holder's active, held and retired blocks equal its ledger balances per batch",
        "SELECT count(*) FROM offset_blocks WHERE closed_at IS NULL",
        """WITH blocks AS (
               SELECT b.asset,
                      CASE k.state WHEN 'retired' THEN NULL ELSE k.holder_organization_id END org,
                      CASE k.state WHEN 'active' THEN 'available' ELSE k.state END kind,
                      sum(k.serial_end - k.serial_start + 1) qty
                 FROM offset_blocks k JOIN offset_batches b ON b.id = k.batch_id
                WHERE k.closed_at IS NULL
                GROUP BY 1, 2, 3),
           ledger AS (
               SELECT a.asset, a.organization_id org, a.kind, a.balance qty
                 FROM ledger_accounts a JOIN ledger_assets s ON s.code = a.asset
                WHERE s.kind = 'credit' AND a.kind IN ('available', 'held', 'retired'))
           SELECT coalesce(b.asset, l.asset), coalesce(b.org, l.org), coalesce(b.kind, l.kind),
                  coalesce(b.qty, 0), coalesce(l.qty, 0)
             FROM blocks b FULL JOIN ledger l
               ON l.asset = b.asset AND l.org IS NOT DISTINCT FROM b.org AND l.kind = b.kind
            WHERE coalesce(b.qty, 0) <> coalesce(l.qty, 0)""",
    ),
    (
        "retirements_match_blocks",
        "each retirement's quantity and serial ranges equal its retired blocks",
        "SELECT count(*) FROM offset_retirements",
        """SELECT r.id, r.quantity, coalesce(s.total, 0)
             FROM offset_retirements r
             LEFT JOIN (SELECT retirement_id, sum(serial_end - serial_start + 1) total
                          FROM offset_blocks WHERE state = 'retired'
                         GROUP BY retirement_id) s ON s.retirement_id = r.id
            WHERE coalesce(s.total, 0) <> r.quantity""",
    ),
    (
        "claims_within_retirements",
        "no retirement backs more grams than it holds, and its claimed grams add up",
        "SELECT count(*) FROM offset_retirements",
        """SELECT r.id, r.claimed_g, coalesce(a.total, 0), r.quantity * 1000000
             FROM offset_retirements r
             LEFT JOIN (SELECT retirement_id, sum(grams) total FROM offset_claim_allocations
                         WHERE released_at IS NULL GROUP BY retirement_id) a
               ON a.retirement_id = r.id
            WHERE r.claimed_g <> coalesce(a.total, 0) OR r.claimed_g > r.quantity * 1000000""",
    ),
    (
        "pools_balance",
        "every offset pool's remaining grams equal its funding less its active unit claims",
        "SELECT count(*) FROM offset_pools",
        """SELECT p.id, p.total_g, coalesce(s.total, 0), coalesce(f.total, 0),
                  coalesce(c.total, 0)
             FROM offset_pools p
             LEFT JOIN (SELECT pool_id, sum(remaining_g) total FROM offset_pool_shards
                         GROUP BY pool_id) s ON s.pool_id = p.id
             LEFT JOIN (SELECT pool_id, sum(grams) total FROM offset_claim_allocations
                         WHERE pool_id IS NOT NULL GROUP BY pool_id) f ON f.pool_id = p.id
             LEFT JOIN (SELECT pool_id, sum(covered_g) total FROM offset_claims
                         WHERE pool_id IS NOT NULL AND status = 'active' GROUP BY pool_id) c
               ON c.pool_id = p.id
            WHERE p.total_g <> coalesce(f.total, 0)
               OR coalesce(s.total, 0) <> p.total_g - coalesce(c.total, 0)""",
    ),
    (
        "whole_claims_covered",
        "every active whole claim is backed by allocations equal to its covered grams",
        "SELECT count(*) FROM offset_claims WHERE pool_id IS NULL",
        """SELECT c.id, c.covered_g, coalesce(a.total, 0)
             FROM offset_claims c
             LEFT JOIN (SELECT claim_id, sum(grams) total FROM offset_claim_allocations
                         WHERE claim_id IS NOT NULL AND released_at IS NULL
                         GROUP BY claim_id) a ON a.claim_id = c.id
            WHERE c.pool_id IS NULL AND c.status = 'active'
              AND c.covered_g <> coalesce(a.total, 0)""",
    ),
]


async def run_registry_checks(session: AsyncSession) -> list[CheckResult]:
    return [await sql_check(session, *check) for check in REGISTRY_CHECKS]
