"""What a running task may use: the worker's SQLAlchemy sessionmaker, as ``job_session()``.

``run_worker`` sets it for the jobs it runs (a context variable, so two workers in one process
each see their own). Tasks take IDs, not ORM objects, and open their own transaction::

    async with job_session() as session:
        ...  # committed when the block ends, rolled back on an exception
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import SessionMaker, session_scope

_sessionmaker: ContextVar[SessionMaker | None] = ContextVar("tanso_job_sessionmaker", default=None)


@contextmanager
def use_sessionmaker(sessionmaker: SessionMaker) -> Iterator[None]:
    """Jobs started inside this block (and this block itself) use ``sessionmaker``."""
    token = _sessionmaker.set(sessionmaker)
    try:
        yield
    finally:
        _sessionmaker.reset(token)


def current_sessionmaker() -> SessionMaker:
    sessionmaker = _sessionmaker.get()
    if sessionmaker is None:
        raise RuntimeError("no job sessionmaker: tasks run inside run_worker (or use_sessionmaker)")
    return sessionmaker


@asynccontextmanager
async def job_session() -> AsyncIterator[AsyncSession]:
    """One transaction for a task: commit on success, roll back on error."""
    async with session_scope(current_sessionmaker()) as session:
        yield session
