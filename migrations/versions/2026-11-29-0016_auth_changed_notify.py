"""NOTIFY ``tanso_auth`` whenever an API key or an organisation changes.

Each API process remembers the keys it authenticated (``app.accounts.keycache``), so that an
order does not read its key and organisation again on every request. It must forget them the
moment one changes: a key revoked, an organisation suspended or renamed. These statement-level
triggers send ``pg_notify('tanso_auth', <table>)`` in the changing transaction, delivered when
it commits, for every way a row can change (UPDATE, DELETE, TRUNCATE: the API, an operator's
SQL, a test's clean-up). A new key needs no notice: only keys that were found are remembered.

Written by hand (no table or column changes: ``alembic check`` is unaffected).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29 02:20:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("api_keys", "organizations")

UP = [
    """
    CREATE FUNCTION tanso_auth_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
        PERFORM pg_notify('tanso_auth', TG_TABLE_NAME);
        RETURN NULL;
    END
    $$
    """,
    *(
        f"CREATE TRIGGER {table}_auth_changed AFTER UPDATE OR DELETE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION tanso_auth_changed()"
        for table in TABLES
    ),
    *(
        f"CREATE TRIGGER {table}_auth_truncated AFTER TRUNCATE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION tanso_auth_changed()"
        for table in TABLES
    ),
]

DOWN = [
    *(f"DROP TRIGGER {table}_auth_truncated ON {table}" for table in TABLES),
    *(f"DROP TRIGGER {table}_auth_changed ON {table}" for table in TABLES),
    "DROP FUNCTION tanso_auth_changed()",
]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for statement in DOWN:
        op.execute(statement)
