"""A worker in a process of its own, for the tests: ``python -m tests.worker.worker_process``.

``URL NAME burst``: run the jobs of the test queue that are ready, then exit (``run_worker``).
``URL NAME signalled``: what ``tanso worker`` runs, until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from app.core.logging import configure_logging
from app.worker.runner import run_worker, run_worker_until_signalled
from tests.worker.sample_tasks import TEST_QUEUE


async def main(url: str, name: str, mode: str) -> int:
    if mode == "burst":
        await run_worker(url, name=name, concurrency=4, queues=[TEST_QUEUE], wait=False)
        return 0
    structlog.get_logger().info("test_worker.ready")
    ok = await run_worker_until_signalled(url, concurrency=2, queues=[TEST_QUEUE])
    return 0 if ok else 1


if __name__ == "__main__":
    configure_logging(json=True, level="INFO")
    url, name, mode = sys.argv[1:4]
    sys.exit(asyncio.run(main(url, name, mode)))
