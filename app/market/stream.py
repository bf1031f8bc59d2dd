"""The live market stream: Server-Sent Events fed by PostgreSQL LISTEN/NOTIFY.

``app.market.service`` sends ``pg_notify('market_<product id hex>', json)`` in the transaction
of each fill, order, cancel and expiry, so an event reaches listeners only once it commits.
``market_events`` opens its own asyncpg connection (not one of the request pool's: it is held
for as long as the client stays), LISTENs, *then* reads the book snapshot (so no change falls
between the two; an event may repeat what the snapshot already shows: ``level`` events carry
the level's new absolute state, so applying one twice is harmless), and yields:

- ``event: snapshot`` — ``{"product", "bids": [...], "asks": [...]}`` as ``GET .../book``;
- ``event: trade`` — ``{"id", "price", "quantity", "taker_side", "executed_at"}``;
- ``event: level`` — ``{"side", "price", "quantity", "orders"}`` (``quantity`` 0: level gone);
- ``: heartbeat`` comment lines every 15 s without events.

The connection is closed when the generator ends: on client disconnect Starlette cancels the
response, which closes the generator.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from app.market.service import channel

HEARTBEAT_SECONDS = 15.0
Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


async def market_events(
    dsn: str,
    product_id: uuid.UUID,
    snapshot: Snapshot,
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> AsyncGenerator[str, None]:
    """The SSE text of one product's stream: snapshot first, then events as they commit."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        queue.put_nowait(payload)

    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, server_settings={"application_name": "tanso-stream"}
    )
    try:
        await conn.add_listener(channel(product_id), on_notify)
        yield sse("snapshot", json.dumps(await snapshot()))
        while True:
            try:
                payload = await asyncio.wait_for(queue.get(), timeout=heartbeat)
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            event = json.loads(payload)
            yield sse(str(event.pop("type")), json.dumps(event))
    finally:
        # Shielded: this runs while Starlette cancels the response on client disconnect.
        with anyio.CancelScope(shield=True):
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()
