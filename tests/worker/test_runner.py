"""The worker runs each job exactly once: alone, side by side, across processes and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import procrastinate
import pytest
from procrastinate.types import JSONValue
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.session import SessionMaker, session_scope
from app.worker import runner
from app.worker.defer import defer_in_session
from app.worker.resources import use_sessionmaker
from app.worker.runner import run_worker, run_worker_in_process
from app.worker.tasks import retry_stalled_jobs
from tests.worker.sample_tasks import TEST_QUEUE, record_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("runs_table")
# Each job first waits until two workers are up, so both really take jobs at the same time.
FIFTY_JOBS: list[dict[str, JSONValue]] = [
    {"key": f"job-{i}", "delay": 0.01, "wait_for_workers": 2} for i in range(50)
]


async def _runs(engine: AsyncEngine) -> dict[str, tuple[int, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT job_key, runs, worker FROM worker_test_runs"))
        return {key: (runs, worker) for key, runs, worker in rows}


async def _statuses(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT status::text, count(*) FROM procrastinate_jobs"
                " WHERE task_name = 'tests.record_run' GROUP BY status"
            )
        )
        return {row[0]: row[1] for row in rows}


async def _burst(url: str, sessionmaker: SessionMaker, name: str = "tanso") -> None:
    await run_worker(
        url,
        sessionmaker=sessionmaker,
        name=name,
        concurrency=4,
        queues=[TEST_QUEUE],
        wait=False,
        install_signal_handlers=False,
    )


async def test_a_deferred_job_runs_once(
    jobs: procrastinate.App, database_url: str, sessionmaker: SessionMaker, engine: AsyncEngine
) -> None:
    job_id = await record_run.defer_async(key="one")

    await _burst(database_url, sessionmaker)
    await _burst(database_url, sessionmaker)  # a second pass finds nothing to do

    assert await _runs(engine) == {"one": (1, "tanso")}
    status = await jobs.job_manager.get_job_status_async(job_id)
    assert status == procrastinate.jobs.Status.SUCCEEDED


@pytest.mark.concurrency
async def test_two_workers_run_each_of_50_jobs_once(
    jobs: procrastinate.App, database_url: str, sessionmaker: SessionMaker, engine: AsyncEngine
) -> None:
    await record_run.batch_defer_async(*FIFTY_JOBS)

    await asyncio.gather(
        _burst(database_url, sessionmaker, name="a"), _burst(database_url, sessionmaker, name="b")
    )

    runs = await _runs(engine)
    assert sorted(runs) == sorted(f"job-{i}" for i in range(50))
    assert {count for count, _ in runs.values()} == {1}
    assert {worker for _, worker in runs.values()} == {"a", "b"}
    assert await _statuses(engine) == {"succeeded": 50}


@pytest.mark.concurrency
async def test_two_worker_processes_run_each_of_50_jobs_once(
    jobs: procrastinate.App, database_url: str, engine: AsyncEngine
) -> None:
    await record_run.batch_defer_async(*FIFTY_JOBS)

    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.worker.worker_process", database_url, name, "burst",
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for name in ("p1", "p2")
    ]  # fmt: skip
    results = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=60
    )
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr.decode()[-3000:]

    runs = await _runs(engine)
    assert len(runs) == 50
    assert {count for count, _ in runs.values()} == {1}
    assert {worker for _, worker in runs.values()} == {"p1", "p2"}
    assert await _statuses(engine) == {"succeeded": 50}


async def test_sigterm_lets_the_running_job_finish(
    jobs: procrastinate.App, database_url: str, engine: AsyncEngine
) -> None:
    job_id = await record_run.defer_async(key="slow", delay=0.5)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.worker.worker_process", database_url, "w", "signalled",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(400):  # until the worker has taken the job
            status = await jobs.job_manager.get_job_status_async(job_id)
            if status == procrastinate.jobs.Status.DOING:
                break
            await asyncio.sleep(0.025)
        else:
            pytest.fail("the worker never took the job")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert await _runs(engine) == {"slow": (1, "tanso")}
    assert await jobs.job_manager.get_job_status_async(job_id) == (
        procrastinate.jobs.Status.SUCCEEDED
    )


async def test_jobs_of_a_dead_worker_run_again_after_restart(
    jobs: procrastinate.App, database_url: str, sessionmaker: SessionMaker, engine: AsyncEngine
) -> None:
    """A worker killed mid-job leaves it in ``doing``; ``retry_stalled_jobs`` requeues it."""
    job_id = await record_run.defer_async(key="orphan")
    manager = jobs.job_manager
    dead_worker = await manager.register_worker()
    job = await manager.fetch_job(queues=[TEST_QUEUE], worker_id=dead_worker)
    assert job is not None
    assert job.id == job_id
    async with engine.begin() as conn:  # ...and then it stopped sending heartbeats
        await conn.execute(
            text(
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '5 minutes'"
                " WHERE id = :id"
            ),
            {"id": dead_worker},
        )

    with use_sessionmaker(sessionmaker):
        assert await retry_stalled_jobs(timestamp=0) == 1
        assert await retry_stalled_jobs(timestamp=0) == 0  # idempotent
    await _burst(database_url, sessionmaker)

    assert await _runs(engine) == {"orphan": (1, "tanso")}
    assert await manager.get_job_status_async(job_id) == procrastinate.jobs.Status.SUCCEEDED


async def test_a_live_worker_keeps_its_jobs(
    jobs: procrastinate.App, sessionmaker: SessionMaker
) -> None:
    await record_run.defer_async(key="busy")
    live_worker = await jobs.job_manager.register_worker()
    assert await jobs.job_manager.fetch_job(queues=[TEST_QUEUE], worker_id=live_worker)

    with use_sessionmaker(sessionmaker):
        assert await retry_stalled_jobs(timestamp=0) == 0


class TestDeferInSession:
    async def test_the_job_exists_only_if_the_transaction_commits(
        self, database_url: str, sessionmaker: SessionMaker, engine: AsyncEngine
    ) -> None:
        async with sessionmaker() as session:
            await defer_in_session(session, record_run, key="rolled-back")
            await session.rollback()
        async with session_scope(sessionmaker) as session:
            job_id = await defer_in_session(session, record_run, key="committed")
        assert job_id is not None

        await _burst(database_url, sessionmaker)

        assert await _runs(engine) == {"committed": (1, "tanso")}

    async def test_a_queueing_lock_keeps_one_waiting_job(
        self, sessionmaker: SessionMaker, engine: AsyncEngine
    ) -> None:
        async with session_scope(sessionmaker) as session:
            first = await defer_in_session(session, record_run, key="x", queueing_lock="only-one")
            second = await defer_in_session(session, record_run, key="y", queueing_lock="only-one")
            # The transaction is still usable after the refused job.
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        assert first is not None
        assert second is None
        assert await _statuses(engine) == {"todo": 1}

    async def test_schedule_at_and_task_defaults(
        self, jobs: procrastinate.App, sessionmaker: SessionMaker
    ) -> None:
        from datetime import timedelta

        from app.core.time import utc_now

        later = utc_now() + timedelta(hours=1)
        async with session_scope(sessionmaker) as session:
            job_id = await defer_in_session(session, record_run, key="later", schedule_at=later)
        assert job_id is not None
        (job,) = await jobs.job_manager.list_jobs_async(id=job_id)
        assert job.queue == TEST_QUEUE
        assert job.task_name == "tests.record_run"
        assert job.task_kwargs == {"key": "later"}
        assert job.scheduled_at == later


class TestRunWorkerInProcess:
    async def test_runs_jobs_until_cancelled_and_finishes_the_running_one(
        self,
        jobs: procrastinate.App,
        database_url: str,
        sessionmaker: SessionMaker,
        engine: AsyncEngine,
    ) -> None:
        worker = asyncio.create_task(
            run_worker_in_process(database_url, sessionmaker=sessionmaker, queues=[TEST_QUEUE])
        )
        try:
            # Deferred while the worker waits: LISTEN/NOTIFY wakes it.
            quick = await record_run.defer_async(key="quick")
            slow = await record_run.defer_async(key="slow", delay=0.5)
            for _ in range(400):
                if await jobs.job_manager.get_job_status_async(slow) == (
                    procrastinate.jobs.Status.DOING
                ):
                    break
                await asyncio.sleep(0.025)
            else:
                pytest.fail("the in-process worker never took the job")
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

        assert await _runs(engine) == {
            "quick": (1, "tanso-in-process"),
            "slow": (1, "tanso-in-process"),
        }
        for job_id in (quick, slow):
            status = await jobs.job_manager.get_job_status_async(job_id)
            assert status == procrastinate.jobs.Status.SUCCEEDED

    async def test_a_failing_worker_is_started_again(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        attempts: list[str] = []

        async def failing_run_worker(url: str, **kwargs: object) -> None:
            attempts.append(url)
            raise OSError("database unreachable")

        monkeypatch.setattr(runner, "run_worker", failing_run_worker)
        monkeypatch.setattr(runner, "_RESTART_DELAYS", (0.01,))
        worker = asyncio.create_task(runner.run_worker_in_process(database_url))
        for _ in range(200):
            if len(attempts) >= 3:
                break
            await asyncio.sleep(0.01)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        assert len(attempts) >= 3
