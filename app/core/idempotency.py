"""``Idempotency-Key`` on every POST and PATCH, stored in PostgreSQL so it holds across
processes.

How it works (a pure ASGI middleware):

1. A POST or PATCH carrying ``Idempotency-Key`` and a bearer key is handled inside one database
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
5. A stored response is replayed only to a caller that still authenticates: a revoked key
   (or a suspended organisation's) gets the same 401 as on any other request.
6. Stored bodies are sealed (AES-256-GCM, key = HKDF-SHA256 of the caller's bearer token)
   with a key the database never holds (it keeps only the token's SHA-256). A response may
   carry a secret (``POST .../api-keys`` returns the new key once): it must not sit in the
   database in clear, yet the caller's retry must still get it back.

The caller check of point 5 is injected (``authenticate``) by ``app.main``, so this module
depends on no business domain.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import LargeBinary, SmallInteger, String, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import DomainError, problem_response
from app.core.time import utc_now
from app.db.base import Base
from app.db.session import REQUEST_SESSION_KEY

log = structlog.get_logger()

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
MAX_BODY_BYTES = 1 << 20
_REPLAYED_HEADERS = {"content-type", "location"}
_NONCE_BYTES = 12

# (session, bearer token, admin key) -> None, raising a DomainError (401) for a caller that
# no longer authenticates.
Authenticate = Callable[[AsyncSession, str, str], Awaitable[object]]


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


def _aead(token: str, key: str) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"tanso-idempotency\0" + key.encode()
    ).derive(token.encode())
    return AESGCM(derived)


def seal_body(token: str, key: str, body: bytes) -> bytes:
    """``nonce || AES-256-GCM(body)`` under a key only the caller's token can derive."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + _aead(token, key).encrypt(nonce, body, key.encode())


def open_body(token: str, key: str, sealed: bytes) -> bytes:
    """The stored body; raises ``InvalidTag`` if it was not sealed for this token and key."""
    nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    return _aead(token, key).decrypt(nonce, ciphertext, key.encode())


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


# The methods a retry could apply twice: creations (POST) and amendments (PATCH; a replayed
# bid amendment must not draw a second nonce). GET is safe; DELETE ends in a state.
IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, authenticate: Authenticate) -> None:
        self.app = app
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in IDEMPOTENT_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        token = _bearer(headers)
        if raw_key is None or token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            await _send_json(
                send,
                problem_response(
                    request,
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
                    send, problem_response(request, 413, "payload_too_large", "Body too large.")
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
                        request,
                        409,
                        "idempotency_request_in_progress",
                        "A request with this Idempotency-Key is still being processed.",
                    ),
                )
                return
            record = await session.get(IdempotencyRecord, (caller, key))
            if record is not None:
                # rollback() expires every object in the session, and reading an expired
                # attribute is lazy IO (an error under asyncio): detach the loaded record.
                session.expunge(record)
                admin_key = scope["app"].state.settings.auth.admin_key.get_secret_value()
                try:
                    await self.authenticate(session, token, admin_key)
                except DomainError as exc:
                    await session.rollback()
                    await _send_json(
                        send,
                        problem_response(
                            request,
                            exc.status_code,
                            exc.code,
                            exc.detail,
                            headers={"WWW-Authenticate": "Bearer"},
                        ),
                    )
                    return
                await session.rollback()
                if record.request_hash != fingerprint:
                    await _send_json(
                        send,
                        problem_response(
                            request,
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
                replay_body = open_body(token, key, record.response_body)
                replay_headers.append((b"idempotent-replayed", b"true"))
                replay_headers.append((b"content-length", str(len(replay_body)).encode()))
                await send(
                    {
                        "type": "http.response.start",
                        "status": record.response_status,
                        "headers": replay_headers,
                    }
                )
                await send({"type": "http.response.body", "body": replay_body})
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
                        response_body=seal_body(token, key, response_body),
                    )
                )
                await session.commit()
            else:
                await session.rollback()
        await send(start)
        await send({"type": "http.response.body", "body": response_body})
