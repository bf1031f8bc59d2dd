"""The benchmarks still run: each at a tiny size, end to end, with its invariant checks.

Nothing here looks at a timing (CI does not time anything; see the performance rules): only
that the command succeeds, its checks pass and its last line is the promised JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, f"{module} failed:\n{done.stdout}\n{done.stderr}"
    assert lines, f"{module} printed nothing:\n{done.stderr}"
    return json.loads(lines[-1]), done.stdout


def assert_ran(result: dict[str, Any], stdout: str, name: str, unit: str) -> None:
    """The output contract: its name and unit, its checks passed, a figure beside a baseline."""
    assert result["name"] == name
    assert result["ok"] is True
    assert result["unit"] == unit
    assert result["value"] > 0
    assert result["baseline"] > 0
    assert result["ratio"] > 0
    assert "FAILED" not in stdout


def assert_costed(result: dict[str, Any], stdout: str, unit: str) -> None:
    """What the measured phase cost the machine: the server's workers, PostgreSQL and the
    clients each something; the ceiling is the cores over the cost of one."""
    cpu = result["cpu"]
    for who in ("server", "postgres", "client"):
        assert cpu[unit]["by"][who]["ms_per_request"] > 0, who
    per_second = round(cpu["cores"] * 1e3 / cpu[unit]["ms_per_request"], 1)
    assert cpu["ceiling"][f"{unit}_per_s"] == per_second
    assert "cpu: /health" in stdout


def test_ledger_benchmark_runs_and_its_checks_pass() -> None:
    result, stdout = run_bench("bench.ledger", "--quick", "--seconds", "0.3")

    assert_ran(result, stdout, "ledger", "entries/s")
    for phase in ("single", "hot", "batched"):
        assert result[phase]["count"] > 0, phase
        assert result[phase]["ratio"] > 0, phase
    assert result["batched"]["unit"] == "transfers/s"
    # Durable, like production: the figures would mean nothing otherwise.
    assert result["server"]["fsync"] == "on"
    assert result["server"]["synchronous_commit"] == "on"


def test_orders_benchmark_runs_and_its_checks_pass() -> None:
    result, stdout = run_bench(
        "bench.orders", "--quick", "--seconds", "0.5", "--clients", "4", "--groups"
    )

    assert_ran(result, stdout, "orders", "orders/s")
    assert result["trades"] > 0
    assert result["server"]["fsync"] == "on"
    # --groups: the server's groups in the orders phase, read from its DEBUG log.
    assert result["groups"]["groups"] > 0
    assert result["groups"]["orders"] >= result["groups"]["groups"]
    assert "groups:" in stdout
    assert_costed(result, stdout, "orders")
    assert len(result["cpu"]["orders"]["by"]["server"]["each_busy_cores"]) == 2  # both workers


def test_claims_benchmark_runs_and_its_checks_pass() -> None:
    result, stdout = run_bench("bench.claims", "--quick", "--seconds", "0.5")

    assert_ran(result, stdout, "claims", "claims/s")
    assert_costed(result, stdout, "claims")


def test_orders_with_a_deep_spread_book_keep_their_checks() -> None:
    """``--depth`` rests orders beyond the run's prices, ``--spread`` prices the run's orders
    over several levels: the invariant checks (every acknowledged order stored, the book
    uncrossed, the holds) count both."""
    result, stdout = run_bench(
        "bench.orders",
        *("--quick", "--seconds", "0.5", "--clients", "4", "--groups"),
        *("--depth", "40", "--spread", "3"),
    )
    assert result["ok"] is True, stdout
    assert (result["depth"], result["spread"]) == (40, 3)
    assert result["trades"] > 0
    assert "FAILED" not in stdout


def test_the_group_summary_reads_the_orders_phase_groups_only() -> None:
    from datetime import UTC, datetime, timedelta

    from bench.orders import group_summary

    start = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    end = start + timedelta(seconds=1)

    def line(at: datetime, worker: int, orders: int, held: float) -> str:
        return json.dumps(
            {
                "event": "market.group_placed",
                "timestamp": at.isoformat().replace("+00:00", "Z"),
                "worker": worker,
                "orders": orders,
                "book": orders * 2,
                "lock_ms": 5.0,
                "held_ms": held,
                "commit_ms": 1.0,
            }
        )

    lines = [
        "not json",
        json.dumps({"event": "something.else", "timestamp": start.isoformat()}),
        line(start - timedelta(seconds=1), 1, 99, 99.0),  # before the phase: left out
        line(start, 1, 10, 13.0),
        line(start + timedelta(milliseconds=100), 2, 2, 5.8),
        line(start + timedelta(milliseconds=200), 1, 20, 22.0),
        line(end, 2, 99, 99.0),  # at the end: left out
    ]
    summary = group_summary(lines, start, end)

    assert summary["groups"] == 3
    assert summary["orders"] == 32
    assert summary["workers"] == [
        {"groups": 2, "orders": 30, "mean_size": 15.0},
        {"groups": 1, "orders": 2, "mean_size": 2.0},
    ]
    assert summary["lock_held_share"] == 0.041  # 40.8 ms of 1 s
    assert summary["held_ms_per_order"] == 1.275
    assert summary["fit_ms"] == {"F": 4.0, "c": 0.9}  # held = 4 + 0.9·n, exactly here
    assert summary["book"] == {"mean": 21.3, "max": 40}  # 20, 4 and 40 resting orders read
    assert group_summary(lines[:3], start, end) == {"groups": 0}


def test_cpu_used_is_per_request_and_per_core_by_name_and_child() -> None:
    from bench._common import CpuReading, cpu_used

    before = CpuReading(10.0, {"server": 1.0, "client": 0.5}, {"server": {7: 0.4, 8: 0.6}})
    after = CpuReading(
        12.0,
        {"server": 3.0, "client": 0.7},
        {"server": {7: 2.0, 8: 0.6, 9: 5.0}},  # 8 idle, 9 new: neither is shown
    )

    used = cpu_used(before, after, requests=400)

    assert used["busy_cores"] == 1.1  # 2.2 s in 2 s
    assert used["ms_per_request"] == 5.5  # 2.2 s over 400
    assert used["by"]["server"] == {
        "busy_cores": 1.0,
        "ms_per_request": 5.0,
        "each_busy_cores": [0.8],
    }
    assert used["by"]["client"] == {"busy_cores": 0.1, "ms_per_request": 0.5}


def test_connections_are_spread_evenly_over_the_workers_and_kinds() -> None:
    """Left to the kernel, one worker often accepted every connection."""
    import asyncio
    from collections import Counter

    from bench._common import throwaway_server
    from bench._http import open_connections, served

    async def spread(server: Any) -> Counter[tuple[int | None, int]]:
        workers = server.workers()
        assert len(workers) == 2
        connections = await open_connections(server, 12, kind=lambda i: i % 2)
        try:
            return Counter((server.worker_of(c, workers), i % 2) for i, c in enumerate(connections))
        finally:
            for connection in connections:
                connection.close()

    with throwaway_server(quick=True) as pg, served(pg.migrate()) as server:
        counts = asyncio.run(spread(server))

    assert sorted(counts.values()) == [3, 3, 3, 3]  # each worker: 3 of each kind
    assert None not in {worker for worker, _ in counts}


def test_the_throwaway_server_has_wal_segments_ready_to_recycle() -> None:
    """``ready_wal`` leaves the segments it was asked for ahead of the one being written, as
    a server that has run a while keeps them, so no phase waits while one is created."""
    from bench._common import Server, ready_wal, throwaway_server

    def ahead(pg: Server) -> int:
        return int(
            pg.psql(
                "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'"
                " AND name > pg_walfile_name(pg_current_wal_lsn())"
            )
        )

    with throwaway_server(quick=True) as pg:
        assert ahead(pg) < 4
        ready_wal(pg, 64)
        assert ahead(pg) >= 4  # 64 MB: four segments of 16
        assert pg.settings()["min_wal_size"] == "64MB"
