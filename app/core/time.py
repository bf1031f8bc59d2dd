from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

TOKYO = ZoneInfo("Asia/Tokyo")


def utc_now() -> datetime:
    return datetime.now(UTC)
