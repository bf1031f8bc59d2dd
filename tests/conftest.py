"""Test set-up: a real PostgreSQL, one database per xdist worker, migrated with Alembic.

The server is the one ``TANSO_TEST_DATABASE_URL`` names or, when unset, an embedded
PostgreSQL started once by the controlling pytest process in a temporary folder (fsync off).

Every test runs against real commits (so deferred constraint triggers, advisory locks and
unique races behave as in production) and the tables are emptied after each test. We do not
use the rolled-back outer transaction pattern: deferred ledger triggers fire only at COMMIT,
so that pattern would never exercise them.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

ADMIN_KEY = "test-admin-key-0123456789abcdef"
os.environ["TANSO_ADMIN_KEY"] = ADMIN_KEY
os.environ["TANSO_ENVIRONMENT"] = "test"
_DATA_DIR = tempfile.mkdtemp(prefix="tanso-test-data-")
# Removed when this process ends, however it was imported (by pytest, or by a script that
# uses the fixtures' helpers: there ``pytest_unconfigure`` never runs).
atexit.register(shutil.rmtree, _DATA_DIR, ignore_errors=True)
os.environ["TANSO_DATA_DIR"] = _DATA_DIR
os.environ.pop("TANSO_DATABASE__URL", None)
os.environ.pop("DATABASE_URL", None)

from app.config import Settings, get_settings  # noqa: E402
from app.core.logging import configure_logging  # noqa: E402
from app.db.embedded import EmbeddedPostgres, start_embedded  # noqa: E402
from app.db.runtime import upgrade_to_head  # noqa: E402
from app.db.session import create_sessionmaker  # noqa: E402
from app.db.url import async_url, libpq_url  # noqa: E402
from app.main import create_app  # noqa: E402
from app.market import service as market_service  # noqa: E402

configure_logging(json=False, level="WARNING", cache_loggers=False)

_EMBEDDED_DIR: Path | None = None
_EMBEDDED: EmbeddedPostgres | None = None
# Tables whose rows are reference data kept between tests (JPY is seeded by a migration).
KEEP = {"alembic_version", "ledger_assets", "offset_serial_counter"}


def pytest_configure(config: pytest.Config) -> None:
    global _EMBEDDED_DIR, _EMBEDDED
    if hasattr(config, "workerinput") or os.environ.get("TANSO_TEST_DATABASE_URL"):
        return
    _EMBEDDED_DIR = Path(tempfile.mkdtemp(prefix="tanso-test-pg-"))
    _EMBEDDED = start_embedded(_EMBEDDED_DIR, fast_unsafe=True)
    os.environ["TANSO_TEST_DATABASE_URL"] = _EMBEDDED.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _EMBEDDED is not None and _EMBEDDED_DIR is not None:
        _EMBEDDED.stop()
        shutil.rmtree(_EMBEDDED_DIR, ignore_errors=True)
    shutil.rmtree(_DATA_DIR, ignore_errors=True)  # this process's (each xdist worker has one)


def _worker_database_url(worker_id: str) -> str:
    base = os.environ["TANSO_TEST_DATABASE_URL"]
    name = f"tanso_test_{worker_id}"
    admin_url = libpq_url(base)

    async def recreate() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    return make_url(base).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(worker_id: str) -> str:
    url = _worker_database_url(worker_id)
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    get_settings.cache_clear()
    s = get_settings()
    s.database.url = database_url
    return s


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(async_url(database_url), pool_size=30, max_overflow=30)
    yield eng
    await eng.dispose()


async def _truncate(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        tables = (
            await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ).scalars()
        names = [t for t in tables if t not in KEEP]
        if names:
            await conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        await conn.execute(text("DELETE FROM ledger_assets WHERE code <> 'JPY'"))
    market_service.forget_products()  # product codes may come back with other ids
    market_service.forget_accounts()  # and accounts too


@pytest.fixture(autouse=True)
async def _clean_database(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "engine" in request.fixturenames:
        await _truncate(request.getfixturevalue("engine"))


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with create_sessionmaker(engine)() as s:
        yield s


@pytest.fixture
def app(engine: AsyncEngine, settings: Settings):  # type: ignore[no-untyped-def]
    application = create_app(settings)
    application.state.engine = engine
    application.state.sessionmaker = create_sessionmaker(engine)
    from app.db.runtime import head_revisions

    application.state.heads = head_revisions()
    return application


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        yield c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}
