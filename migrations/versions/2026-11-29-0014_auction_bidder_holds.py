"""One cash hold per bidder per auction; a bid's outcome (won, lost) derived, not stored.

- ``auction_bids.cash_hold_id`` is no longer unique: a bidder's active bids in an auction
  share one hold, sized to the sum of their guarantees (``app.auction.service``). A close then
  settles one hold per bidder (1,000), not one per bid (100,000).
- ``ledger_hold_add`` grows an active hold by ``p_amount`` in one call: one ``hold`` entry
  from the owner's available to its held account (the same entry ``ledger_hold_reserve``
  posts, with the ``hold_id`` metadata), then ``amount`` and ``remaining`` grow together.
  TN011 no such hold, TN012 the hold is not active, TN013 an amount that is not positive, as
  ``ledger_hold_take``.
- ``auction_bids.status`` keeps only what the bidder did: ``active`` or ``withdrawn``. A bid
  that took part in a clearing is ``won`` exactly when it has an allocation, ``lost``
  otherwise (``app.auction.service.bid_status``), so the close no longer rewrites every bid
  row (100,000 row versions, half the close's time). Bids stored ``won`` or ``lost`` become
  ``active``; the upgrade first checks that ``won`` matched the allocations, so nothing is
  lost, and the downgrade writes them back from the allocations. The downgrade refuses once
  any two bids share a hold (0013 needs one hold per bid and would release a shared one
  whole); before that it restores 0013's schema exactly.

- ``auction_allocations`` has one foreign key, ``(bid_id, auction_id, bidder_organization_id)``
  to the same columns of ``auction_bids`` (unique there), instead of one to each of bids,
  auctions and organisations: a close inserts an allocation per winning bid, and each foreign
  key costs a check (and a row lock) per row. The bid's own keys reach the auction and the
  organisation, and the allocation can no longer disagree with its bid. The allocations'
  index on the bidder alone served only the dropped key: every read filters by auction.

Written by hand; the model drops the unique constraint and narrows the status check too
(``alembic check`` compares the constraints, keys and indexes, and ignores functions and
check constraints).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 00:14:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UP = [
    "ALTER TABLE auction_bids ADD CONSTRAINT auction_bids_id_auction_id_bidder_organization_id_key"
    " UNIQUE (id, auction_id, bidder_organization_id)",
    "ALTER TABLE auction_allocations ADD CONSTRAINT auction_allocations_bid_fkey"
    " FOREIGN KEY (bid_id, auction_id, bidder_organization_id)"
    " REFERENCES auction_bids (id, auction_id, bidder_organization_id) ON DELETE RESTRICT",
    "ALTER TABLE auction_allocations DROP CONSTRAINT auction_allocations_bid_id_fkey,"
    " DROP CONSTRAINT auction_allocations_auction_id_fkey,"
    " DROP CONSTRAINT auction_allocations_bidder_organization_id_fkey",
    "DROP INDEX ix_auction_allocations_bidder_organization_id",
    "ALTER TABLE auction_bids DROP CONSTRAINT auction_bids_cash_hold_id_key",
    # Stored won ⇔ has an allocation, or the upgrade stops (no information may be dropped).
    """
    DO $$
    BEGIN
        IF EXISTS (
            SELECT 1 FROM auction_bids b
             WHERE b.status IN ('won', 'lost')
               AND (b.status = 'won') <> EXISTS (
                   SELECT 1 FROM auction_allocations a WHERE a.bid_id = b.id)
        ) THEN
            RAISE EXCEPTION 'auction_bids won/lost disagree with auction_allocations';
        END IF;
    END
    $$
    """,
    "ALTER TABLE auction_bids DROP CONSTRAINT auction_bids_status_check",
    "UPDATE auction_bids SET status = 'active' WHERE status IN ('won', 'lost')",
    "ALTER TABLE auction_bids ADD CONSTRAINT auction_bids_status_check"
    " CHECK (status IN ('active', 'withdrawn'))",
    """
    CREATE FUNCTION ledger_hold_add(
        p_hold_id uuid, p_entry_id uuid, p_amount bigint, p_reference text
    ) RETURNS void
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_hold ledger_holds%ROWTYPE;
    BEGIN
        SELECT * INTO v_hold FROM ledger_holds WHERE id = p_hold_id FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no hold %', p_hold_id USING ERRCODE = 'TN011';
        END IF;
        IF v_hold.status <> 'active' THEN
            RAISE EXCEPTION 'hold % is not active', p_hold_id USING ERRCODE = 'TN012';
        END IF;
        IF p_amount IS NULL OR p_amount <= 0 THEN
            RAISE EXCEPTION '%', v_hold.remaining USING ERRCODE = 'TN013';
        END IF;
        PERFORM ledger_post_entries(
            ARRAY[p_entry_id], ARRAY['hold'], ARRAY[coalesce(p_reference, v_hold.reference)],
            ARRAY[NULL::text], ARRAY[jsonb_build_object('hold_id', p_hold_id::text)],
            ARRAY[p_entry_id, p_entry_id],
            ARRAY[ledger_account_of(v_hold.organization_id, v_hold.asset, 'available'),
                  ledger_account_of(v_hold.organization_id, v_hold.asset, 'held')],
            ARRAY[v_hold.asset, v_hold.asset], ARRAY[-p_amount, p_amount]);
        UPDATE ledger_holds
           SET amount = amount + p_amount, remaining = remaining + p_amount,
               updated_at = clock_timestamp()
         WHERE id = p_hold_id;
    END
    $$
    """,
]

DOWN = [
    # 0013 gives each bid its own hold (unique) and releases it whole when the bid is
    # withdrawn: once two bids share a hold, going back would need holds invented after the
    # fact, so the downgrade refuses, whole, and only runs before any bidder shared one.
    """
    DO $$
    BEGIN
        IF EXISTS (
            SELECT 1 FROM auction_bids GROUP BY cash_hold_id HAVING count(*) > 1
        ) THEN
            RAISE EXCEPTION 'bids share a cash hold: 0014 cannot be downgraded';
        END IF;
    END
    $$
    """,
    "CREATE INDEX ix_auction_allocations_bidder_organization_id"
    " ON auction_allocations (bidder_organization_id)",
    "ALTER TABLE auction_allocations"
    " ADD CONSTRAINT auction_allocations_auction_id_fkey FOREIGN KEY (auction_id)"
    " REFERENCES auctions (id) ON DELETE RESTRICT,"
    " ADD CONSTRAINT auction_allocations_bid_id_fkey FOREIGN KEY (bid_id)"
    " REFERENCES auction_bids (id) ON DELETE RESTRICT,"
    " ADD CONSTRAINT auction_allocations_bidder_organization_id_fkey"
    " FOREIGN KEY (bidder_organization_id) REFERENCES organizations (id) ON DELETE RESTRICT",
    "ALTER TABLE auction_allocations DROP CONSTRAINT auction_allocations_bid_fkey",
    "ALTER TABLE auction_bids"
    " DROP CONSTRAINT auction_bids_id_auction_id_bidder_organization_id_key",
    "DROP FUNCTION ledger_hold_add(uuid, uuid, bigint, text)",
    "ALTER TABLE auction_bids ADD CONSTRAINT auction_bids_cash_hold_id_key UNIQUE (cash_hold_id)",
    "ALTER TABLE auction_bids DROP CONSTRAINT auction_bids_status_check",
    "ALTER TABLE auction_bids ADD CONSTRAINT auction_bids_status_check"
    " CHECK (status IN ('active', 'withdrawn', 'won', 'lost'))",
    """
    UPDATE auction_bids b
       SET status = CASE WHEN EXISTS (SELECT 1 FROM auction_allocations a WHERE a.bid_id = b.id)
                         THEN 'won' ELSE 'lost' END
      FROM auctions u
     WHERE u.id = b.auction_id AND u.status IN ('cleared', 'settled', 'cancelled')
       AND b.status = 'active'
    """,
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
