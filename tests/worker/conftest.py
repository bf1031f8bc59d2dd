"""Fixtures for the job-runner tests: the test task's table and an open ``job_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import procrastinate
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.session import SessionMaker, create_sessionmaker
from app.worker.app import open_job_app
from tests.worker.sample_tasks import CREATE_RUNS_TABLE


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return create_sessionmaker(engine)


@pytest.fixture
async def runs_table(engine: AsyncEngine) -> AsyncIterator[None]:
    """``worker_test_runs``, dropped afterwards (it is no part of the schema under test)."""
    async with engine.begin() as conn:
        await conn.execute(text(CREATE_RUNS_TABLE))
    yield
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE worker_test_runs"))


@pytest.fixture
async def jobs(database_url: str, engine: AsyncEngine) -> AsyncIterator[procrastinate.App]:
    """``job_app`` open on the test database (its tables are emptied after the test)."""
    async with open_job_app(database_url) as app:
        yield app
