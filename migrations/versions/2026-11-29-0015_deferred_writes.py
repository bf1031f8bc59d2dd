"""``tanso_apply_deferred``: a group of orders' ledger and serial-block writes in one call.

A group of orders placed under one product lock (``app.market.group``) made one round trip
per hold, per payment out of a hold, per fee and per serial-block change, and every ledger
operation was its own ``ledger_post_entries`` call (about 0.6 ms of database time each, most
of it fixed: the statement-level posting triggers, the account locks). ``app.db.deferred`` now
records those writes while the group is placed and sends them here in one call:

- The ledger operations, as parallel arrays (one element each, ``p_kinds`` naming it):
  ``reserve`` (a new hold), ``take`` (pay out of or release a hold; ``rest_only``: whatever
  is left, nothing if nothing is), ``transfer`` (a plain two-leg entry). Their hold rows are
  written in order by ``ledger_hold_reserve_row`` and ``ledger_hold_take_row`` (the same
  checks and SQLSTATEs as before: TN011–TN013, TN015), and all their entries are then posted
  by one ``ledger_post_entries`` call. That function checks every non-negative account's
  balance after each leg, in leg order, so a shortfall anywhere in the sequence is refused
  (TN001) exactly as one call per operation would have refused it.
- The serial-block changes, as their net effect: the blocks live before that the group
  closed (TN014 if one was not live), and every block it made, inserted already closed if a
  later change of the group closed it again (so the lineage is whole and the live-serials
  exclusion constraint sees only what is live at the end).

``ledger_hold_reserve`` and ``ledger_hold_take`` are redefined on the two row functions (the
same results; the reserve now writes its hold row before its entry), so each hold rule is
written once. Written by hand (no table or column changes: ``alembic check`` is unaffected);
the downgrade restores 0013's two functions as they were.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 01:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The hold-row halves of ``ledger_hold_reserve`` and ``ledger_hold_take`` (0013): the same
# checks and row changes, returning what the entry must post instead of posting it. The two
# functions are redefined on them, so each rule is written once.
HOLD_ROWS = [
    """
    CREATE FUNCTION ledger_hold_reserve_row(
        p_hold_id uuid, p_org uuid, p_asset text, p_amount bigint, p_reference text,
        OUT o_available uuid, OUT o_held uuid
    )
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    BEGIN
        o_available := ledger_account_of(p_org, p_asset, 'available');
        o_held := ledger_account_of(p_org, p_asset, 'held');
        INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,
                                  reference, created_at, updated_at)
        VALUES (p_hold_id, p_org, p_asset, p_amount, p_amount, 'active', p_reference,
                clock_timestamp(), clock_timestamp());
    END
    $$
    """,
    """
    CREATE FUNCTION ledger_hold_take_row(
        p_hold_id uuid, p_amount bigint, p_destination uuid, p_rest_only boolean,
        OUT o_held uuid, OUT o_destination uuid, OUT o_asset text, OUT o_taken bigint,
        OUT o_reference text
    )
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
        o_asset := v_hold.asset;
        o_reference := v_hold.reference;
        IF p_rest_only AND p_amount IS NULL AND v_hold.remaining = 0 THEN
            o_taken := 0;
            RETURN;
        END IF;
        IF v_hold.status <> 'active' THEN
            RAISE EXCEPTION 'hold % is not active', p_hold_id USING ERRCODE = 'TN012';
        END IF;
        o_taken := coalesce(p_amount, v_hold.remaining);
        IF o_taken <= 0 OR o_taken > v_hold.remaining THEN
            RAISE EXCEPTION '%', v_hold.remaining USING ERRCODE = 'TN013';
        END IF;
        o_held := ledger_account_of(v_hold.organization_id, v_hold.asset, 'held');
        IF p_destination = o_held THEN
            RAISE EXCEPTION 'a hold cannot pay into its own held account' USING ERRCODE = 'TN015';
        END IF;
        o_destination := coalesce(
            p_destination, ledger_account_of(v_hold.organization_id, v_hold.asset, 'available'));
        UPDATE ledger_holds
           SET remaining = v_hold.remaining - o_taken,
               status = CASE WHEN v_hold.remaining = o_taken THEN 'closed' ELSE 'active' END,
               updated_at = clock_timestamp()
         WHERE id = p_hold_id;
    END
    $$
    """,
]

RESERVE_ON_ROWS = """
    CREATE OR REPLACE FUNCTION ledger_hold_reserve(
        p_hold_id uuid, p_entry_id uuid, p_org uuid, p_asset text, p_amount bigint,
        p_reference text
    ) RETURNS void
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        r record;
    BEGIN
        r := ledger_hold_reserve_row(p_hold_id, p_org, p_asset, p_amount, p_reference);
        PERFORM ledger_post_entries(
            ARRAY[p_entry_id], ARRAY['hold'], ARRAY[p_reference], ARRAY[NULL::text],
            ARRAY[jsonb_build_object('hold_id', p_hold_id::text)],
            ARRAY[p_entry_id, p_entry_id], ARRAY[r.o_available, r.o_held],
            ARRAY[p_asset, p_asset], ARRAY[-p_amount, p_amount]);
    END
    $$
"""

TAKE_ON_ROWS = """
    CREATE OR REPLACE FUNCTION ledger_hold_take(
        p_hold_id uuid, p_amount bigint, p_destination uuid, p_entry_id uuid, p_kind text,
        p_reference text, p_rest_only boolean
    ) RETURNS bigint
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        r record;
    BEGIN
        r := ledger_hold_take_row(p_hold_id, p_amount, p_destination, p_rest_only);
        IF r.o_taken = 0 THEN
            RETURN 0;
        END IF;
        PERFORM ledger_post_entries(
            ARRAY[p_entry_id], ARRAY[p_kind], ARRAY[coalesce(p_reference, r.o_reference)],
            ARRAY[NULL::text], ARRAY[jsonb_build_object('hold_id', p_hold_id::text)],
            ARRAY[p_entry_id, p_entry_id], ARRAY[r.o_held, r.o_destination],
            ARRAY[r.o_asset, r.o_asset], ARRAY[-r.o_taken, r.o_taken]);
        RETURN r.o_taken;
    END
    $$
"""

# The ledger operations' hold rows in order, then all their entries in one
# ``ledger_post_entries`` call (which checks every non-negative account's balance after each
# leg, in leg order: the same refusals as one call per operation), then the block changes.
APPLY = """
    CREATE FUNCTION tanso_apply_deferred(
        p_kinds text[], p_holds uuid[], p_entries uuid[], p_orgs uuid[], p_assets text[],
        p_amounts bigint[], p_sources uuid[], p_destinations uuid[], p_entry_kinds text[],
        p_references text[], p_rest_only boolean[],
        p_now timestamptz, p_closed uuid[], p_ids uuid[], p_batches uuid[], p_holders uuid[],
        p_starts bigint[], p_ends bigint[], p_states text[], p_block_holds uuid[],
        p_retirements uuid[], p_parents text[], p_gone boolean[]
    ) RETURNS void
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        i integer;
        r record;
        v_closed bigint;
        e_ids uuid[] := '{}';
        e_kinds text[] := '{}';
        e_refs text[] := '{}';
        e_meta jsonb[] := '{}';
        l_entries uuid[] := '{}';
        l_accounts uuid[] := '{}';
        l_assets text[] := '{}';
        l_amounts bigint[] := '{}';
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(p_kinds), 0) LOOP
            CASE p_kinds[i]
            WHEN 'reserve' THEN
                r := ledger_hold_reserve_row(p_holds[i], p_orgs[i], p_assets[i], p_amounts[i],
                                             p_references[i]);
                e_ids := e_ids || p_entries[i];
                e_kinds := e_kinds || 'hold'::text;
                e_refs := e_refs || p_references[i];
                e_meta := e_meta || jsonb_build_object('hold_id', p_holds[i]::text);
                l_accounts := l_accounts || ARRAY[r.o_available, r.o_held];
                l_assets := l_assets || ARRAY[p_assets[i], p_assets[i]];
                l_amounts := l_amounts || ARRAY[-p_amounts[i], p_amounts[i]];
            WHEN 'take' THEN
                r := ledger_hold_take_row(p_holds[i], p_amounts[i], p_destinations[i],
                                          p_rest_only[i]);
                CONTINUE WHEN r.o_taken = 0;
                e_ids := e_ids || p_entries[i];
                e_kinds := e_kinds || p_entry_kinds[i];
                e_refs := e_refs || coalesce(p_references[i], r.o_reference);
                e_meta := e_meta || jsonb_build_object('hold_id', p_holds[i]::text);
                l_accounts := l_accounts || ARRAY[r.o_held, r.o_destination];
                l_assets := l_assets || ARRAY[r.o_asset, r.o_asset];
                l_amounts := l_amounts || ARRAY[-r.o_taken, r.o_taken];
            WHEN 'transfer' THEN
                e_ids := e_ids || p_entries[i];
                e_kinds := e_kinds || p_entry_kinds[i];
                e_refs := e_refs || p_references[i];
                e_meta := e_meta || NULL::jsonb;
                l_accounts := l_accounts || ARRAY[p_sources[i], p_destinations[i]];
                l_assets := l_assets || ARRAY[p_assets[i], p_assets[i]];
                l_amounts := l_amounts || ARRAY[-p_amounts[i], p_amounts[i]];
            ELSE
                RAISE EXCEPTION 'unknown deferred operation %', p_kinds[i];
            END CASE;
            l_entries := l_entries || ARRAY[p_entries[i], p_entries[i]];
        END LOOP;
        IF cardinality(e_ids) > 0 THEN
            PERFORM ledger_post_entries(
                e_ids, e_kinds, e_refs, array_fill(NULL::text, ARRAY[cardinality(e_ids)]),
                e_meta, l_entries, l_accounts, l_assets, l_amounts);
        END IF;
        -- The blocks: those that were live before, closed; every block made, inserted, the
        -- ones a later change of the group closed again already closed (``p_gone``), so the
        -- live-serials exclusion constraint sees only what is live at the end. TN014: a
        -- block to close was not live (changed under the batch lock: a bug, never input).
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
                                   created_at, closed_at)
        SELECT b.id, b.batch_id, b.holder, b.serial_start, b.serial_end, b.state, b.hold_id,
               b.retirement_id,
               coalesce(string_to_array(nullif(b.parents, ''), ',')::uuid[], '{}'), p_now,
               CASE WHEN b.gone THEN p_now END
          FROM unnest(p_ids, p_batches, p_holders, p_starts, p_ends, p_states, p_block_holds,
                      p_retirements, p_parents, p_gone)
               AS b (id, batch_id, holder, serial_start, serial_end, state, hold_id,
                     retirement_id, parents, gone);
    END
    $$
"""

# 0013's definitions, for the downgrade.
RESERVE_0013 = """
    CREATE OR REPLACE FUNCTION ledger_hold_reserve(
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
"""

TAKE_0013 = """
    CREATE OR REPLACE FUNCTION ledger_hold_take(
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
"""

UP = [*HOLD_ROWS, RESERVE_ON_ROWS, TAKE_ON_ROWS, APPLY]

DOWN = [
    "DROP FUNCTION tanso_apply_deferred(text[], uuid[], uuid[], uuid[], text[], bigint[],"
    " uuid[], uuid[], text[], text[], boolean[], timestamptz, uuid[], uuid[], uuid[], uuid[],"
    " bigint[], bigint[], text[], uuid[], uuid[], text[], boolean[])",
    RESERVE_0013,
    TAKE_0013,
    "DROP FUNCTION ledger_hold_take_row(uuid, bigint, uuid, boolean)",
    "DROP FUNCTION ledger_hold_reserve_row(uuid, uuid, text, bigint, text)",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
