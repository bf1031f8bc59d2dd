"""Engine, sessions and the one-commit-per-request dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import Settings
from app.db.url import async_url

SessionMaker = async_sessionmaker[AsyncSession]


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    target = url or settings.database.url
    if target is None:
        raise RuntimeError("no database URL: start the embedded server first")
    return create_async_engine(
        async_url(target),
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        pool_pre_ping=False,
        echo=settings.database.echo,
        # JIT off: the service runs short statements, and a JIT compilation (hundreds of ms,
        # seen on a prepared registry look-up whose generic plan was costed high) would cost
        # more than any of them.
        connect_args={"server_settings": {"application_name": "tanso", "jit": "off"}},
    )


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# When the idempotency middleware owns the transaction (a POST with Idempotency-Key), it puts
# its session here; the dependency then neither commits nor rolls back: the middleware does,
# together with the stored response.
REQUEST_SESSION_KEY = "tanso_db_session"


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    owned: AsyncSession | None = request.scope.get("state", {}).get(REQUEST_SESSION_KEY)
    if owned is not None:
        yield owned
        return
    async with request.app.state.sessionmaker() as session:
        try:
            yield session
        except Exception:
            await session.rollback()
            raise
        else:
            await session.commit()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


@asynccontextmanager
async def session_scope(sessionmaker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """For workers and scripts: commit on success, roll back on error."""
    async with sessionmaker() as session:
        try:
            yield session
        except Exception:
            await session.rollback()
            raise
        else:
            await session.commit()
