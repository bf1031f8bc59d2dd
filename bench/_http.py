"""Benchmarks over HTTP: Tanso under uvicorn in its own processes, and a load of clients.

``served(url)`` runs ``uvicorn app.main:app_factory`` (2 workers unless told otherwise) against
the given database in subprocesses and waits for ``/ready``. ``http_phase`` runs N concurrent
keep-alive clients for a fixed time through ``run_phase`` and counts the 2xx answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

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
    pid: int  # uvicorn's supervisor: its workers are its children (``bench._common.CpuMeter``)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}


@contextmanager
def served(
    database_url: str,
    *,
    workers: int = 2,
    debug: Sequence[str] = (),
    log: IO[bytes] | None = None,
) -> Iterator[Served]:
    """Tanso under uvicorn on a free port until the block ends. ``debug``: loggers at DEBUG
    (the rest at WARNING); ``log``: where the server's log goes, as JSON lines (else to the
    terminal)."""
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="tanso-bench-data-")
    env = {
        **os.environ,
        "TANSO_DATABASE__URL": database_url,
        "TANSO_ADMIN_KEY": ADMIN_KEY,
        "TANSO_DATA_DIR": data_dir,
        "TANSO_LOG_LEVEL": "WARNING",
        "TANSO_LOG_DEBUG": json.dumps(list(debug)),
        "TANSO_LOG_JSON": "false" if log is None else "true",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:app_factory", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, env=env, stderr=log)
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
        yield Served(base, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


class Connection:
    """A lean HTTP/1.1 keep-alive client for load generation: httpx costs ~10x more client
    CPU per request, so on two shared cores it, not the server, would set the pace."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        host, port = base_url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


Request = Callable[[Connection, int, int], Awaitable[tuple[int, bytes]]]


async def http_phase(
    name: str, base_url: str, clients: int, seconds: float, request: Request
) -> tuple[PhaseResult, dict[int, int]]:
    """``clients`` keep-alive connections, each sending ``request(connection, worker, i)`` in
    a loop; a call counts when it answers 2xx. Returns the phase and a count per status."""
    statuses: dict[int, int] = {}
    counters = [0] * clients
    connections = [await Connection.open(base_url) for _ in range(clients)]
    try:

        async def operation(worker: int) -> int:
            counters[worker] += 1
            status, body = await request(connections[worker], worker, counters[worker])
            statuses[status] = statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                raise BenchFailure(f"HTTP {status}: {body[:200]!r}")
            return 1

        result = await run_phase(name, clients, seconds, operation)
    finally:
        for connection in connections:
            connection.close()
    return result, statuses


def check(response: httpx.Response, status: int = 201) -> Any:
    if response.status_code != status:
        raise BenchFailure(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:300]}"
        )
    return response.json()


async def registry_headers(c: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    """A platform organisation with a ``registry`` key (to issue the credits a run needs):
    its request headers."""
    registry = check(
        await c.post(
            "/v1/organizations", json={"name": "Registry", "kind": "platform"}, headers=admin
        )
    )
    key = check(
        await c.post(
            f"/v1/organizations/{registry['id']}/api-keys",
            json={"name": "r", "scopes": ["registry", "read"]},
            headers=admin,
        )
    )["key"]
    return {"Authorization": f"Bearer {key}"}
