"""The procrastinate ``App`` that every Tanso task is declared on, and how it reaches PostgreSQL.

Declaring a task (in ``app/<domain>/tasks.py``)::

    from app.worker.app import job_app

    @job_app.task(name="auction.close", queue="auctions", lock="auction.close")
    async def close_auction(auction_id: str) -> None: ...

then add ``"app.<domain>.tasks"`` to ``TASK_MODULES`` so every worker imports it (a worker that
meets a job whose task it has not imported fails the job with ``TaskNotFound``). Give every task
an explicit, stable ``name``: jobs already queued refer to it, so moving the function must not
rename the task.

``job_app`` is created at import time with a connector that is never opened; the real one is
put in place, for as long as it is needed, by ``open_job_app(url)``. The URL is Tanso's
database URL in any of the forms the settings accept (``postgresql+asyncpg://…``, a libpq URL
with ``?host=/socket/dir`` for the embedded server, …).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import procrastinate
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

# Modules that declare tasks. A worker imports all of them before it starts (this is also what
# registers their periodic tasks). Domains add theirs here, e.g. "app.auction.tasks".
TASK_MODULES: tuple[str, ...] = ("app.worker.tasks", "app.auction.tasks", "app.market.tasks")

APPLICATION_NAME = "tanso-worker"

# asyncpg spells a few connection options differently from libpq.
_ASYNCPG_SSL_TO_LIBPQ = {"true": "require", "false": "disable"}
_ASYNCPG_ONLY_OPTIONS = {"prepared_statement_cache_size", "prepared_statement_name_func"}


def psycopg_conninfo(url: str, *, application_name: str = APPLICATION_NAME) -> str:
    """A libpq connection string for psycopg, from any database URL Tanso accepts."""
    parsed = make_url(url)
    if not parsed.drivername.startswith(("postgresql", "postgres")):
        raise ValueError(f"unsupported database driver {parsed.drivername!r}: use postgresql://")
    params: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "dbname": parsed.database,
        "user": parsed.username,
        "password": parsed.password,
    }
    for key, value in parsed.query.items():
        # A repeated option (e.g. several hosts) is a tuple; libpq takes it comma-separated.
        text = ",".join(value) if isinstance(value, tuple) else value
        if key in _ASYNCPG_ONLY_OPTIONS:
            continue
        if key == "ssl":
            key, text = "sslmode", _ASYNCPG_SSL_TO_LIBPQ.get(text.lower(), text)
        params[key] = text
    params.setdefault("application_name", application_name)
    return make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


def build_connector(url: str, *, max_size: int = 4) -> procrastinate.PsycopgConnector:
    """A psycopg 3 connector (an async connection pool of at most ``max_size``) for ``url``."""
    return procrastinate.PsycopgConnector(
        conninfo=psycopg_conninfo(url),
        min_size=1,
        max_size=max(max_size, 2),
        name="tanso-jobs",
    )


_PLACEHOLDER = procrastinate.PsycopgConnector()

job_app = procrastinate.App(
    # Never opened: ``open_job_app`` puts the connector for the real URL in its place.
    connector=_PLACEHOLDER,
    import_paths=TASK_MODULES,
)


@dataclass
class _Connection:
    url: str
    connector: procrastinate.PsycopgConnector
    opening: asyncio.Future[None]
    users: int = 0


_current: _Connection | None = None


@asynccontextmanager
async def open_job_app(url: str, *, pool_size: int = 4) -> AsyncIterator[procrastinate.App]:
    """``job_app`` connected to ``url`` for the duration of the block.

    Needed by the worker, and to defer with ``task.defer_async(...)`` outside a database
    transaction or use ``job_app.job_manager`` (``defer_in_session`` needs nothing). Blocks may
    overlap in any order within a process (an in-process worker and the API, two test workers):
    they share one connection pool, grown to the largest ``pool_size`` asked for, and closed
    when the last block exits. Overlapping blocks must name the same database.
    """
    global _current
    if _current is None:
        connector = build_connector(url, max_size=pool_size)
        job_app.connector = job_app.job_manager.connector = connector
        _current = _Connection(
            url=url, connector=connector, opening=asyncio.ensure_future(connector.open_async())
        )
    elif _current.url != url:
        raise RuntimeError("the job app is already open on another database")
    current = _current
    current.users += 1
    try:
        await asyncio.shield(current.opening)
        pool = current.connector.pool
        if pool.max_size < pool_size:
            await pool.resize(pool.min_size, pool_size)
        yield job_app
    finally:
        current.users -= 1
        if current.users == 0:
            _current = None
            job_app.connector = job_app.job_manager.connector = _PLACEHOLDER
            with contextlib.suppress(Exception):
                await current.opening  # if the last user left while the pool was opening
                await current.connector.close_async()
