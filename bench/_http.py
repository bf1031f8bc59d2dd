"""Benchmarks over HTTP: Tanso under uvicorn in its own processes, and a load of clients.

``served(url)`` runs ``uvicorn app.main:app_factory`` (2 workers unless told otherwise) against
the given database in subprocesses and waits for ``/ready``. ``http_phase`` runs N concurrent
keep-alive clients for a fixed time through ``run_phase`` and counts the 2xx answers, with the
connections spread evenly over the workers (``open_connections``).
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
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpx
import psutil

from bench._common import BenchFailure, CpuMeter, PhaseResult, Server, run_phase

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

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def workers(self) -> list[int]:
        """The pids of uvicorn's workers: its children that listen on the port."""
        found = []
        for child in psutil.Process(self.pid).children():
            try:
                sockets = child.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in sockets):
                found.append(child.pid)
        return sorted(found)

    def worker_of(self, connection: Connection, workers: Sequence[int]) -> int | None:
        """The worker that accepted ``connection`` (``None`` while none has yet)."""
        _, port = connection.writer.get_extra_info("sockname")[:2]
        for pid in workers:
            try:
                sockets = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(c.raddr and c.raddr.port == port for c in sockets):
                return pid
        return None


def cpu_meter(server: Served, pg: Server) -> CpuMeter:
    """A meter of the CPU the served app's workers (each apart too), its PostgreSQL and this
    process's clients use (``bench._common.CpuMeter``)."""
    return CpuMeter({"server": server.pid, "postgres": pg.postmaster_pid()}, frozenset({"server"}))


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


# How often a connection is opened again before it is kept where it landed, and how long a
# worker may take to accept one.
BALANCE_ATTEMPTS = 50
ACCEPT_SECONDS = 5.0


async def open_connections(
    server: Served, clients: int, kind: Callable[[int], Hashable] = lambda i: 0
) -> list[Connection]:
    """``clients`` keep-alive connections to ``server``, spread evenly over its workers, and
    each ``kind`` of client (``kind(i)`` for the i-th) too.

    The workers share one listening socket, and the one that wakes first accepts every
    connection waiting (asyncio accepts a backlog at once): one worker often took all 32,
    and a phase then measured one core of two, ``/health`` at half its rate. So a connection
    that lands on a worker holding its share of that kind already is closed and opened again
    (up to ``BALANCE_ATTEMPTS`` times; then it stays where it landed)."""
    workers = server.workers()
    if len(workers) < 2:
        return [await Connection.open(server.base_url) for _ in range(clients)]
    wanted = Counter(kind(i) for i in range(clients))
    held: Counter[tuple[int, Hashable]] = Counter()
    connections: list[Connection] = []
    for i in range(clients):
        share = -(-wanted[kind(i)] // len(workers))  # rounded up
        for attempt in range(BALANCE_ATTEMPTS):
            connection = await Connection.open(server.base_url)
            owner = await _accepted_by(server, connection, workers)
            if held[owner, kind(i)] < share or attempt == BALANCE_ATTEMPTS - 1:
                break
            connection.close()
            await asyncio.sleep(0.005)  # let the other workers' loops come round
        held[owner, kind(i)] += 1
        connections.append(connection)
    return connections


async def _accepted_by(server: Served, connection: Connection, workers: Sequence[int]) -> int:
    deadline = time.monotonic() + ACCEPT_SECONDS
    while (owner := server.worker_of(connection, workers)) is None:
        if time.monotonic() > deadline:
            raise BenchFailure("no worker accepted a connection")
        await asyncio.sleep(0.001)
    return owner


async def http_phase(
    name: str,
    server: Served,
    clients: int,
    seconds: float,
    request: Request,
    kind: Callable[[int], Hashable] = lambda i: 0,
    meter: CpuMeter | None = None,
) -> tuple[PhaseResult, dict[int, int]]:
    """``clients`` keep-alive connections spread over the server's workers
    (``open_connections``, by ``kind``), each sending ``request(connection, worker, i)`` in
    a loop; a call counts when it answers 2xx. Returns the phase (with ``meter``, the CPU
    it used: ``run_phase``) and a count per status."""
    statuses: dict[int, int] = {}
    counters = [0] * clients
    connections = await open_connections(server, clients, kind)
    try:

        async def operation(worker: int) -> int:
            counters[worker] += 1
            status, body = await request(connections[worker], worker, counters[worker])
            statuses[status] = statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                raise BenchFailure(f"HTTP {status}: {body[:200]!r}")
            return 1

        result = await run_phase(name, clients, seconds, operation, meter)
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
