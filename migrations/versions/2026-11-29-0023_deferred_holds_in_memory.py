"""``tanso_apply_deferred`` runs the group's hold operations in memory, with one read of the
holds and one of the accounts, and writes the holds' end state.

0015's function ran each recorded hold operation through ``ledger_hold_reserve_row`` or
``ledger_hold_take_row``: a function call, one or two ``ledger_account_of`` look-ups and an
INSERT, or a locking SELECT and an UPDATE of ``ledger_holds``, per operation. In
``bench/orders`` that loop was about 1.9 ms of the 4.6 ms a group spent in this function (16
orders: 32 hold operations), most of it statement overhead.

The new body keeps the same arguments, the same order of checks and the same refusals, each at
the operation where the one-by-one path raises it:

1. The holds the operations name that exist already are read and locked (``FOR UPDATE``, in
   id order; every writer of a market order's holds holds the product lock, so the order of
   these row locks cannot deadlock), and the accounts of their organisations and of the
   reserving organisations are read: one statement each, looking each key up through its
   index (a lateral look-up per key).
2. The operations then run in order on those copies: a reserve adds a hold (with the INSERT's
   refusals, in its order: 22001, 23502, 23514 for an amount not positive, 23505), a take
   checks and lowers its hold's remaining amount (TN011 no such hold, TN012 not active, TN013
   more than remains, TN015 into its own held account; ``rest_only`` with nothing left takes
   nothing), with the entries collected as before. An account not read in step 1 is found or
   made by ``ledger_account_of`` at that operation, as before.
3. The new holds are inserted in one statement, with the state the sequence left them in (the
   hold constraints see the same final rows), and the changed ones are updated by primary key;
   then the entries are posted by one ``ledger_post_entries`` call and the blocks written, as
   in 0015.

Every statement on ``ledger_holds`` goes by key. A PL/pgSQL plan is made once per connection:
one made while the table was small and that scans it (a join with the changes) scans it whole
on every later call. A first version of this body did, and cost 7.2 ms a call instead of 2.2
once the table held 30,000 rows (0018 and 0019 fixed the same trap elsewhere).

``ledger_hold_reserve_row`` and ``ledger_hold_take_row`` stay: the one-by-one path
(``ledger_hold_reserve``, ``ledger_hold_take``) runs on them. ``tests/ledger/
test_apply_deferred.py`` checks the new body against 0015's on random operation sequences
(the same refusal, or the same holds, entries, postings and balances) and that it does not
scan ``ledger_holds`` after the table grew. Written by hand (no table or column changes:
``alembic check`` is unaffected); the downgrade restores 0015's body.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-29 08:00:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def load_0015() -> ModuleType:
    """0015's module: its body of ``tanso_apply_deferred`` (the downgrade's, and the reference
    the tests compare this one with)."""
    path = Path(__file__).with_name("2026-11-29-0015_deferred_writes.py")
    spec = importlib.util.spec_from_file_location("tanso_migration_0015", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0015 = load_0015()
# 0015's signature (the same arguments) and its block writes (unchanged), around the new
# DECLARE ... the entries' posting.
_SIGNATURE = _0015.APPLY[: _0015.APPLY.index("    DECLARE\n")].replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
)
_BLOCK_WRITES = _0015.APPLY[_0015.APPLY.index("        -- The blocks: ") :]

APPLY = (
    _SIGNATURE
    + """    DECLARE
        i integer;
        k integer;
        v_closed bigint;
        v_taken bigint;
        v_available uuid;
        v_held uuid;
        v_destination uuid;
        v_key text;
        -- The holds the operations name, as the sequence leaves them so far: those read in
        -- (``h_new`` false) and those reserved here (true).
        h_ids uuid[];
        h_orgs uuid[];
        h_assets text[];
        h_amounts bigint[];
        h_remaining bigint[];
        h_refs text[];
        h_new boolean[];
        h_start bigint[];
        -- The accounts known: 'organisation/asset/kind' -> id.
        a_keys text[];
        a_ids uuid[];
        e_ids uuid[] := '{}';
        e_kinds text[] := '{}';
        e_refs text[] := '{}';
        e_meta jsonb[] := '{}';
        l_entries uuid[] := '{}';
        l_accounts uuid[] := '{}';
        l_assets text[] := '{}';
        l_amounts bigint[] := '{}';
    BEGIN
        IF coalesce(cardinality(p_kinds), 0) > 0 THEN
            -- Each hold by its primary key (a lateral look-up per id: the plan, made once
            -- per connection, cannot become a scan of the whole table as it grows).
            SELECT coalesce(array_agg(h.id ORDER BY h.id), '{}'),
                   array_agg(h.organization_id ORDER BY h.id),
                   array_agg(h.asset ORDER BY h.id), array_agg(h.amount ORDER BY h.id),
                   array_agg(h.remaining ORDER BY h.id), array_agg(h.reference ORDER BY h.id)
              INTO h_ids, h_orgs, h_assets, h_amounts, h_remaining, h_refs
              FROM (SELECT DISTINCT u.hold_id FROM unnest(p_holds) AS u (hold_id)
                     WHERE u.hold_id IS NOT NULL ORDER BY u.hold_id) AS named,
                   LATERAL (SELECT l.id, l.organization_id, l.asset, l.amount, l.remaining,
                                   l.reference
                              FROM ledger_holds l WHERE l.id = named.hold_id FOR UPDATE) AS h;
            h_new := array_fill(false, ARRAY[cardinality(h_ids)]);
            h_start := h_remaining;
            -- The accounts of each organisation and asset named, by their unique key (a
            -- lateral look-up per pair, like the holds).
            SELECT coalesce(array_agg(a.organization_id || '/' || a.asset || '/' || a.kind),
                            '{}'),
                   coalesce(array_agg(a.id), '{}')
              INTO a_keys, a_ids
              FROM (SELECT DISTINCT u.org, u.asset
                      FROM unnest(p_orgs || h_orgs, p_assets || h_assets) AS u (org, asset)
                     WHERE u.org IS NOT NULL AND u.asset IS NOT NULL) AS named,
                   LATERAL (SELECT l.id, l.organization_id, l.asset, l.kind
                              FROM ledger_accounts l
                             WHERE l.organization_id = named.org AND l.asset = named.asset
                               AND l.kind IN ('available', 'held')) AS a;
        END IF;
        FOR i IN 1 .. coalesce(cardinality(p_kinds), 0) LOOP
            CASE p_kinds[i]
            WHEN 'reserve' THEN
                -- As ledger_hold_reserve_row: the two accounts, then the row's checks.
                v_key := p_orgs[i] || '/' || p_assets[i] || '/';
                k := array_position(a_keys, v_key || 'available');
                IF k IS NULL THEN
                    v_available := ledger_account_of(p_orgs[i], p_assets[i], 'available');
                    a_keys := a_keys || (v_key || 'available');
                    a_ids := a_ids || v_available;
                ELSE
                    v_available := a_ids[k];
                END IF;
                k := array_position(a_keys, v_key || 'held');
                IF k IS NULL THEN
                    v_held := ledger_account_of(p_orgs[i], p_assets[i], 'held');
                    a_keys := a_keys || (v_key || 'held');
                    a_ids := a_ids || v_held;
                ELSE
                    v_held := a_ids[k];
                END IF;
                -- The INSERT's checks, in the order it makes them: the reference's length,
                -- NOT NULL, the check constraints, the primary key.
                IF length(p_references[i]) > 200 THEN
                    RAISE EXCEPTION 'value too long for type character varying(200)'
                        USING ERRCODE = 'string_data_right_truncation';
                END IF;
                IF p_holds[i] IS NULL OR p_amounts[i] IS NULL THEN
                    RAISE EXCEPTION 'a hold needs an id and an amount'
                        USING ERRCODE = 'not_null_violation', TABLE = 'ledger_holds';
                END IF;
                IF p_amounts[i] <= 0 THEN
                    RAISE EXCEPTION
                        'new row for relation "ledger_holds" violates check constraint "%"',
                        'ledger_holds_amount_positive_check'
                        USING ERRCODE = 'check_violation',
                              CONSTRAINT = 'ledger_holds_amount_positive_check',
                              TABLE = 'ledger_holds';
                END IF;
                IF p_holds[i] = ANY (h_ids) THEN
                    RAISE EXCEPTION 'duplicate key value violates unique constraint "%"',
                        'ledger_holds_pkey'
                        USING ERRCODE = 'unique_violation', CONSTRAINT = 'ledger_holds_pkey',
                              TABLE = 'ledger_holds';
                END IF;
                h_ids := h_ids || p_holds[i];
                h_orgs := h_orgs || p_orgs[i];
                h_assets := h_assets || p_assets[i];
                h_amounts := h_amounts || p_amounts[i];
                h_remaining := h_remaining || p_amounts[i];
                h_refs := h_refs || p_references[i];
                h_new := h_new || true;
                h_start := h_start || p_amounts[i];
                e_ids := e_ids || p_entries[i];
                e_kinds := e_kinds || 'hold'::text;
                e_refs := e_refs || p_references[i];
                e_meta := e_meta || jsonb_build_object('hold_id', p_holds[i]::text);
                l_accounts := l_accounts || ARRAY[v_available, v_held];
                l_assets := l_assets || ARRAY[p_assets[i], p_assets[i]];
                l_amounts := l_amounts || ARRAY[-p_amounts[i], p_amounts[i]];
            WHEN 'take' THEN
                -- As ledger_hold_take_row, on the hold as the sequence left it.
                k := array_position(h_ids, p_holds[i]);
                IF k IS NULL THEN
                    RAISE EXCEPTION 'no hold %', p_holds[i] USING ERRCODE = 'TN011';
                END IF;
                CONTINUE WHEN p_rest_only[i] AND p_amounts[i] IS NULL AND h_remaining[k] = 0;
                IF h_remaining[k] = 0 THEN  -- closed: remaining 0 (ledger_holds' check)
                    RAISE EXCEPTION 'hold % is not active', p_holds[i] USING ERRCODE = 'TN012';
                END IF;
                v_taken := coalesce(p_amounts[i], h_remaining[k]);
                IF v_taken <= 0 OR v_taken > h_remaining[k] THEN
                    RAISE EXCEPTION '%', h_remaining[k] USING ERRCODE = 'TN013';
                END IF;
                v_key := h_orgs[k] || '/' || h_assets[k] || '/';
                v_held := a_ids[array_position(a_keys, v_key || 'held')];
                IF v_held IS NULL THEN
                    v_held := ledger_account_of(h_orgs[k], h_assets[k], 'held');
                    a_keys := a_keys || (v_key || 'held');
                    a_ids := a_ids || v_held;
                END IF;
                IF p_destinations[i] = v_held THEN
                    RAISE EXCEPTION 'a hold cannot pay into its own held account'
                        USING ERRCODE = 'TN015';
                END IF;
                v_destination := p_destinations[i];
                IF v_destination IS NULL THEN
                    v_destination := a_ids[array_position(a_keys, v_key || 'available')];
                    IF v_destination IS NULL THEN
                        v_destination := ledger_account_of(h_orgs[k], h_assets[k], 'available');
                        a_keys := a_keys || (v_key || 'available');
                        a_ids := a_ids || v_destination;
                    END IF;
                END IF;
                h_remaining[k] := h_remaining[k] - v_taken;
                e_ids := e_ids || p_entries[i];
                e_kinds := e_kinds || p_entry_kinds[i];
                e_refs := e_refs || coalesce(p_references[i], h_refs[k]);
                e_meta := e_meta || jsonb_build_object('hold_id', p_holds[i]::text);
                l_accounts := l_accounts || ARRAY[v_held, v_destination];
                l_assets := l_assets || ARRAY[h_assets[k], h_assets[k]];
                l_amounts := l_amounts || ARRAY[-v_taken, v_taken];
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
        -- The holds as the sequence left them: the new ones inserted, the changed ones
        -- updated (closed when nothing remains).
        IF coalesce(cardinality(h_ids), 0) > 0 THEN
            INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,
                                      reference, created_at, updated_at)
            SELECT h.id, h.org, h.asset, h.amount, h.remaining,
                   CASE WHEN h.remaining > 0 THEN 'active' ELSE 'closed' END, h.reference,
                   clock_timestamp(), clock_timestamp()
              FROM unnest(h_ids, h_orgs, h_assets, h_amounts, h_remaining, h_refs, h_new)
                   AS h (id, org, asset, amount, remaining, reference, new)
             WHERE h.new;
            -- One by one, by primary key: a join with the changes, planned while the table
            -- was small, would scan it whole.
            FOR k IN 1 .. cardinality(h_ids) LOOP
                CONTINUE WHEN h_new[k] OR h_remaining[k] = h_start[k];
                UPDATE ledger_holds
                   SET remaining = h_remaining[k],
                       status = CASE WHEN h_remaining[k] > 0 THEN 'active' ELSE 'closed' END,
                       updated_at = clock_timestamp()
                 WHERE id = h_ids[k];
            END LOOP;
        END IF;
        IF cardinality(e_ids) > 0 THEN
            PERFORM ledger_post_entries(
                e_ids, e_kinds, e_refs, array_fill(NULL::text, ARRAY[cardinality(e_ids)]),
                e_meta, l_entries, l_accounts, l_assets, l_amounts);
        END IF;
"""
    + _BLOCK_WRITES
)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(APPLY)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(_0015.APPLY.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
