"""Enqueue a job inside the caller's SQLAlchemy transaction (the outbox, without an outbox).

``task.defer_async(...)`` writes the job on procrastinate's own connection: committed at once,
whatever becomes of the request's transaction. ``defer_in_session`` writes the same row through
procrastinate's own SQL function on *our* session instead, so the job exists if and only if the
business change that calls for it commits (conventions, section I: "enqueue only after
commit"), and workers are woken by the NOTIFY that PostgreSQL delivers at that commit::

    auction = await auction_service.open_auction(session, ...)
    await defer_in_session(session, close_auction, auction_id=str(auction.id),
                           schedule_at=auction.closes_at)

It needs no open ``job_app``: the API process can enqueue without a procrastinate pool.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from procrastinate import types
from procrastinate.tasks import Task
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

# procrastinate's versioned SQL API (``procrastinate_defer_jobs_v1``, as in its queries.sql).
_DEFER = text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW("
    ":queue, :task_name, :priority, :lock, :queueing_lock,"
    " CAST(:args AS jsonb), CAST(:scheduled_at AS timestamptz)"
    ")::procrastinate_job_to_defer_v1]))"
)
_QUEUEING_LOCK_INDEX = "procrastinate_jobs_queueing_lock_idx_v1"


async def defer_in_session(
    session: AsyncSession,
    task: Task[Any, Any, Any],
    *,
    schedule_at: datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    lock: str | None = None,
    queueing_lock: str | None = None,
    **task_kwargs: types.JSONValue,
) -> int | None:
    """Queue ``task(**task_kwargs)`` in ``session``'s transaction and return the job id.

    The task's defaults (queue, priority, lock, queueing lock) apply unless overridden. With a
    queueing lock, if a job holding it is already waiting, nothing is queued and ``None`` is
    returned (the transaction goes on, through a savepoint).
    """
    options: dict[str, Any] = {"schedule_at": schedule_at, "queue": queue, "priority": priority}
    if lock is not None:
        options["lock"] = lock
    if queueing_lock is not None:
        options["queueing_lock"] = queueing_lock
    job = task.configure(**{k: v for k, v in options.items() if v is not None}).make_new_job(
        **task_kwargs
    )
    params = {
        "queue": job.queue,
        "task_name": job.task_name,
        "priority": job.priority,
        "lock": job.lock,
        "queueing_lock": job.queueing_lock,
        "args": json.dumps(job.task_kwargs),
        "scheduled_at": job.scheduled_at,
    }
    if job.queueing_lock is None:
        job_id: int = (await session.execute(_DEFER, params)).scalar_one()
        return job_id
    try:
        async with session.begin_nested():
            job_id = (await session.execute(_DEFER, params)).scalar_one()
    except IntegrityError as exc:
        if _QUEUEING_LOCK_INDEX in str(exc.orig):
            return None
        raise
    return job_id
