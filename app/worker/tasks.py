"""Maintenance tasks of the job runner itself and of ``app.core``.

- ``core.purge_idempotency_keys`` (hourly): delete stored ``Idempotency-Key`` responses older
  than 24 hours.
- ``worker.retry_stalled_jobs`` (every minute): put back in the queue the jobs that a worker
  was running when it died (killed, crashed, machine lost), so they run after a restart.
- ``worker.prune_finished_jobs`` (daily): delete finished jobs (and their events) after a
  week, failed ones after 30 days.

All three are idempotent: running one twice, or two copies at once, leaves the same result.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from procrastinate.exceptions import ConnectorException
from sqlalchemy import CursorResult, delete, select, tuple_

from app.core.idempotency import IdempotencyRecord
from app.core.time import utc_now
from app.worker.app import job_app
from app.worker.resources import job_session

log = structlog.get_logger()

IDEMPOTENCY_RETENTION = timedelta(hours=24)
PURGE_BATCH_SIZE = 5_000
# A worker sends a heartbeat every 10 s; one silent for this long is taken for dead.
STALLED_AFTER_SECONDS = 60.0
FINISHED_JOB_RETENTION_HOURS = 7 * 24
FAILED_JOB_RETENTION_HOURS = 30 * 24
MAINTENANCE_QUEUE = "maintenance"


async def purge_idempotency_records(*, before: datetime, batch_size: int = PURGE_BATCH_SIZE) -> int:
    """Delete idempotency records created before ``before``; return how many went.

    Batches of ``batch_size``, one transaction each, so a large backlog never holds many row
    locks or one long transaction. Rows another transaction has locked are left for next time.
    """
    total = 0
    while True:
        async with job_session() as session:
            doomed = (
                select(IdempotencyRecord.caller, IdempotencyRecord.key)
                .where(IdempotencyRecord.created_at < before)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
            result = cast(
                CursorResult[Any],
                await session.execute(
                    delete(IdempotencyRecord).where(
                        tuple_(IdempotencyRecord.caller, IdempotencyRecord.key).in_(doomed)
                    )
                ),
            )
            deleted = result.rowcount
        total += deleted
        if deleted < batch_size:
            return total


@job_app.periodic(cron="0 * * * *", periodic_id="hourly")
@job_app.task(
    name="core.purge_idempotency_keys",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="core.purge_idempotency_keys",
    lock="core.purge_idempotency_keys",
)
async def purge_idempotency_keys(timestamp: int | None = None) -> int:
    """Hourly: forget ``Idempotency-Key`` responses older than 24 hours.

    ``timestamp`` is the scheduled tick (given by the periodic deferrer); the cut-off is taken
    from the clock when the job runs, so a late run deletes everything that is due by then.
    """
    before = utc_now() - IDEMPOTENCY_RETENTION
    log.info("idempotency.purge_started", before=before.isoformat(), tick=timestamp)
    started = time.monotonic()
    deleted = await purge_idempotency_records(before=before)
    log.info(
        "idempotency.purge_finished",
        deleted=deleted,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return deleted


@job_app.periodic(cron="* * * * *", periodic_id="every-minute")
@job_app.task(
    name="worker.retry_stalled_jobs",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="worker.retry_stalled_jobs",
    lock="worker.retry_stalled_jobs",
)
async def retry_stalled_jobs(timestamp: int | None = None) -> int:
    """Every minute: requeue the jobs of workers that stopped sending heartbeats.

    A worker stopped gracefully (SIGINT/SIGTERM) finishes its jobs first; one that was killed
    leaves them in ``doing``. This puts them back in ``todo``, so they run again: a task must
    be safe to run twice (the second run sees the first one's committed work).
    """
    stalled = list(
        await job_app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_SECONDS)
    )
    if not stalled:
        return 0
    log.info("worker.stalled_jobs_found", count=len(stalled), job_ids=[j.id for j in stalled])
    requeued = 0
    for job in stalled:
        try:
            await job_app.job_manager.retry_job(job)
        except ConnectorException:
            # It finished (or was requeued by another worker) since we looked: nothing to do.
            log.info("worker.stalled_job_skipped", job_id=job.id)
        else:
            requeued += 1
    log.info("worker.stalled_jobs_requeued", count=requeued)
    return requeued


@job_app.periodic(cron="30 3 * * *", periodic_id="daily")
@job_app.task(
    name="worker.prune_finished_jobs",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="worker.prune_finished_jobs",
    lock="worker.prune_finished_jobs",
)
async def prune_finished_jobs(timestamp: int | None = None) -> None:
    """Daily: delete jobs finished a week ago (failed ones after 30 days), with their events."""
    log.info("worker.prune_started", tick=timestamp)
    manager = job_app.job_manager
    await manager.delete_old_jobs(
        nb_hours=FINISHED_JOB_RETENTION_HOURS, include_cancelled=True, include_aborted=True
    )
    await manager.delete_old_jobs(nb_hours=FAILED_JOB_RETENTION_HOURS, include_failed=True)
    log.info("worker.prune_finished")
