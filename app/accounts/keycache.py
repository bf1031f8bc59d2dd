"""The API keys this process authenticated, remembered until a key or organisation changes.

Every request authenticates; on the order path, reading the key and its organisation was a
BEGIN, a query and a ROLLBACK per order, about a third of a worker's time per order. A key
found active is remembered here, by its hash, with the caller it names (``Principal``), and
every remembered key is forgotten as soon as any key or organisation changes: migration 0016's
triggers send ``NOTIFY tanso_auth`` when an ``api_keys`` or ``organizations`` row is updated,
deleted or truncated, and this process LISTENs on its own connection (``listen``).

Safety rests on three rules:

- **Nothing is remembered unless the process is listening.** Until the listening connection is
  up, and from the moment it is lost until it is back, every request reads the database (and
  what was remembered is dropped: a notice may have been missed).
- **A lookup that raced a change is not remembered.** ``generation`` counts the notices; a
  caller reads it before its query and ``remember`` refuses when a notice came meanwhile.
- **Entries expire** after ``TTL_SECONDS`` whatever happens, a bound on any failure not
  foreseen above.

What is left is the notice's own delay, in the other processes: a request reaching another
process within a millisecond or so of a revocation's commit may still pass, as it would have
had it arrived just before the commit. The process that revokes forgets at its commit.
Unknown and revoked keys are never remembered: each such request reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from app.accounts.service import Principal

log = structlog.get_logger()

CHANNEL = "tanso_auth"
TTL_SECONDS = 60.0
MAX_KEYS = 10_000  # a bound on memory: past it, everything is dropped and refilled
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)


class KeyCache:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._keys: dict[str, tuple[Principal, float]] = {}
        self.generation = 0
        self._listening = False

    @property
    def listening(self) -> bool:
        return self._listening

    def get(self, key_hash: str) -> Principal | None:
        if not self._listening:
            return None
        found = self._keys.get(key_hash)
        if found is None:
            return None
        principal, expires = found
        if expires < time.monotonic():
            del self._keys[key_hash]
            return None
        return principal

    def remember(self, key_hash: str, principal: Principal, generation: int) -> None:
        """Remember a key read from the database, unless a change was noticed since the
        caller read ``generation`` (before its query) or the process is not listening."""
        if not self._listening or generation != self.generation:
            return
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[key_hash] = (principal, time.monotonic() + self.ttl)

    def forget(self) -> None:
        """Drop every key (a key or an organisation changed, or a notice may be missed)."""
        self.generation += 1
        self._keys.clear()

    def forget_after_commit(self, session: AsyncSession) -> None:
        """This process's own change (a key revoked): forget when its transaction commits,
        without waiting for the notice, so that the next request here already reads it."""
        event.listen(session.sync_session, "after_commit", lambda _s: self.forget(), once=True)

    def _stopped_listening(self) -> None:
        self._listening = False
        self.forget()

    async def listen(self, dsn: str) -> None:
        """LISTEN for changes until cancelled, reconnecting when the connection is lost.
        Keys are remembered only while this runs and its connection is up."""
        attempt = 0
        try:
            while True:
                try:
                    conn: asyncpg.Connection = await asyncpg.connect(
                        dsn, server_settings={"application_name": "tanso-keycache"}
                    )
                except (OSError, asyncpg.PostgresError) as exc:
                    delay = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
                    attempt += 1
                    log.warning("keycache.connect_failed", error=type(exc).__name__, retry=delay)
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                await self._listen_on(conn)
                log.warning("keycache.connection_lost")
        finally:
            self._stopped_listening()

    async def _listen_on(self, conn: asyncpg.Connection) -> None:
        """Listen on ``conn`` until it is lost (or the task is cancelled), then close it."""
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notice)
            self.forget()  # whatever happened before we listened is unknown
            self._listening = True
            await lost.wait()
        finally:
            self._stopped_listening()
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=5))

    def _on_notice(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.forget()


# The process's cache: ``app.main``'s lifespan runs ``listen``; ``authenticate`` uses it.
KEYS = KeyCache()
