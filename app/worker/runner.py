"""Running a worker: alone (``tanso worker``) or inside the API process (``tanso serve``).

Guarantees, all from PostgreSQL (no other broker):

- **One worker per job at a time.** A worker takes a job with ``SELECT … FOR UPDATE SKIP
  LOCKED`` and marks it ``doing`` in the same statement, so any number of workers, in any
  number of processes or machines, never take the same job twice.
- **Survives restarts.** Jobs are rows: queued jobs wait for the next worker. A worker asked
  to stop (SIGINT/SIGTERM, or cancellation in-process) takes no new job and waits for those it
  is running. A worker that dies mid-job stops sending heartbeats; ``worker.retry_stalled_jobs``
  requeues its jobs a minute later.
- Hence **at least once** in the face of crashes, and exactly once in effect when a task is
  idempotent (conventions, section I): check-then-act inside the task's own transaction.
- Periodic tasks are deferred by every worker and de-duplicated by the database: one job per
  tick, whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from typing import Any

import structlog
from procrastinate.app import WorkerOptions
from procrastinate.job_context import JobContext
from procrastinate.middleware import AsyncCallNext
from procrastinate.worker import Worker
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.session import SessionMaker, create_sessionmaker
from app.db.url import async_url
from app.worker.app import open_job_app
from app.worker.resources import use_sessionmaker

log = structlog.get_logger()

DEFAULT_CONCURRENCY = 4
IN_PROCESS_CONCURRENCY = 2
_RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


async def _bind_job_context(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
    """Every log line a job writes (and procrastinate's about it) carries the job's identity."""
    job = context.job
    with structlog.contextvars.bound_contextvars(
        job_id=job.id, task=job.task_name, queue=job.queue, attempt=job.attempts + 1
    ):
        return await call_next()


async def run_worker(
    url: str,
    *,
    sessionmaker: SessionMaker | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    queues: Sequence[str] | None = None,
    wait: bool = True,
    install_signal_handlers: bool = True,
    shutdown_timeout: float | None = None,
    name: str = "tanso",
    listen_notify: bool = True,
) -> None:
    """Run jobs from ``queues`` (default: all) on the database at ``url``.

    ``wait=False`` returns once no job is ready ("burst"); otherwise it runs until stopped:
    by SIGINT/SIGTERM when ``install_signal_handlers`` (first signal: finish the running jobs,
    then return; a second one kills the process), or by cancelling the task that awaits it.
    ``shutdown_timeout`` bounds the wait for running jobs on stop (``None``: no bound; jobs cut
    short are aborted and retried only if their task has a retry strategy).

    Tasks reach the database through ``job_session()``, on ``sessionmaker`` or, by default, an
    engine made here with ``concurrency`` connections.
    """
    engine = None
    if sessionmaker is None:
        engine = create_async_engine(
            async_url(url),
            pool_size=concurrency,
            max_overflow=concurrency,
            connect_args={"server_settings": {"application_name": "tanso-worker"}},
        )
        sessionmaker = create_sessionmaker(engine)
    options: WorkerOptions = {
        "name": name,
        "concurrency": concurrency,
        "wait": wait,
        "install_signal_handlers": install_signal_handlers,
        "shutdown_graceful_timeout": shutdown_timeout,  # type: ignore[typeddict-item]
        "listen_notify": listen_notify,
        "worker_middleware": [_bind_job_context],
    }
    if queues:
        options["queues"] = list(queues)
    log.info("worker.starting", name=name, concurrency=concurrency, queues=list(queues or []))
    try:
        with use_sessionmaker(sessionmaker):
            # The listener holds one connection; the others defer, fetch and finish jobs.
            async with open_job_app(url, pool_size=concurrency + 3) as app:
                await app.run_worker_async(**options)
    finally:
        if engine is not None:
            await engine.dispose()
        log.info("worker.stopped", name=name)


async def run_worker_in_process(
    url: str,
    *,
    sessionmaker: SessionMaker | None = None,
    concurrency: int = IN_PROCESS_CONCURRENCY,
    queues: Sequence[str] | None = None,
) -> None:
    """Run a worker in this process's event loop until the task awaiting this is cancelled.

    For ``tanso serve`` (the API's lifespan)::

        worker = asyncio.create_task(run_worker_in_process(url, sessionmaker=sm))
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker          # returns once the running jobs have finished

    Signals are left to the host (uvicorn). If the worker fails or stops by itself (lost
    database connection), it is started again after a growing delay, so the API process
    never silently ends up without one.
    """
    failures = 0
    while True:
        try:
            await run_worker(
                url,
                sessionmaker=sessionmaker,
                concurrency=concurrency,
                queues=queues,
                install_signal_handlers=False,
                name="tanso-in-process",
            )
            log.warning("worker.stopped_unexpectedly")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker.crashed")
        delay = _RESTART_DELAYS[min(failures, len(_RESTART_DELAYS) - 1)]
        failures += 1
        log.info("worker.restarting", in_seconds=delay)
        await asyncio.sleep(delay)


async def run_worker_until_signalled(
    url: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    queues: Sequence[str] | None = None,
    burst: bool = False,
    shutdown_timeout: float | None = None,
) -> bool:
    """``tanso worker``: run until SIGINT/SIGTERM (or, with ``burst``, until no job is ready).

    The first signal stops taking jobs and waits for the running ones; a second one exits at
    once (the jobs it interrupts are requeued by ``worker.retry_stalled_jobs``). Returns False
    if the worker stopped by itself (e.g. lost its database), so the command can exit non-zero
    and a supervisor restart it.
    """
    loop = asyncio.get_running_loop()
    worker = asyncio.create_task(
        run_worker(
            url,
            concurrency=concurrency,
            queues=queues,
            wait=not burst,
            install_signal_handlers=False,
            shutdown_timeout=shutdown_timeout,
        )
    )
    stopping = False

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if stopping:
            log.warning("worker.killed", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        stopping = True
        log.info("worker.stop_requested", signal=signal.Signals(signum).name)
        worker.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return stopping or burst
