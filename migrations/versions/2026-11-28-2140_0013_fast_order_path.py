"""The order path in fewer round trips: ``ledger_hold_reserve`` and ``ledger_hold_take`` (hold
operations as one SQL call each), ``offset_apply_change`` (a serial-block change),
``market_lock_product`` (lock and read a product at once).

Written by hand (no table or column changes, so ``alembic check`` is unaffected). Taking a
hold, or paying or giving back part of one, was three to five round trips (look up the two
accounts, lock and update the hold, post the entry); each function does the same work in the
database in one call. Balances still move only through ``ledger_post_entries`` (the same
entry, legs, kind, reference and ``hold_id`` metadata as ``app.ledger.service.reserve``,
``settle_hold`` and ``release`` write), so every check of the posting function and the commit
trigger applies unchanged. Refusals carry their own SQLSTATEs: TN011 no such hold, TN012 the
hold is not active, TN013 an amount outside 1..remaining, TN015 paying a hold into its own
held account (``app.ledger.service`` maps them to domain errors). New accounts get a random
UUID (``gen_random_uuid``; PostgreSQL 15 has no ``uuidv7``), not the application's UUIDv7.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 21:40:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UP = [
    # An account's id, created on first use like ``app.ledger.service.account_id`` (participant
    # accounts are non-negative). ON CONFLICT waits for a concurrent creator; the SELECT after
    # it runs on a new snapshot (READ COMMITTED) and so sees that creator's row.
    """
    CREATE FUNCTION ledger_account_of(p_org uuid, p_asset text, p_kind text) RETURNS uuid
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_id uuid;
    BEGIN
        SELECT id INTO v_id FROM ledger_accounts
         WHERE organization_id = p_org AND asset = p_asset AND kind = p_kind;
        IF FOUND THEN
            RETURN v_id;
        END IF;
        INSERT INTO ledger_accounts (id, organization_id, asset, kind, is_non_negative, created_at)
        VALUES (gen_random_uuid(), p_org, p_asset, p_kind, p_kind <> 'external', now())
        ON CONFLICT (organization_id, asset, kind) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            SELECT id INTO STRICT v_id FROM ledger_accounts
             WHERE organization_id = p_org AND asset = p_asset AND kind = p_kind;
        END IF;
        RETURN v_id;
    END
    $$
    """,
    # Hold p_amount: one 'hold' entry from the owner's available to its held account, then
    # the hold row (active, remaining = amount).
    """
    CREATE FUNCTION ledger_hold_reserve(
        p_hold_id uuid, p_entry_id uuid, p_org uuid, p_asset text, p_amount bigint,
        p_reference text
    ) RETURNS void
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    BEGIN
        PERFORM ledger_post_entries(
            ARRAY[p_entry_id], ARRAY['hold'], ARRAY[p_reference], ARRAY[NULL::text],
            ARRAY[jsonb_build_object('hold_id', p_hold_id::text)],
            ARRAY[p_entry_id, p_entry_id],
            ARRAY[ledger_account_of(p_org, p_asset, 'available'),
                  ledger_account_of(p_org, p_asset, 'held')],
            ARRAY[p_asset, p_asset], ARRAY[-p_amount, p_amount]);
        INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,
                                  reference, created_at, updated_at)
        VALUES (p_hold_id, p_org, p_asset, p_amount, p_amount, 'active', p_reference,
                clock_timestamp(), clock_timestamp());
    END
    $$
    """,
    # Take p_amount (NULL: all that remains) out of a hold, under its row lock, and post it
    # from the owner's held account to p_destination (NULL: the owner's available account, a
    # release) as one p_kind entry. Returns the amount taken. With p_rest_only (and no
    # p_amount), a hold with nothing left is no error: nothing is written and 0 returned.
    """
    CREATE FUNCTION ledger_hold_take(
        p_hold_id uuid, p_amount bigint, p_destination uuid, p_entry_id uuid, p_kind text,
        p_reference text, p_rest_only boolean
    ) RETURNS bigint
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_hold ledger_holds%ROWTYPE;
        v_take bigint;
        v_held uuid;
    BEGIN
        SELECT * INTO v_hold FROM ledger_holds WHERE id = p_hold_id FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no hold %', p_hold_id USING ERRCODE = 'TN011';
        END IF;
        IF p_rest_only AND p_amount IS NULL AND v_hold.remaining = 0 THEN
            RETURN 0;
        END IF;
        IF v_hold.status <> 'active' THEN
            RAISE EXCEPTION 'hold % is not active', p_hold_id USING ERRCODE = 'TN012';
        END IF;
        v_take := coalesce(p_amount, v_hold.remaining);
        IF v_take <= 0 OR v_take > v_hold.remaining THEN
            RAISE EXCEPTION '%', v_hold.remaining USING ERRCODE = 'TN013';
        END IF;
        v_held := ledger_account_of(v_hold.organization_id, v_hold.asset, 'held');
        IF p_destination = v_held THEN
            RAISE EXCEPTION 'a hold cannot pay into its own held account' USING ERRCODE = 'TN015';
        END IF;
        UPDATE ledger_holds
           SET remaining = v_hold.remaining - v_take,
               status = CASE WHEN v_hold.remaining = v_take THEN 'closed' ELSE 'active' END,
               updated_at = clock_timestamp()
         WHERE id = p_hold_id;
        PERFORM ledger_post_entries(
            ARRAY[p_entry_id], ARRAY[p_kind], ARRAY[coalesce(p_reference, v_hold.reference)],
            ARRAY[NULL::text], ARRAY[jsonb_build_object('hold_id', p_hold_id::text)],
            ARRAY[p_entry_id, p_entry_id],
            ARRAY[v_held,
                  coalesce(p_destination,
                           ledger_account_of(v_hold.organization_id, v_hold.asset,
                                             'available'))],
            ARRAY[v_hold.asset, v_hold.asset], ARRAY[-v_take, v_take]);
        RETURN v_take;
    END
    $$
    """,
    # Persist one serial-block change (``app.offsets.repository.apply_change``: close the old
    # blocks, insert the new ones) in one call; the two statements run in that order, so the
    # live-serials exclusion constraint sees the old blocks closed. Each new block's parents
    # come as one comma-separated text (an array of arrays cannot be ragged). TN014: a block
    # to close was not live (changed under the batch lock: a bug, never input).
    """
    CREATE FUNCTION offset_apply_change(
        p_closed uuid[], p_now timestamptz, p_ids uuid[], p_batches uuid[], p_holders uuid[],
        p_starts bigint[], p_ends bigint[], p_states text[], p_holds uuid[],
        p_retirements uuid[], p_parents text[]
    ) RETURNS void
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_closed bigint;
    BEGIN
        IF cardinality(p_closed) > 0 THEN
            UPDATE offset_blocks SET closed_at = p_now
             WHERE id = ANY (p_closed) AND closed_at IS NULL;
            GET DIAGNOSTICS v_closed = ROW_COUNT;
            IF v_closed <> cardinality(p_closed) THEN
                RAISE EXCEPTION 'serial blocks changed under a batch lock' USING ERRCODE = 'TN014';
            END IF;
        END IF;
        INSERT INTO offset_blocks (id, batch_id, holder_organization_id, serial_start,
                                   serial_end, state, hold_id, retirement_id, parent_ids,
                                   created_at)
        SELECT b.id, b.batch_id, b.holder, b.serial_start, b.serial_end, b.state, b.hold_id,
               b.retirement_id,
               coalesce(string_to_array(nullif(b.parents, ''), ',')::uuid[], '{}'), p_now
          FROM unnest(p_ids, p_batches, p_holders, p_starts, p_ends, p_states, p_holds,
                      p_retirements, p_parents)
               AS b (id, batch_id, holder, serial_start, serial_end, state, hold_id,
                     retirement_id, parents);
    END
    $$
    """,
    # Take a product's advisory lock (the key of ``ProductRepository.lock``) and return its
    # row: the query runs after the lock, on its own snapshot, so it sees what the previous
    # holder of the lock committed (one round trip for the lock and the reload).
    """
    CREATE FUNCTION market_lock_product(p_id uuid) RETURNS SETOF market_products
    LANGUAGE plpgsql
    AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended('market:' || p_id::text, 0));
        RETURN QUERY SELECT * FROM market_products WHERE id = p_id;
    END
    $$
    """,
]

DOWN = [
    "DROP FUNCTION offset_apply_change(uuid[], timestamptz, uuid[], uuid[], uuid[], bigint[],"
    " bigint[], text[], uuid[], uuid[], text[])",
    "DROP FUNCTION market_lock_product(uuid)",
    "DROP FUNCTION ledger_hold_take(uuid, bigint, uuid, uuid, text, text, boolean)",
    "DROP FUNCTION ledger_hold_reserve(uuid, uuid, uuid, text, bigint, text)",
    "DROP FUNCTION ledger_account_of(uuid, text, text)",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
