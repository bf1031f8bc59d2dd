"""Migration 0002 installs procrastinate's schema, exactly as the installed library defines it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from procrastinate.schema import SchemaManager
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.base import Base
from app.db.runtime import alembic_config
from app.db.url import libpq_url
from app.worker.app import psycopg_conninfo
from app.worker.schema import include_name

TABLES = {
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_workers",
}

# Everything procrastinate's SQL creates, read back from the catalogue in a comparable form.
CATALOGUE = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = current_schema() AND c.relkind = 'r'
           AND c.relname LIKE 'procrastinate%' AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraints": """
        SELECT t.relname, c.conname, pg_get_constraintdef(c.oid)
          FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
         WHERE t.relname LIKE 'procrastinate%'
    """,
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
         WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%'
    """,
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%'
    """,
    "triggers": """
        SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relname LIKE 'procrastinate%' AND NOT t.tgisinternal
    """,
    "enum labels": """
        SELECT t.typname, e.enumsortorder, e.enumlabel FROM pg_enum e
          JOIN pg_type t ON t.oid = e.enumtypid WHERE t.typname LIKE 'procrastinate%'
    """,
    "composite types": """
        SELECT t.typname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
          FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
         WHERE t.typname LIKE 'procrastinate%' AND t.typtype = 'c'
           AND NOT EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind = 'r')
    """,
    "sequences": """
        SELECT sequencename, data_type::text FROM pg_sequences
         WHERE schemaname = current_schema() AND sequencename LIKE 'procrastinate%'
    """,
}


async def _catalogue(url: str) -> dict[str, set[tuple[Any, ...]]]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        return {
            name: {tuple(row) for row in await conn.fetch(query)}
            for name, query in CATALOGUE.items()
        }
    finally:
        await conn.close()


@pytest.fixture
async def scratch_url(database_url: str) -> AsyncIterator[str]:
    """An empty database next to the test database, dropped afterwards."""
    name = f"{make_url(database_url).database}_scratch"
    admin = await asyncpg.connect(libpq_url(database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_migration_creates_procrastinate_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        tables = set(
            (
                await conn.execute(
                    text(
                        "SELECT tablename FROM pg_tables"
                        " WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%'"
                    )
                )
            ).scalars()
        )
    assert tables == TABLES


async def test_migrated_schema_matches_installed_procrastinate(
    database_url: str, scratch_url: str
) -> None:
    """Fails after a procrastinate upgrade until a migration brings the schema up to it.

    The reference is what the installed library itself would create (its ``schema.sql``, run
    by psycopg as ``procrastinate schema --apply`` does), in an empty database.
    """
    async with await psycopg.AsyncConnection.connect(
        psycopg_conninfo(scratch_url), autocommit=True
    ) as conn:
        await conn.execute(SchemaManager.get_schema())
    migrated, reference = await _catalogue(database_url), await _catalogue(scratch_url)
    for part in CATALOGUE:
        assert migrated[part] == reference[part], (
            f"procrastinate {part} differ from the installed version's: add a migration "
            "(see the docstring of migration 0002)"
        )
    assert {row[0] for row in migrated["columns"]} == TABLES


async def test_downgrade_removes_everything_and_upgrade_restores_it(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    # Alembic's env.py runs its own event loop: give it a thread.
    await asyncio.to_thread(command.upgrade, config, "head")
    full = await _catalogue(scratch_url)
    assert all(full.values())

    await asyncio.to_thread(command.downgrade, config, "0001")
    assert not any((await _catalogue(scratch_url)).values())

    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _catalogue(scratch_url) == full


async def test_autogenerate_leaves_procrastinate_tables_alone(engine: AsyncEngine) -> None:
    """``alembic check`` must not see procrastinate's tables (absent from our models) as drift."""

    def diffs(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"include_name": include_name, "compare_type": True}
        )
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        found = await conn.run_sync(diffs)
    assert not [d for d in found if "procrastinate" in repr(d)]
    assert not include_name("procrastinate_jobs", "table", {})
    assert include_name("idempotency_keys", "table", {})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://postgres:@/tanso?host=/tmp/tanso/pgdata",
            {"host": "/tmp/tanso/pgdata", "dbname": "tanso", "user": "postgres"},
        ),
        (
            "postgresql+asyncpg://app:p%40ss:w0rd@db.internal:6432/tanso?ssl=require",
            {
                "host": "db.internal",
                "port": "6432",
                "dbname": "tanso",
                "user": "app",
                "password": "p@ss:w0rd",
                "sslmode": "require",
            },
        ),
        (
            "postgres://app@db/tanso?sslmode=verify-full&prepared_statement_cache_size=0",
            {"host": "db", "dbname": "tanso", "user": "app", "sslmode": "verify-full"},
        ),
    ],
)
def test_psycopg_conninfo_from_any_tanso_url(url: str, expected: dict[str, str]) -> None:
    params = conninfo_to_dict(psycopg_conninfo(url))
    assert params == {**expected, "application_name": "tanso-worker"}
