"""``Settings.log_debug``: the loggers named there log at DEBUG whatever ``log_level`` says
(``bench/orders --groups`` turns on ``app.market.group`` this way, without SQLAlchemy's DEBUG
and INFO lines that a server-wide DEBUG would add)."""

from __future__ import annotations

import logging

import pytest

from app.config import Settings
from app.core.logging import configure_logging


def test_the_named_loggers_log_at_debug_and_the_rest_at_the_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TANSO_LOG_DEBUG", '["tanso.test.debugged"]')
    settings = Settings()
    assert settings.log_debug == ["tanso.test.debugged"]
    try:
        # As tests/conftest.py configures it, plus the debugged logger.
        configure_logging(
            json=False, level="WARNING", debug=settings.log_debug, cache_loggers=False
        )
        assert logging.getLogger("tanso.test.debugged").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("tanso.test.other").isEnabledFor(logging.INFO)
        assert not logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger("tanso.test.debugged").setLevel(logging.NOTSET)
        configure_logging(json=False, level="WARNING", cache_loggers=False)
