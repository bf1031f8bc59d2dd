"""Whether a product's orders collect for a call or match on arrival, now.

- ``continuous``: always match.
- ``call``: always collect; they trade at the call times (``app.market.calls``).
- ``call_then_continuous``: each day (Asia/Tokyo) orders collect until the day's opening call
  (the product's one call time) has run; the opening call uncrosses the book and continuous
  trading runs until midnight, when collecting starts again for the next day's opening. The
  opening has run when its ``market_call_runs`` row exists, so the phase switches in the
  opening call's own transaction, under the product lock (a product created after the day's
  opening time opens at the next one).

Kept apart from ``app.market.service`` and ``app.market.calls`` so that both can ask.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.time import TOKYO
from app.market.models import MarketCallRun, Product, TradingMode


def calls_on(product: Product, day: date) -> list[datetime]:
    """The product's call times on one Tokyo date, as UTC datetimes."""
    return [
        datetime.combine(day, time.fromisoformat(t), TOKYO).astimezone(UTC)
        for t in product.call_times
    ]


async def collects_orders(session: AsyncSession, product: Product, now: datetime) -> bool:
    """True if an order arriving ``now`` rests without matching until a call."""
    if product.trading_mode == TradingMode.continuous:
        return False
    if product.trading_mode == TradingMode.call:
        return True
    [opening] = calls_on(product, now.astimezone(TOKYO).date())
    opened = await session.scalar(
        select(MarketCallRun.id).where(
            MarketCallRun.product_id == product.id, MarketCallRun.scheduled_at == opening
        )
    )
    return opened is None
