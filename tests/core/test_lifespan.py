"""The application's start-up when it owns its engine (a real server, not the tests' app,
which is handed an engine): what start-up made is frozen out of the garbage collector, so
that full collections under load do not walk it, and full collections are rarer
(``app.main``)."""

from __future__ import annotations

import gc

import httpx

from app.config import Settings
from app.main import FULL_COLLECTION_THRESHOLD, create_app


async def test_a_server_freezes_what_start_up_made(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"worker_in_process": False}))
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    try:
        async with app.router.lifespan_context(app):
            frozen = gc.get_freeze_count()
            # Full collections are ten times rarer than Python's default; the young ones as
            # they were.
            assert gc.get_threshold() == (*thresholds[:2], FULL_COLLECTION_THRESHOLD)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as client:
                assert (await client.get("/ready")).status_code == 200
        # The modules, models and routes at least: tens of thousands of objects.
        assert frozen > 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
