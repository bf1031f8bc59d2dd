"""Migrations: the whole chain goes up, down to nothing, and up again on a fresh database, and
the models describe exactly the schema the migrations build (``alembic check``).

Runs on its own database (not the per-worker test database the other tests share). Alembic's
environment starts an event loop of its own, so each Alembic command runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

import app.db.registry  # noqa: F401  (every model, as migrations/env.py loads them)
from app.db.base import Base
from app.db.runtime import alembic_config
from app.db.url import async_url, libpq_url

T = TypeVar("T")

# A database's own objects: after ``downgrade base`` there must be none. Objects that belong to
# an extension (btree_gist's operator support functions, say) are the extension's, not ours:
# a migration may leave an extension installed.
NOT_FROM_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass
                                  AND d.objid = {oid} AND d.deptype = 'e')"""
SCHEMA_SQL = {
    # Alembic's own table is left out: at base it is there (empty), before any upgrade it is not.
    "relations": f"""SELECT c.relname || ':' || c.relkind::text FROM pg_class c
                      JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema()
                       AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
                       AND {NOT_FROM_EXTENSION.format(catalog="pg_class", oid="c.oid")}""",
    "functions": f"""SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = current_schema()
                       AND {NOT_FROM_EXTENSION.format(catalog="pg_proc", oid="p.oid")}""",
    "types": f"""SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE n.nspname = current_schema()
                   AND {NOT_FROM_EXTENSION.format(catalog="pg_type", oid="t.oid")}
                   AND (t.typtype IN ('e', 'd', 'r', 'm')
                        OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c
                                                        WHERE c.oid = t.typrelid
                                                          AND c.relkind = 'c')))""",
    "triggers": """SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = current_schema() AND NOT t.tgisinternal""",
}


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` where no event loop is running (Alembic's env.py calls ``asyncio.run``)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(libpq_url(os.environ["TANSO_TEST_DATABASE_URL"]))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _schema(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        return {
            name: {str(r[0]) for r in await conn.fetch(sql)} for name, sql in SCHEMA_SQL.items()
        }
    finally:
        await conn.close()


def schema(url: str) -> dict[str, set[str]]:
    return in_thread(lambda: asyncio.run(_schema(url)))


@pytest.fixture
def fresh_database_url(worker_id: str) -> Iterator[str]:
    name = f"tanso_migrations_{worker_id}"
    base = os.environ["TANSO_TEST_DATABASE_URL"]

    def run(sql: str) -> None:
        in_thread(lambda: asyncio.run(_admin(sql)))

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade(url: str, target: str = "head") -> None:
    in_thread(lambda: command.upgrade(alembic_config(url), target))


def downgrade(url: str, target: str = "base") -> None:
    in_thread(lambda: command.downgrade(alembic_config(url), target))


def autogenerate_diffs(url: str) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write: models versus database."""
    from app.worker.schema import include_name

    def compare() -> list[Any]:
        async def go() -> list[Any]:
            engine = create_async_engine(async_url(url))
            try:
                async with engine.connect() as conn:

                    def diff(sync_conn: Connection) -> list[Any]:
                        context = MigrationContext.configure(
                            sync_conn, opts={"compare_type": True, "include_name": include_name}
                        )
                        return list(compare_metadata(context, Base.metadata))

                    return await conn.run_sync(diff)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    return in_thread(compare)


class TestMigrationChain:
    def test_upgrade_downgrade_upgrade(self, fresh_database_url: str) -> None:
        url = fresh_database_url
        upgrade(url)
        built = schema(url)
        assert {"ledger_accounts:r", "ledger_postings:r", "ledger_entries:r"} <= built["relations"]
        assert "ledger_post_entries" in built["functions"]
        assert {
            "ledger_entries_balanced",
            "ledger_postings_same_transaction",
            "ledger_postings_append_only",
            "ledger_entries_append_only",
        } <= built["triggers"]

        downgrade(url)
        emptied = schema(url)
        assert emptied["relations"] == set()
        assert emptied["functions"] == set()
        assert emptied["types"] == set()
        assert emptied["triggers"] == set()

        upgrade(url)
        assert schema(url) == built

    def test_each_downgrade_undoes_its_upgrade(self, fresh_database_url: str) -> None:
        """Up one revision at a time, then down one at a time: each step back restores exactly
        the schema the database had before that revision."""
        url = fresh_database_url
        revisions = [
            r.revision
            for r in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
        ]
        before = {revisions[0]: schema(url)}
        for previous, revision in itertools.pairwise(revisions):
            upgrade(url, previous)
            before[revision] = schema(url)
        upgrade(url, revisions[-1])
        for revision in reversed(revisions):
            downgrade(url, "-1")
            assert schema(url) == before[revision], f"downgrade of {revision}"


class TestModelsMatchMigrations:
    def test_no_autogenerate_diffs(self, fresh_database_url: str) -> None:
        upgrade(fresh_database_url)
        assert autogenerate_diffs(fresh_database_url) == []

    def test_alembic_check(self, fresh_database_url: str) -> None:
        upgrade(fresh_database_url)
        in_thread(lambda: command.check(alembic_config(fresh_database_url)))
