"""The registry: projects, batches, serial blocks, transfers, retirements, claims, pools, goals.

Hand-written besides the tables: btree_gist (for the exclusion constraints), a batch's serial
range unique across the registry, live blocks of a batch never overlapping, retired blocks
frozen, and the serial counter's single row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 17:50:12.252877+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REGISTRY_SQL = [
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    "INSERT INTO offset_serial_counter (id, next_serial) VALUES (1, 1)",
    """
    ALTER TABLE offset_batches ADD CONSTRAINT offset_batches_serials_excl
        EXCLUDE USING gist (int8range(serial_start, serial_end, '[]') WITH &&)
    """,
    """
    ALTER TABLE offset_blocks ADD CONSTRAINT offset_blocks_live_serials_excl
        EXCLUDE USING gist (batch_id WITH =, int8range(serial_start, serial_end, '[]') WITH &&)
        WHERE (closed_at IS NULL)
    """,
    # A retired block is frozen forever: no update, no delete.
    """
    CREATE FUNCTION offset_blocks_retired_frozen() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'serial block % is retired and cannot change', OLD.id
            USING ERRCODE = 'TN005';
    END
    $$
    """,
    """
    CREATE TRIGGER offset_blocks_retired_frozen BEFORE UPDATE OR DELETE ON offset_blocks
        FOR EACH ROW WHEN (OLD.state = 'retired')
        EXECUTE FUNCTION offset_blocks_retired_frozen()
    """,
    # A closed block stays closed (blocks are closed once and never reopened or edited).
    """
    CREATE FUNCTION offset_blocks_closed_once() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.closed_at IS NOT NULL OR NEW.closed_at IS NULL
           OR (NEW.batch_id, NEW.holder_organization_id, NEW.serial_start, NEW.serial_end,
               NEW.state, NEW.hold_id, NEW.retirement_id)
              IS DISTINCT FROM
              (OLD.batch_id, OLD.holder_organization_id, OLD.serial_start, OLD.serial_end,
               OLD.state, OLD.hold_id, OLD.retirement_id) THEN
            RAISE EXCEPTION 'serial block % can only be closed, once', OLD.id
                USING ERRCODE = 'TN006';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER offset_blocks_closed_once BEFORE UPDATE ON offset_blocks
        FOR EACH ROW WHEN (OLD.state <> 'retired')
        EXECUTE FUNCTION offset_blocks_closed_once()
    """,
    # Draw grams from an offset pool (see app/offsets/models.py, OffsetPoolShard). Returns
    # the pool's remaining grams after the draw, or NULL (nothing taken) if it has too few.
    """
    CREATE FUNCTION offset_pool_take(p_pool uuid, p_grams bigint) RETURNS bigint
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_shard smallint;
        v_total bigint;
        v_need bigint;
        r record;
    BEGIN
        -- Common case: a random shard with enough grams that nobody holds. SKIP LOCKED
        -- never waits, so checkouts never queue behind each other. Run as a subtransaction:
        -- if it takes nothing, rolling it back releases any row it locked on the way.
        BEGIN
            UPDATE offset_pool_shards SET remaining_g = remaining_g - p_grams
             WHERE pool_id = p_pool AND shard = (
                   SELECT shard FROM offset_pool_shards
                    WHERE pool_id = p_pool AND remaining_g >= p_grams
                    ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING shard INTO v_shard;
            IF v_shard IS NULL THEN
                RAISE EXCEPTION 'no free shard' USING ERRCODE = 'TN101';
            END IF;
        EXCEPTION WHEN SQLSTATE 'TN101' THEN
            v_shard := NULL;
        END;
        IF v_shard IS NULL THEN
            -- Every shard with enough is busy, or none has enough alone: take the whole
            -- pool (multi-shard writers queue on the advisory lock, so they cannot deadlock)
            -- and draw from the fullest shards.
            PERFORM pg_advisory_xact_lock(hashtextextended('offset_pool:' || p_pool, 0));
            SELECT sum(remaining_g) INTO v_total FROM (
                SELECT remaining_g FROM offset_pool_shards
                 WHERE pool_id = p_pool ORDER BY shard FOR UPDATE) s;
            IF coalesce(v_total, 0) < p_grams THEN
                RETURN NULL;
            END IF;
            v_need := p_grams;
            FOR r IN SELECT shard, remaining_g FROM offset_pool_shards
                      WHERE pool_id = p_pool AND remaining_g > 0
                      ORDER BY remaining_g DESC, shard LOOP
                UPDATE offset_pool_shards
                   SET remaining_g = remaining_g - least(r.remaining_g, v_need)
                 WHERE pool_id = p_pool AND shard = r.shard;
                v_need := v_need - least(r.remaining_g, v_need);
                EXIT WHEN v_need = 0;
            END LOOP;
        END IF;
        SELECT sum(remaining_g) INTO v_total FROM offset_pool_shards WHERE pool_id = p_pool;
        RETURN v_total;
    END
    $$
    """,
    # One checkout, one round trip: the unit claim and its draw from the pool. A duplicate
    # order reference fails on the unique constraint; a short pool raises TN102.
    """
    CREATE FUNCTION offset_pool_draw(
        p_pool uuid, p_grams bigint, p_id uuid, p_code text, p_org uuid, p_reference text,
        p_claim_type text, p_subject jsonb, p_document text, p_signature text, p_key_id text,
        p_created_at timestamptz
    ) RETURNS bigint
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_left bigint;
    BEGIN
        INSERT INTO offset_claims (id, code, organization_id, pool_id, reference, claim_type,
                                   subject, footprint_g, covered_g, status, document,
                                   signature, key_id, created_at)
        VALUES (p_id, p_code, p_org, p_pool, p_reference, p_claim_type, p_subject, p_grams,
                p_grams, 'active', p_document, p_signature, p_key_id, p_created_at);
        v_left := offset_pool_take(p_pool, p_grams);
        IF v_left IS NULL THEN
            RAISE EXCEPTION 'offset pool % has fewer than % g left', p_pool, p_grams
                USING ERRCODE = 'TN102';
        END IF;
        RETURN v_left;
    END
    $$
    """,
]

REGISTRY_SQL_DOWN = [
    "DROP FUNCTION offset_pool_draw(uuid, bigint, uuid, text, uuid, text, text, jsonb, text, text, text, timestamptz)",
    "DROP FUNCTION offset_pool_take(uuid, bigint)",
    "DROP TRIGGER offset_blocks_closed_once ON offset_blocks",
    "DROP FUNCTION offset_blocks_closed_once()",
    "DROP TRIGGER offset_blocks_retired_frozen ON offset_blocks",
    "DROP FUNCTION offset_blocks_retired_frozen()",
    "ALTER TABLE offset_blocks DROP CONSTRAINT offset_blocks_live_serials_excl",
    "ALTER TABLE offset_batches DROP CONSTRAINT offset_batches_serials_excl",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "offset_serial_counter",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("next_serial", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("offset_serial_counter_single_row_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_serial_counter_pkey")),
    )
    op.create_table(
        "offset_goals",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("fiscal_year", sa.Integer(), nullable=False),
        sa.Column("target_tonnes", sa.BigInteger(), nullable=False),
        sa.Column("local_share_target_pct", sa.SmallInteger(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "local_share_target_pct >= 0 AND local_share_target_pct <= 100",
            name=op.f("offset_goals_local_share_check"),
        ),
        sa.CheckConstraint("target_tonnes > 0", name=op.f("offset_goals_target_positive_check")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("offset_goals_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_goals_pkey")),
        sa.UniqueConstraint(
            "organization_id",
            "fiscal_year",
            name=op.f("offset_goals_organization_id_fiscal_year_key"),
        ),
    )
    op.create_table(
        "offset_pools",
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("claim_type", sa.String(length=20), nullable=False),
        sa.Column("subject", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("total_g", sa.BigInteger(), nullable=False),
        sa.Column("low_balance_g", sa.BigInteger(), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "claim_type IN ('product', 'service', 'event', 'organization', 'municipality')",
            name=op.f("offset_pools_claim_type_check"),
        ),
        sa.CheckConstraint(
            "low_balance_g IS NULL OR low_balance_g >= 0",
            name=op.f("offset_pools_low_balance_check"),
        ),
        sa.CheckConstraint("total_g >= 0", name=op.f("offset_pools_total_check")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("offset_pools_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_pools_pkey")),
        sa.UniqueConstraint("code", name=op.f("offset_pools_code_key")),
    )
    op.create_index(
        op.f("ix_offset_pools_organization_id"), "offset_pools", ["organization_id"], unique=False
    )
    op.create_table(
        "offset_pool_shards",
        sa.Column("pool_id", sa.UUID(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("remaining_g", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("remaining_g >= 0", name=op.f("offset_pool_shards_remaining_check")),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["offset_pools.id"],
            name=op.f("offset_pool_shards_pool_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("pool_id", "shard", name=op.f("offset_pool_shards_pkey")),
    )
    op.create_table(
        "offset_projects",
        sa.Column("number", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner_organization_id", sa.UUID(), nullable=False),
        sa.Column("methodology", sa.String(length=10), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("prefecture", sa.String(length=2), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "category IN ('energy_saving', 'renewable_power', 'renewable_heat', 'forest', 'industrial', 'agriculture', 'waste', 'other')",
            name=op.f("offset_projects_category_check"),
        ),
        sa.CheckConstraint(
            "methodology ~ '^(EN-S|EN-R|FO|AG|IP|WA)-[0-9]{3}$'",
            name=op.f("offset_projects_methodology_check"),
        ),
        sa.CheckConstraint(
            "prefecture ~ '^(0[1-9]|[1-3][0-9]|4[0-7])$'",
            name=op.f("offset_projects_prefecture_check"),
        ),
        sa.ForeignKeyConstraint(
            ["owner_organization_id"],
            ["organizations.id"],
            name=op.f("offset_projects_owner_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_projects_pkey")),
        sa.UniqueConstraint("number", name=op.f("offset_projects_number_key")),
    )
    op.create_index(
        op.f("ix_offset_projects_owner_organization_id"),
        "offset_projects",
        ["owner_organization_id"],
        unique=False,
    )
    op.create_table(
        "offset_batches",
        sa.Column("project_id", sa.UUID(), nullable=False),
        sa.Column("issued_to_organization_id", sa.UUID(), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("prefecture", sa.String(length=2), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("monitoring_period_start", sa.Date(), nullable=False),
        sa.Column("monitoring_period_end", sa.Date(), nullable=False),
        sa.Column("vintage", sa.SmallInteger(), nullable=False),
        sa.Column("labels", postgresql.ARRAY(sa.String(length=40)), nullable=False),
        sa.Column("serial_start", sa.BigInteger(), nullable=False),
        sa.Column("serial_end", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(length=64), nullable=False),
        sa.Column("issued_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "category IN ('energy_saving', 'renewable_power', 'renewable_heat', 'forest', 'industrial', 'agriculture', 'waste', 'other')",
            name=op.f("offset_batches_category_check"),
        ),
        sa.CheckConstraint(
            "monitoring_period_end >= monitoring_period_start",
            name=op.f("offset_batches_period_check"),
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("offset_batches_quantity_positive_check")),
        sa.CheckConstraint(
            "serial_end - serial_start + 1 = quantity",
            name=op.f("offset_batches_serial_quantity_check"),
        ),
        sa.CheckConstraint(
            "serial_start >= 1 AND serial_end >= serial_start",
            name=op.f("offset_batches_serial_range_check"),
        ),
        sa.ForeignKeyConstraint(
            ["issued_to_organization_id"],
            ["organizations.id"],
            name=op.f("offset_batches_issued_to_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["offset_projects.id"],
            name=op.f("offset_batches_project_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_batches_pkey")),
        sa.UniqueConstraint("asset", name=op.f("offset_batches_asset_key")),
    )
    op.create_index(
        op.f("ix_offset_batches_project_id"), "offset_batches", ["project_id"], unique=False
    )
    op.create_table(
        "offset_claims",
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("pool_id", sa.UUID(), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("claim_type", sa.String(length=20), nullable=False),
        sa.Column("subject", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("footprint_g", sa.BigInteger(), nullable=False),
        sa.Column("covered_g", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("period_end", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("revoked_reason", sa.String(length=500), nullable=True),
        sa.Column("revoked_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=100), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "(status = 'revoked') = (revoked_at IS NOT NULL)",
            name=op.f("offset_claims_revoked_check"),
        ),
        sa.CheckConstraint(
            "claim_type IN ('product', 'service', 'event', 'organization', 'municipality')",
            name=op.f("offset_claims_claim_type_check"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'revoked')", name=op.f("offset_claims_status_check")
        ),
        sa.CheckConstraint(
            "covered_g >= 0 AND covered_g <= footprint_g", name=op.f("offset_claims_covered_check")
        ),
        sa.CheckConstraint("footprint_g > 0", name=op.f("offset_claims_footprint_positive_check")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("offset_claims_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["offset_pools.id"],
            name=op.f("offset_claims_pool_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_claims_pkey")),
        sa.UniqueConstraint("code", name=op.f("offset_claims_code_key")),
        sa.UniqueConstraint(
            "pool_id", "reference", name=op.f("offset_claims_pool_id_reference_key")
        ),
    )
    op.create_index(
        op.f("ix_offset_claims_organization_id"), "offset_claims", ["organization_id"], unique=False
    )
    op.create_index(op.f("ix_offset_claims_pool_id"), "offset_claims", ["pool_id"], unique=False)
    op.create_table(
        "offset_retirements",
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("purpose_detail", sa.String(length=500), nullable=True),
        sa.Column("beneficiary_name", sa.String(length=200), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("serial_ranges", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("claimed_g", sa.BigInteger(), nullable=False),
        sa.Column("retired_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "purpose IN ('offset', 'law_reporting', 're100', 'sbt', 'other')",
            name=op.f("offset_retirements_purpose_check"),
        ),
        sa.CheckConstraint(
            "claimed_g >= 0 AND claimed_g <= quantity * 1000000",
            name=op.f("offset_retirements_claimed_check"),
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("offset_retirements_quantity_positive_check")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["offset_batches.id"],
            name=op.f("offset_retirements_batch_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("offset_retirements_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_retirements_pkey")),
        sa.UniqueConstraint("code", name=op.f("offset_retirements_code_key")),
    )
    op.create_index(
        op.f("ix_offset_retirements_batch_id"), "offset_retirements", ["batch_id"], unique=False
    )
    op.create_index(
        op.f("ix_offset_retirements_organization_id"),
        "offset_retirements",
        ["organization_id"],
        unique=False,
    )
    op.create_index(
        "ix_offset_retirements_public",
        "offset_retirements",
        ["retired_at"],
        unique=False,
        postgresql_where="is_public",
    )
    op.create_table(
        "offset_transfers",
        sa.Column("batch_id", sa.UUID(), nullable=False),
        sa.Column("from_organization_id", sa.UUID(), nullable=False),
        sa.Column("to_organization_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("serial_ranges", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("offset_transfers_quantity_positive_check")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["offset_batches.id"],
            name=op.f("offset_transfers_batch_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["from_organization_id"],
            ["organizations.id"],
            name=op.f("offset_transfers_from_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["to_organization_id"],
            ["organizations.id"],
            name=op.f("offset_transfers_to_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_transfers_pkey")),
    )
    op.create_index(
        op.f("ix_offset_transfers_batch_id"), "offset_transfers", ["batch_id"], unique=False
    )
    op.create_index(
        op.f("ix_offset_transfers_from_organization_id"),
        "offset_transfers",
        ["from_organization_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_offset_transfers_to_organization_id"),
        "offset_transfers",
        ["to_organization_id"],
        unique=False,
    )
    op.create_table(
        "offset_blocks",
        sa.Column("batch_id", sa.UUID(), nullable=False),
        sa.Column("holder_organization_id", sa.UUID(), nullable=False),
        sa.Column("serial_start", sa.BigInteger(), nullable=False),
        sa.Column("serial_end", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("hold_id", sa.UUID(), nullable=True),
        sa.Column("retirement_id", sa.UUID(), nullable=True),
        sa.Column("parent_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("closed_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "(state = 'held') = (hold_id IS NOT NULL)", name=op.f("offset_blocks_hold_check")
        ),
        sa.CheckConstraint(
            "(state = 'retired') = (retirement_id IS NOT NULL)",
            name=op.f("offset_blocks_retirement_check"),
        ),
        sa.CheckConstraint(
            "state <> 'retired' OR closed_at IS NULL", name=op.f("offset_blocks_retired_live_check")
        ),
        sa.CheckConstraint(
            "state IN ('active', 'held', 'retired')", name=op.f("offset_blocks_state_check")
        ),
        sa.CheckConstraint(
            "serial_end >= serial_start", name=op.f("offset_blocks_serial_range_check")
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["offset_batches.id"],
            name=op.f("offset_blocks_batch_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["holder_organization_id"],
            ["organizations.id"],
            name=op.f("offset_blocks_holder_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["retirement_id"],
            ["offset_retirements.id"],
            name=op.f("offset_blocks_retirement_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_blocks_pkey")),
    )
    op.create_index(
        "ix_offset_blocks_live",
        "offset_blocks",
        ["batch_id", "holder_organization_id", "serial_start"],
        unique=False,
        postgresql_where="closed_at IS NULL",
    )
    op.create_index(
        "ix_offset_blocks_retirement_id", "offset_blocks", ["retirement_id"], unique=False
    )
    op.create_table(
        "offset_claim_allocations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("retirement_id", sa.UUID(), nullable=False),
        sa.Column("claim_id", sa.UUID(), nullable=True),
        sa.Column("pool_id", sa.UUID(), nullable=True),
        sa.Column("grams", sa.BigInteger(), nullable=False),
        sa.Column("released_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(claim_id IS NULL) <> (pool_id IS NULL)",
            name=op.f("offset_claim_allocations_one_target_check"),
        ),
        sa.CheckConstraint("grams > 0", name=op.f("offset_claim_allocations_grams_positive_check")),
        sa.ForeignKeyConstraint(
            ["claim_id"],
            ["offset_claims.id"],
            name=op.f("offset_claim_allocations_claim_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["offset_pools.id"],
            name=op.f("offset_claim_allocations_pool_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["retirement_id"],
            ["offset_retirements.id"],
            name=op.f("offset_claim_allocations_retirement_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("offset_claim_allocations_pkey")),
    )
    op.create_index(
        "ix_offset_claim_allocations_claim_id",
        "offset_claim_allocations",
        ["claim_id"],
        unique=False,
    )
    op.create_index(
        "ix_offset_claim_allocations_pool_id", "offset_claim_allocations", ["pool_id"], unique=False
    )
    op.create_index(
        "ix_offset_claim_allocations_retirement_id",
        "offset_claim_allocations",
        ["retirement_id"],
        unique=False,
    )
    # ### end Alembic commands ###
    for statement in REGISTRY_SQL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in REGISTRY_SQL_DOWN:
        op.execute(statement)
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index(
        "ix_offset_claim_allocations_retirement_id", table_name="offset_claim_allocations"
    )
    op.drop_index("ix_offset_claim_allocations_pool_id", table_name="offset_claim_allocations")
    op.drop_index("ix_offset_claim_allocations_claim_id", table_name="offset_claim_allocations")
    op.drop_table("offset_claim_allocations")
    op.drop_index("ix_offset_blocks_retirement_id", table_name="offset_blocks")
    op.drop_index(
        "ix_offset_blocks_live", table_name="offset_blocks", postgresql_where="closed_at IS NULL"
    )
    op.drop_table("offset_blocks")
    op.drop_index(op.f("ix_offset_transfers_to_organization_id"), table_name="offset_transfers")
    op.drop_index(op.f("ix_offset_transfers_from_organization_id"), table_name="offset_transfers")
    op.drop_index(op.f("ix_offset_transfers_batch_id"), table_name="offset_transfers")
    op.drop_table("offset_transfers")
    op.drop_index(
        "ix_offset_retirements_public",
        table_name="offset_retirements",
        postgresql_where="is_public",
    )
    op.drop_index(op.f("ix_offset_retirements_organization_id"), table_name="offset_retirements")
    op.drop_index(op.f("ix_offset_retirements_batch_id"), table_name="offset_retirements")
    op.drop_table("offset_retirements")
    op.drop_index(op.f("ix_offset_claims_pool_id"), table_name="offset_claims")
    op.drop_index(op.f("ix_offset_claims_organization_id"), table_name="offset_claims")
    op.drop_table("offset_claims")
    op.drop_index(op.f("ix_offset_batches_project_id"), table_name="offset_batches")
    op.drop_table("offset_batches")
    op.drop_index(op.f("ix_offset_projects_owner_organization_id"), table_name="offset_projects")
    op.drop_table("offset_projects")
    op.drop_index(op.f("ix_offset_pools_organization_id"), table_name="offset_pools")
    op.drop_table("offset_pool_shards")
    op.drop_table("offset_pools")
    op.drop_table("offset_goals")
    op.drop_table("offset_serial_counter")
    # ### end Alembic commands ###
