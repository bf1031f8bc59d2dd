"""FastAPI's native OpenTelemetry follows ``TANSO_OPENTELEMETRY`` (off by default: with it on,
every request looks the global providers up)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.main import create_app


@pytest.mark.parametrize("on", [False, True])
def test_fastapi_telemetry_follows_the_setting(settings: Settings, on: bool) -> None:
    app = create_app(settings.model_copy(update={"opentelemetry": on}))
    assert app._native_telemetry.config["tracing"] is on
    assert app._native_telemetry.config["metrics"] is on
    assert app._native_telemetry.config["logs"] is on
    if not on:
        assert not app._native_telemetry.enabled()
