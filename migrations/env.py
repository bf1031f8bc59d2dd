"""Alembic environment (async). The URL is Tanso's database: settings, or the embedded server."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import app.db.registry  # noqa: F401  (loads every model)
from app.db.base import Base
from app.db.url import async_url
from app.worker.schema import include_name

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from app.db.runtime import resolve_database_url

        url = resolve_database_url()
    return str(url)


def run_migrations_offline() -> None:
    context.configure(
        url=str(async_url(_url())),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=include_name,  # procrastinate's tables are not in our models
    )
    with context.begin_transaction():
        # Several processes may start at once (containers, uvicorn workers): one migrates,
        # the others wait here and then find the schema at head.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('tanso.migrations', 0))")
        )
        context.run_migrations()


async def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_async_engine(async_url(_url()))
    async with engine.connect() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
