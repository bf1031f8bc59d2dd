"""The ASGI application: ``create_app()``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.accounts import service as accounts_service
from app.accounts.keycache import KEYS
from app.api import include_v1
from app.config import Settings, get_settings
from app.core.errors import install_error_handlers, problem_response
from app.core.idempotency import IdempotencyMiddleware
from app.core.logging import configure_logging_from
from app.core.middleware import RequestIdMiddleware
from app.db.runtime import current_revisions, head_revisions, resolve_database_url
from app.db.session import create_engine, create_sessionmaker
from app.db.url import libpq_url

log = structlog.get_logger()

# Young collections of the middle generation between full collections (Python's default 10).
FULL_COLLECTION_THRESHOLD = 100

DESCRIPTION = """
Tanso runs sealed-bid government tender auctions and a bilateral order book for J-Credits,
settles every trade delivery-versus-payment on a double-entry ledger of yen and credits, and
turns retired credits into publicly verifiable carbon-offset claims.

**Auth**: `Authorization: Bearer <api key>`. **Errors**: `application/problem+json` with a
stable `code`. **Idempotency**: every `POST` accepts `Idempotency-Key`. **Lists**: `?limit=`
and `?cursor=`, answered with `{"data": [...], "next_cursor": ...}`. Amounts are integers:
yen, whole t-CO2e credits, grams.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if getattr(app.state, "engine", None) is None:
            url = resolve_database_url(settings)
            app.state.engine = create_engine(settings, url)
            app.state.sessionmaker = create_sessionmaker(app.state.engine)
            owns_engine = True
        else:  # tests hand in their own engine
            owns_engine = False
        app.state.heads = head_revisions()
        worker: asyncio.Task[None] | None = None
        if owns_engine and settings.worker_in_process:
            from app.worker.runner import run_worker_in_process

            worker = asyncio.create_task(
                run_worker_in_process(
                    settings.database.url or "", sessionmaker=app.state.sessionmaker
                )
            )
        # Authenticated keys are remembered while this process hears of every change to keys
        # and organisations (``app.accounts.keycache``); tests handing in their own engine
        # read the database on every request.
        keys: asyncio.Task[None] | None = None
        if owns_engine:
            dsn = libpq_url(app.state.engine.url.render_as_string(hide_password=False))
            keys = asyncio.create_task(KEYS.listen(dsn))
        log.info("app.started", environment=settings.environment, worker=worker is not None)
        if owns_engine:
            # What startup made (modules, models, routes, the schema: about 200,000 objects)
            # lives as long as the process: frozen out of the garbage collector's view, a
            # full collection no longer walks it. Without this, each full collection paused
            # the process for about 150 ms under load, whatever it was doing (holding a
            # product's lock included).
            gc.collect()
            gc.freeze()
            # And full collections ten times rarer. Under load, what is alive at a young
            # collection (requests and groups in flight) is promoted, and reaches the oldest
            # generation before it dies; that generation then filled up enough for a full
            # collection about every second, each a pause of 5-35 ms, under a product's lock
            # as often as not (per worker in 20 s of ``bench/orders``: 10-21 collections,
            # 87-293 ms). With this: 1-2 collections in 20 s, each no longer (10-27 ms).
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)
        yield {}
        if keys is not None:
            keys.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keys
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if owns_engine:
            await app.state.engine.dispose()

    app = FastAPI(
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
        title="Tanso",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "organizations", "description": "Organisations, API keys, the caller."},
            {
                "name": "ledger",
                "description": "Cash and credit balances, accounts, postings, deposits.",
            },
            {"name": "health", "description": "Liveness and readiness."},
        ],
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(IdempotencyMiddleware, authenticate=accounts_service.authenticate)
    app.add_middleware(RequestIdMiddleware)
    include_v1(app)

    @app.get("/health", tags=["health"], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["health"],
        summary="Readiness: the database answers and its schema is at the migrations' head",
        responses={503: {"description": "Not ready"}},
    )
    async def ready(request: Request) -> JSONResponse:
        try:
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                current = await conn.run_sync(current_revisions)
        except Exception as exc:  # any failure to reach the database means "not ready"
            log.warning("health.db_unreachable", error=type(exc).__name__)
            return problem_response(
                request, 503, "database_unavailable", "The database does not answer."
            )
        if current != request.app.state.heads:
            return problem_response(
                request,
                503,
                "migrations_pending",
                "The database schema is not at the latest migration.",
                current=sorted(current),
                head=sorted(request.app.state.heads),
            )
        return JSONResponse({"status": "ready", "database": "ok", "migrations": sorted(current)})

    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory app.main:app_factory`` (each worker builds its own)."""
    settings = get_settings()
    configure_logging_from(settings)
    return create_app(settings)
