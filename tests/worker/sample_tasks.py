"""Tasks used by the worker tests (imported by the tests and by the worker processes they start).

``tests.record_run`` counts its executions per key in ``worker_test_runs`` (created by the
``runs_table`` fixture): a key run twice shows ``runs = 2`` rather than disappearing.
"""

from __future__ import annotations

import asyncio
import os

from procrastinate.job_context import JobContext
from sqlalchemy import text

from app.worker.app import job_app
from app.worker.resources import job_session

TEST_QUEUE = "tests"

CREATE_RUNS_TABLE = """
CREATE TABLE worker_test_runs (
    job_key text PRIMARY KEY,
    runs integer NOT NULL DEFAULT 1,
    worker text,
    pid integer NOT NULL
)
"""


@job_app.task(name="tests.record_run", queue=TEST_QUEUE, pass_context=True)
async def record_run(
    context: JobContext, key: str, delay: float = 0.0, wait_for_workers: int = 0
) -> None:
    """Record one execution of ``key``; first wait until ``wait_for_workers`` workers are up."""
    if wait_for_workers:
        # Makes sure that several workers really are taking jobs at the same time.
        for _ in range(400):
            async with job_session() as session:
                workers = await session.scalar(text("SELECT count(*) FROM procrastinate_workers"))
            if workers is not None and workers >= wait_for_workers:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError(f"{wait_for_workers} workers never ran at the same time")
    if delay:
        await asyncio.sleep(delay)
    async with job_session() as session:
        await session.execute(
            text(
                "INSERT INTO worker_test_runs (job_key, worker, pid) VALUES (:key, :worker, :pid)"
                " ON CONFLICT (job_key) DO UPDATE SET runs = worker_test_runs.runs + 1"
            ),
            {"key": key, "worker": context.worker_name, "pid": os.getpid()},
        )
