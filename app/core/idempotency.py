"""``Idempotency-Key`` on every POST, stored in PostgreSQL so it holds across processes.

How it works (a pure ASGI middleware):

1. A POST carrying ``Idempotency-Key`` and a bearer key is handled inside one database
   transaction that the middleware opens. Keys are scoped to the caller (the SHA-256 of its
   API key, the same digest that is stored at rest).
2. ``pg_try_advisory_xact_lock`` on (caller, key): if another request holds it, the first is
   still running, so this one gets **409 ``idempotency_request_in_progress``**.
3. A stored record for (caller, key): same request fingerprint (method, path, query, body) →
   the stored response is **replayed** with ``Idempotent-Replayed: true``; a different
   fingerprint → **422 ``idempotency_key_reused``**.
4. Otherwise the route runs on the middleware's session (``get_session`` hands it over and
   does not commit). A 2xx response is stored *in the same transaction* as the effects it
   describes and committed before a byte is sent: either both exist or neither does, so a
   retry after a crash can never apply twice. A non-2xx response is rolled back and not
   stored (nothing was applied, so a retry may run again).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import LargeBinary, SmallInteger, String, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import problem_response
from app.core.time import utc_now
from app.db.base import Base
from app.db.session import REQUEST_SESSION_KEY

log = structlog.get_logger()

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
MAX_BODY_BYTES = 1 << 20
_REPLAYED_HEADERS = {"content-type", "location"}


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    caller: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    response_status: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    response_headers: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False)
    response_body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False, index=True)


def caller_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _send_json(send: Send, response: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        token = _bearer(headers)
        if raw_key is None or token is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            await _send_json(
                send,
                problem_response(
                    None,
                    422,
                    "validation_error",
                    f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
                    errors=[
                        {
                            "loc": ["header", "Idempotency-Key"],
                            "msg": "invalid idempotency key",
                            "type": "value_error",
                        }
                    ],
                ),
            )
            return

        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await _send_json(
                    send, problem_response(None, 413, "payload_too_large", "Body too large.")
                )
                return

        caller = caller_digest(token)
        fingerprint = hashlib.sha256(
            b"\0".join(
                [
                    scope["method"].encode(),
                    scope["path"].encode(),
                    scope.get("query_string", b""),
                    body,
                ]
            )
        ).hexdigest()

        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        sessionmaker = scope["app"].state.sessionmaker
        async with sessionmaker() as session:
            locked = await session.scalar(
                select(func.pg_try_advisory_xact_lock(func.hashtextextended(caller + ":" + key, 0)))
            )
            if not locked:
                await session.rollback()
                await _send_json(
                    send,
                    problem_response(
                        None,
                        409,
                        "idempotency_request_in_progress",
                        "A request with this Idempotency-Key is still being processed.",
                    ),
                )
                return
            record = await session.get(IdempotencyRecord, (caller, key))
            if record is not None:
                await session.rollback()
                if record.request_hash != fingerprint:
                    await _send_json(
                        send,
                        problem_response(
                            None,
                            422,
                            "idempotency_key_reused",
                            "This Idempotency-Key was used with a different request.",
                            errors=[
                                {
                                    "loc": ["header", "Idempotency-Key"],
                                    "msg": "key already used with a different request",
                                    "type": "idempotency_key_reused",
                                }
                            ],
                        ),
                    )
                    return
                replay_headers = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in record.response_headers.items()
                ]
                replay_headers.append((b"idempotent-replayed", b"true"))
                replay_headers.append((b"content-length", str(len(record.response_body)).encode()))
                await send(
                    {
                        "type": "http.response.start",
                        "status": record.response_status,
                        "headers": replay_headers,
                    }
                )
                await send({"type": "http.response.body", "body": record.response_body})
                return

            start: Message | None = None
            chunks: list[bytes] = []

            async def buffer_send(message: Message) -> None:
                nonlocal start
                if message["type"] == "http.response.start":
                    start = message
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            scope.setdefault("state", {})[REQUEST_SESSION_KEY] = session
            try:
                await self.app(scope, replay_receive, buffer_send)
            except BaseException:
                await session.rollback()
                raise
            finally:
                scope["state"].pop(REQUEST_SESSION_KEY, None)

            assert start is not None
            status = int(start["status"])
            response_body = b"".join(chunks)
            if 200 <= status < 300:
                stored_headers = {
                    k.decode("latin-1"): v.decode("latin-1")
                    for k, v in start.get("headers", [])
                    if k.decode("latin-1").lower() in _REPLAYED_HEADERS
                }
                session.add(
                    IdempotencyRecord(
                        caller=caller,
                        key=key,
                        request_hash=fingerprint,
                        response_status=status,
                        response_headers=stored_headers,
                        response_body=response_body,
                    )
                )
                await session.commit()
            else:
                await session.rollback()
        await send(start)
        await send({"type": "http.response.body", "body": response_body})
