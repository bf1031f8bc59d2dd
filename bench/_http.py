"""Benchmarks over HTTP: Tanso under uvicorn in its own processes, and a load of clients.

``served(url)`` runs ``uvicorn app.main:app_factory`` (2 workers unless told otherwise) against
the given database in subprocesses and waits for ``/ready``. ``http_phase`` runs N concurrent
keep-alive clients for a fixed time through ``run_phase`` and counts the 2xx answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from bench._common import BenchFailure, PhaseResult, run_phase

ADMIN_KEY = "bench-admin-key-0123456789abcdefghij"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Served:
    base_url: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}


@contextmanager
def served(database_url: str, *, workers: int = 2) -> Iterator[Served]:
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="tanso-bench-data-")
    env = {
        **os.environ,
        "TANSO_DATABASE__URL": database_url,
        "TANSO_ADMIN_KEY": ADMIN_KEY,
        "TANSO_DATA_DIR": data_dir,
        "TANSO_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:app_factory", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchFailure("the server did not become ready")
            time.sleep(0.2)
        yield Served(base)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


Request = Callable[[httpx.AsyncClient, int, int], Awaitable[httpx.Response]]


async def http_phase(
    name: str, base_url: str, clients: int, seconds: float, request: Request
) -> tuple[PhaseResult, dict[int, int]]:
    """``clients`` keep-alive connections, each sending ``request(client, worker, i)`` in a
    loop; a call counts when it answers 2xx. Returns the phase and a count per status."""
    statuses: dict[int, int] = {}
    counters = [0] * clients
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def operation(worker: int) -> int:
            counters[worker] += 1
            response = await request(client, worker, counters[worker])
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if not 200 <= response.status_code < 300:
                raise BenchFailure(f"HTTP {response.status_code}: {response.text[:200]}")
            return 1

        result = await run_phase(name, clients, seconds, operation)
    return result, statuses


def check(response: httpx.Response, status: int = 201) -> Any:
    if response.status_code != status:
        raise BenchFailure(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:300]}"
        )
    return response.json()
