"""bench/auction_close still runs: at its tiny size, end to end, with its invariant checks
(nothing here looks at a timing)."""

from __future__ import annotations

from tests.bench.test_bench_smoke import run_bench


def test_auction_close_benchmark_runs_and_its_checks_pass() -> None:
    result, stdout = run_bench("bench.auction_close", "--quick")

    assert result["name"] == "auction_close"
    assert result["ok"] is True
    assert result["unit"] == "s"
    assert result["value"] > 0
    assert result["baseline"] > 0
    assert result["ratio"] > 0
    assert result["bids"] == 400
    assert result["server"] == {"fsync": "on", "synchronous_commit": "on"}
    assert "FAILED" not in stdout
    for check in ("holds_match_held", "serial_partition", "sellers' cash = revenue"):
        assert check in stdout
