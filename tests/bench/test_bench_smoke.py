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


def test_ledger_benchmark_runs_and_its_checks_pass() -> None:
    result, stdout = run_bench("bench.ledger", "--quick", "--seconds", "0.3")

    assert result["name"] == "ledger"
    assert result["ok"] is True
    assert result["unit"] == "entries/s"
    assert result["value"] > 0
    assert result["baseline"] > 0
    assert result["ratio"] > 0
    for phase in ("single", "hot", "batched"):
        assert result[phase]["count"] > 0, phase
        assert result[phase]["ratio"] > 0, phase
    assert result["batched"]["unit"] == "transfers/s"
    # Durable, like production: the figures would mean nothing otherwise.
    assert result["server"]["fsync"] == "on"
    assert result["server"]["synchronous_commit"] == "on"
    assert "FAILED" not in stdout


def test_orders_benchmark_runs_and_its_checks_pass() -> None:
    result, stdout = run_bench("bench.orders", "--quick", "--seconds", "0.5", "--clients", "4")

    assert result["name"] == "orders"
    assert result["ok"] is True
    assert result["unit"] == "orders/s"
    assert result["value"] > 0
    assert result["baseline"] > 0
    assert result["ratio"] > 0
    assert result["trades"] > 0
    assert result["server"]["fsync"] == "on"
    assert "FAILED" not in stdout
