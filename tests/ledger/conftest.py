"""Ledger fixtures: committed organisations."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.session import SessionMaker, create_sessionmaker
from tests.ledger.helpers import OrgMaker, make_org


@pytest.fixture
def new_org(session: AsyncSession) -> OrgMaker:
    async def make() -> uuid.UUID:
        return await make_org(session)

    return make


@pytest.fixture
async def org(new_org: OrgMaker) -> uuid.UUID:
    return await new_org()


@pytest.fixture
async def other_org(new_org: OrgMaker) -> uuid.UUID:
    return await new_org()


@pytest.fixture
def sessions(engine: AsyncEngine) -> SessionMaker:
    """Independent sessions on the test database, for work that must race or commit apart."""
    return create_sessionmaker(engine)
