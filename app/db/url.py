"""Turn whatever URL the operator gave into one SQLAlchemy's asyncpg dialect accepts."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def async_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername != "postgresql+asyncpg":
        raise ValueError(f"unsupported database driver {parsed.drivername!r}: use postgresql://")
    return parsed


def libpq_url(url: str) -> str:
    """The same server as a plain libpq URL (for psql, pgbench and asyncpg.connect)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)
