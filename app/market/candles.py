"""OHLCV candles, computed in SQL from ``market_trades`` (no stored aggregate).

Intervals are binned with ``date_bin`` (PostgreSQL 14+): ``1m``, ``5m``, ``15m`` and ``1h`` are
aligned on UTC (from 2000-01-01T00:00Z); ``1d`` is aligned on midnight in Asia/Tokyo (JST,
UTC+9, no daylight saving), so a daily candle starts at 15:00Z of the previous UTC day. Open and
close are the first and last trade by ``(executed_at, id)``; volume is Σ quantity (t-CO2e) and
turnover Σ price × quantity (JPY), all integers. Intervals without trades are omitted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.market.schemas import CandleInterval

STEPS: dict[CandleInterval, timedelta] = {
    CandleInterval.m1: timedelta(minutes=1),
    CandleInterval.m5: timedelta(minutes=5),
    CandleInterval.m15: timedelta(minutes=15),
    CandleInterval.h1: timedelta(hours=1),
    CandleInterval.d1: timedelta(days=1),
}
UTC_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
TOKYO_ORIGIN = datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=9)))  # JST has no DST

_CANDLES = """
WITH binned AS (
    SELECT date_bin(:step, executed_at, CAST(:origin AS timestamptz)) AS start,
           executed_at, id, price, quantity
      FROM market_trades
     WHERE product_id = :product_id
       AND (CAST(:since AS timestamptz) IS NULL
            OR executed_at >= date_bin(:step, CAST(:since AS timestamptz),
                                       CAST(:origin AS timestamptz)))
), candles AS (
    SELECT start,
           (array_agg(price ORDER BY executed_at, id))[1] AS open,
           max(price) AS high,
           min(price) AS low,
           (array_agg(price ORDER BY executed_at DESC, id DESC))[1] AS close,
           CAST(sum(quantity) AS bigint) AS volume,
           CAST(sum(price * quantity) AS bigint) AS turnover,
           count(*) AS trades
      FROM binned
     GROUP BY start
)
SELECT * FROM candles
 ORDER BY CASE WHEN CAST(:since AS timestamptz) IS NULL THEN start END DESC,
          start ASC
 LIMIT :limit
"""


@dataclass(frozen=True, slots=True)
class Candle:
    start: datetime
    open: int
    high: int
    low: int
    close: int
    volume: int
    turnover: int
    trades: int


async def candles(
    session: AsyncSession,
    product_id: uuid.UUID,
    interval: CandleInterval,
    *,
    since: datetime | None = None,
    limit: int = 100,
) -> list[Candle]:
    """Oldest first: with ``since``, the first ``limit`` candles from the one containing it;
    without, the latest ``limit`` candles."""
    origin = TOKYO_ORIGIN if interval is CandleInterval.d1 else UTC_ORIGIN
    rows = await session.execute(
        text(_CANDLES),
        {
            "step": STEPS[interval],
            "origin": origin,
            "product_id": product_id,
            "since": since,
            "limit": limit,
        },
    )
    result = [
        Candle(
            start=r.start,
            open=r.open,
            high=r.high,
            low=r.low,
            close=r.close,
            volume=r.volume,
            turnover=r.turnover,
            trades=r.trades,
        )
        for r in rows
    ]
    result.sort(key=lambda c: c.start)
    return result
