"""The maintenance tasks: idempotency-key purge, and the periodic schedule."""

from __future__ import annotations

from datetime import datetime, timedelta

import procrastinate
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.idempotency import IdempotencyRecord
from app.core.time import utc_now
from app.db.session import SessionMaker, session_scope
from app.worker.app import TASK_MODULES, job_app
from app.worker.resources import use_sessionmaker
from app.worker.runner import run_worker
from app.worker.tasks import (
    MAINTENANCE_QUEUE,
    purge_idempotency_keys,
    purge_idempotency_records,
)


async def _store(sessionmaker: SessionMaker, **ages: timedelta) -> datetime:
    now = utc_now()
    async with session_scope(sessionmaker) as session:
        for key, age in ages.items():
            session.add(
                IdempotencyRecord(
                    caller="c" * 64,
                    key=key,
                    request_hash="h" * 64,
                    response_status=201,
                    response_headers={},
                    response_body=b"{}",
                    created_at=now - age,
                )
            )
    return now


async def _keys(sessionmaker: SessionMaker) -> set[str]:
    async with sessionmaker() as session:
        return set((await session.scalars(select(IdempotencyRecord.key))).all())


class TestPurgeIdempotencyKeys:
    async def test_deletes_only_records_older_than_24_hours(
        self, engine: AsyncEngine, sessionmaker: SessionMaker
    ) -> None:
        await _store(
            sessionmaker,
            fresh=timedelta(minutes=5),
            almost=timedelta(hours=23, minutes=59),
            old=timedelta(hours=24, minutes=1),
            ancient=timedelta(days=30),
        )

        with use_sessionmaker(sessionmaker):
            assert await purge_idempotency_keys(timestamp=0) == 2
            assert await purge_idempotency_keys(timestamp=0) == 0  # idempotent

        assert await _keys(sessionmaker) == {"fresh", "almost"}

    async def test_works_through_a_backlog_in_batches(
        self, engine: AsyncEngine, sessionmaker: SessionMaker
    ) -> None:
        now = await _store(
            sessionmaker,
            **{f"old-{i}": timedelta(days=2, minutes=i) for i in range(7)},
            new=timedelta(hours=1),
        )

        with use_sessionmaker(sessionmaker):
            deleted = await purge_idempotency_records(
                before=now - timedelta(hours=24), batch_size=3
            )

        assert deleted == 7
        assert await _keys(sessionmaker) == {"new"}

    async def test_runs_as_a_job(
        self,
        jobs: procrastinate.App,
        database_url: str,
        engine: AsyncEngine,
        sessionmaker: SessionMaker,
    ) -> None:
        await _store(sessionmaker, old=timedelta(days=2), new=timedelta(hours=2))
        job_id = await purge_idempotency_keys.defer_async()

        await run_worker(
            database_url,
            sessionmaker=sessionmaker,
            queues=[MAINTENANCE_QUEUE],
            wait=False,
            install_signal_handlers=False,
        )

        assert await jobs.job_manager.get_job_status_async(job_id) == (
            procrastinate.jobs.Status.SUCCEEDED
        )
        assert await _keys(sessionmaker) == {"new"}


def test_periodic_schedule() -> None:
    job_app.perform_import_paths()  # type: ignore[no-untyped-call]
    schedule = {
        task.task.name: task.cron for task in job_app.periodic_registry.periodic_tasks.values()
    }
    assert schedule == {
        "core.purge_idempotency_keys": "0 * * * *",
        "worker.retry_stalled_jobs": "* * * * *",
        "worker.prune_finished_jobs": "30 3 * * *",
        "auction.close_due": "* * * * *",
        "auction.create_series_auctions": "*/15 * * * *",
        "market.expire_orders": "* * * * *",
        "market.run_calls": "* * * * *",
    }
    assert "app.worker.tasks" in TASK_MODULES
