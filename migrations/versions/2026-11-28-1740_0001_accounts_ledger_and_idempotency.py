"""Organisations and API keys, idempotency keys, and the double-entry ledger.

Besides the tables: the posting function ``ledger_post_entries`` (the only writer of
postings), a deferred constraint trigger that rejects an unbalanced entry at commit, a guard
that lets only the entry's own transaction add postings to it (and only before its balance was
checked), append-only triggers, and the ``JPY`` asset.

SQLSTATEs raised: TN001 insufficient balance, TN002 unbalanced entry, TN003 posting added to an
entry of another transaction or after the balance checks ran (``SET CONSTRAINTS ...
IMMEDIATE``), TN004 update or delete of an append-only table.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 17:40:40.778932+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_SQL = [
    # Append postings (with running balances) and update cached balances for a batch of
    # entries, in one round trip. Accounts are locked in id order so concurrent batches never
    # deadlock. A leg that would take a non-negative account below zero (at any point in the
    # batch) aborts the call with SQLSTATE TN001. An entry whose idempotency key exists is
    # skipped, and its id is left out of the result. A leg naming no account (or an account
    # of another asset) fails the postings' foreign key (23503).
    """
    CREATE FUNCTION ledger_post_entries(
        p_entry_ids uuid[], p_kinds text[], p_references text[], p_keys text[],
        p_metadata jsonb[], p_leg_entries uuid[], p_leg_accounts uuid[], p_leg_assets text[],
        p_leg_amounts bigint[]
    ) RETURNS uuid[]
    LANGUAGE plpgsql
    -- Plan the statements inside once per connection, not on every call (the custom plans
    -- cost about 200 µs a call and gain nothing: the queries are keyed lookups).
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_written uuid[];
        v_short record;
    BEGIN
        -- In key order: two batches that share keys wait for each other's keys in one order,
        -- never each holding a key the other wants (a deadlock, like unordered row locks).
        WITH ins AS (
            INSERT INTO ledger_entries (id, kind, reference, idempotency_key, metadata)
            SELECT * FROM unnest(p_entry_ids, p_kinds, p_references, p_keys, p_metadata)
                          AS e (id, kind, reference, idempotency_key, metadata)
             ORDER BY e.idempotency_key
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
        )
        SELECT coalesce(array_agg(id), '{}') INTO v_written FROM ins;
        IF cardinality(v_written) = 0 THEN
            RETURN v_written;
        END IF;

        PERFORM 1 FROM ledger_accounts
          WHERE id = ANY (p_leg_accounts) ORDER BY id FOR UPDATE;

        WITH legs AS (
            SELECT l.entry_id, l.account_id, l.asset, l.amount, l.ord
              FROM unnest(p_leg_entries, p_leg_accounts, p_leg_assets, p_leg_amounts)
                   WITH ORDINALITY AS l (entry_id, account_id, asset, amount, ord)
             WHERE l.entry_id = ANY (v_written)
        ), running AS (
            -- LEFT JOIN: a leg naming no account must still reach the INSERT, where the
            -- foreign key refuses it (an inner join would drop it silently).
            SELECT legs.*, coalesce(a.is_non_negative, false) AS is_non_negative,
                   coalesce(a.balance, 0)
                     + sum(legs.amount) OVER (PARTITION BY legs.account_id
                                              ORDER BY legs.ord) AS balance_after
              FROM legs LEFT JOIN ledger_accounts a ON a.id = legs.account_id
        ), ins AS (
            INSERT INTO ledger_postings (entry_id, account_id, asset, amount, balance_after)
            SELECT entry_id, account_id, asset, amount, balance_after FROM running ORDER BY ord
        )
        SELECT account_id, balance_after INTO v_short
          FROM running WHERE is_non_negative AND balance_after < 0 LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'insufficient balance in account %', v_short.account_id
                USING ERRCODE = 'TN001';
        END IF;

        UPDATE ledger_accounts a
           SET balance = a.balance + d.delta, version = a.version + d.n
          FROM (SELECT l.account_id, sum(l.amount) AS delta, count(*) AS n
                  FROM unnest(p_leg_entries, p_leg_accounts, p_leg_amounts)
                       AS l (entry_id, account_id, amount)
                 WHERE l.entry_id = ANY (v_written)
                 GROUP BY l.account_id) d
         WHERE a.id = d.account_id;
        RETURN v_written;
    END
    $$
    """,
    # The backstop: at commit, every entry written has two or more postings that sum to zero
    # per asset, whoever wrote them.
    """
    CREATE FUNCTION ledger_check_entry_balanced() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        v_count bigint;
        v_unbalanced text;
    BEGIN
        SELECT count(*) INTO v_count FROM ledger_postings WHERE entry_id = NEW.id;
        IF v_count < 2 THEN
            RAISE EXCEPTION 'ledger entry % has % posting(s); at least two are needed',
                NEW.id, v_count USING ERRCODE = 'TN002';
        END IF;
        SELECT asset INTO v_unbalanced FROM ledger_postings WHERE entry_id = NEW.id
         GROUP BY asset HAVING sum(amount) <> 0 LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger entry % does not balance for asset %', NEW.id, v_unbalanced
                USING ERRCODE = 'TN002';
        END IF;
        -- Normally this runs at COMMIT, after which nothing more is written. Run earlier (by
        -- SET CONSTRAINTS ... IMMEDIATE), it must be the last word: say so for the guard below.
        PERFORM set_config('tanso.ledger_checked', 'on', true);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_entries_balanced
        AFTER INSERT ON ledger_entries
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_balanced()
    """,
    # Postings join an entry only in the transaction that created it, and only before that
    # transaction's balance checks ran, so the check above (which runs once per entry) sees
    # every posting the entry will ever have.
    """
    CREATE FUNCTION ledger_postings_same_transaction() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('tanso.ledger_checked', true) = 'on' THEN
            RAISE EXCEPTION 'postings cannot be added after the balance checks ran'
                USING ERRCODE = 'TN003',
                      HINT = 'SET CONSTRAINTS ... IMMEDIATE ran them early in this transaction';
        END IF;
        IF EXISTS (SELECT 1 FROM new_postings n JOIN ledger_entries e ON e.id = n.entry_id
                    WHERE e.txid <> pg_current_xact_id()::text::bigint) THEN
            RAISE EXCEPTION 'postings can only be added by the transaction that created the entry'
                USING ERRCODE = 'TN003';
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER ledger_postings_same_transaction
        AFTER INSERT ON ledger_postings REFERENCING NEW TABLE AS new_postings
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_same_transaction()
    """,
    """
    CREATE FUNCTION ledger_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only: post a reversing entry instead', TG_TABLE_NAME
            USING ERRCODE = 'TN004';
    END
    $$
    """,
    """
    CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()
    """,
    """
    CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()
    """,
]

LEDGER_SQL_DOWN = [
    "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
    "DROP TRIGGER ledger_postings_append_only ON ledger_postings",
    "DROP FUNCTION ledger_append_only()",
    "DROP TRIGGER ledger_postings_same_transaction ON ledger_postings",
    "DROP FUNCTION ledger_postings_same_transaction()",
    "DROP TRIGGER ledger_entries_balanced ON ledger_entries",
    "DROP FUNCTION ledger_check_entry_balanced()",
    "DROP FUNCTION ledger_post_entries(uuid[], text[], text[], text[], jsonb[], uuid[], uuid[], text[], bigint[])",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "idempotency_keys",
        sa.Column("caller", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.SmallInteger(), nullable=False),
        sa.Column("response_headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("response_body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("caller", "key", name=op.f("idempotency_keys_pkey")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    op.create_table(
        "ledger_assets",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('cash', 'credit')", name=op.f("ledger_assets_kind_check")),
        sa.PrimaryKeyConstraint("code", name=op.f("ledger_assets_pkey")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "txid",
            sa.BigInteger(),
            server_default=sa.text("pg_current_xact_id()::text::bigint"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("statement_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ledger_entries_pkey")),
        sa.UniqueConstraint("idempotency_key", name=op.f("ledger_entries_idempotency_key_key")),
    )
    op.create_table(
        "organizations",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("prefecture", sa.String(length=2), nullable=True),
        sa.Column("corporate_number", sa.String(length=13), nullable=True),
        sa.Column("group", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "corporate_number ~ '^[0-9]{13}$'", name=op.f("organizations_corporate_number_check")
        ),
        sa.CheckConstraint(
            "kind IN ('company', 'municipality', 'seller', 'government', 'platform')",
            name=op.f("organizations_kind_check"),
        ),
        sa.CheckConstraint(
            "prefecture ~ '^(0[1-9]|[1-3][0-9]|4[0-7])$'",
            name=op.f("organizations_prefecture_check"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended')", name=op.f("organizations_status_check")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("organizations_pkey")),
        sa.UniqueConstraint("corporate_number", name=op.f("organizations_corporate_number_key")),
    )
    op.create_index(op.f("ix_organizations_group"), "organizations", ["group"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.String(length=20)), nullable=False),
        sa.Column("revoked_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("api_keys_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("api_keys_pkey")),
        sa.UniqueConstraint("key_hash", name=op.f("api_keys_key_hash_key")),
    )
    op.create_index(
        op.f("ix_api_keys_organization_id"), "api_keys", ["organization_id"], unique=False
    )
    op.create_table(
        "ledger_accounts",
        sa.Column("organization_id", sa.UUID(), nullable=True),
        sa.Column("asset", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("is_non_negative", sa.Boolean(), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "(organization_id IS NULL) = (kind NOT IN ('available', 'held'))",
            name=op.f("ledger_accounts_owner_check"),
        ),
        sa.CheckConstraint(
            "kind IN ('available', 'held', 'external', 'retired', 'fees')",
            name=op.f("ledger_accounts_kind_check"),
        ),
        sa.CheckConstraint(
            "NOT is_non_negative OR balance >= 0", name=op.f("ledger_accounts_non_negative_check")
        ),
        sa.CheckConstraint("version >= 0", name=op.f("ledger_accounts_version_check")),
        sa.ForeignKeyConstraint(
            ["asset"], ["ledger_assets.code"], name=op.f("ledger_accounts_asset_fkey")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("ledger_accounts_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ledger_accounts_pkey")),
        sa.UniqueConstraint("id", "asset", name=op.f("ledger_accounts_id_asset_key")),
        sa.UniqueConstraint(
            "organization_id",
            "asset",
            "kind",
            name=op.f("ledger_accounts_organization_id_asset_kind_key"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_table(
        "ledger_deposits",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("entry_id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ledger_deposits_amount_positive_check")),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["ledger_entries.id"], name=op.f("ledger_deposits_entry_id_fkey")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("ledger_deposits_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ledger_deposits_pkey")),
        sa.UniqueConstraint(
            "organization_id",
            "reference",
            name=op.f("ledger_deposits_organization_id_reference_key"),
        ),
    )
    op.create_table(
        "ledger_holds",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("asset", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(status = 'active') = (remaining > 0)",
            name=op.f("ledger_holds_status_remaining_check"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'closed')", name=op.f("ledger_holds_status_check")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ledger_holds_amount_positive_check")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= amount", name=op.f("ledger_holds_remaining_check")
        ),
        sa.ForeignKeyConstraint(
            ["asset"], ["ledger_assets.code"], name=op.f("ledger_holds_asset_fkey")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("ledger_holds_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ledger_holds_pkey")),
    )
    op.create_index(
        "ix_ledger_holds_organization_id_asset",
        "ledger_holds",
        ["organization_id", "asset"],
        unique=False,
    )
    op.create_table(
        "ledger_postings",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("asset", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("statement_timestamp()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ledger_postings_amount_non_zero_check")),
        sa.ForeignKeyConstraint(
            ["account_id", "asset"],
            ["ledger_accounts.id", "ledger_accounts.asset"],
            name="ledger_postings_account_id_asset_fkey",
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["ledger_entries.id"], name=op.f("ledger_postings_entry_id_fkey")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ledger_postings_pkey")),
    )
    op.create_index(
        "ix_ledger_postings_account_id_id", "ledger_postings", ["account_id", "id"], unique=False
    )
    op.create_index(
        op.f("ix_ledger_postings_entry_id"), "ledger_postings", ["entry_id"], unique=False
    )
    # ### end Alembic commands ###
    for statement in LEDGER_SQL:
        op.execute(statement)
    op.execute(
        "INSERT INTO ledger_assets (code, kind, name, created_at)"
        " VALUES ('JPY', 'cash', 'Japanese yen', now())"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in LEDGER_SQL_DOWN:
        op.execute(statement)
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index(op.f("ix_ledger_postings_entry_id"), table_name="ledger_postings")
    op.drop_index("ix_ledger_postings_account_id_id", table_name="ledger_postings")
    op.drop_table("ledger_postings")
    op.drop_index("ix_ledger_holds_organization_id_asset", table_name="ledger_holds")
    op.drop_table("ledger_holds")
    op.drop_table("ledger_deposits")
    op.drop_table("ledger_accounts")
    op.drop_index(op.f("ix_api_keys_organization_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_organizations_group"), table_name="organizations")
    op.drop_table("organizations")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_assets")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    # ### end Alembic commands ###
