"""Writes recorded in order and sent to PostgreSQL in one call, for a group of orders.

A group of orders placed under one product lock (``app.market.group``) used to make one round
trip per hold, per payment out of a hold, per fee and per serial-block change, and its time
under the lock was mostly spent waiting for those answers. While a session ``defers``
(``deferring(session)``), the ledger's hold operations and two-leg transfers
(``app.ledger.service``) and the registry's serial-block changes
(``app.offsets.repository.apply_change``) are recorded here instead of run. ``take_arguments``
turns them into the arguments of ``tanso_apply_deferred`` (migration 0015), which the group's
one write call (``market_apply_group``, 0017) runs first, in the recorded order: the same SQL
functions as the one-by-one path, so the same checks and entries.

Only writes whose answer the caller already knows are deferred (hold ids and entry ids are
made here, not by the database), and only where nothing read before that call depends on a
deferred write: the registry keeps its own copy of the live blocks it changes
(``caches``). A refusal (a shortfall, a hold no longer active) surfaces from the call, and
the caller rolls the whole transaction back (the group is then placed one order at a time, where
each refusal has its own answer).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.time import utc_now

_KEY = "tanso.deferred"


@dataclass(slots=True)
class LedgerOp:
    """One ledger operation (see migration 0015 for what each kind runs)."""

    kind: str  # reserve | take | transfer
    entry_id: uuid.UUID
    hold_id: uuid.UUID | None = None
    organization_id: uuid.UUID | None = None
    asset: str | None = None
    amount: int | None = None
    source: uuid.UUID | None = None
    destination: uuid.UUID | None = None
    entry_kind: str | None = None
    reference: str | None = None
    rest_only: bool = False


@dataclass(slots=True)
class BlockChange:
    """One serial-block change, as ``offset_apply_change`` takes it: the ids of the blocks it
    closes, and the rows of those it creates (id, batch, holder, start, end, state, hold,
    retirement, comma-separated parent ids)."""

    closed: list[uuid.UUID]
    created: list[tuple[Any, ...]]


@dataclass(slots=True)
class DeferredWrites:
    ledger: list[LedgerOp] = field(default_factory=list)
    blocks: list[BlockChange] = field(default_factory=list)
    # What a module keeps in step with its own deferred writes (the registry's live blocks),
    # by the module's key: discarded with the writes.
    caches: dict[str, Any] = field(default_factory=dict)


def deferred(session: AsyncSession) -> DeferredWrites | None:
    """The session's deferred writes, when it is deferring."""
    writes: DeferredWrites | None = session.info.get(_KEY)
    return writes


@asynccontextmanager
async def deferring(session: AsyncSession) -> AsyncIterator[DeferredWrites]:
    """Record the session's deferrable writes until ``take_arguments``; what is not taken when
    the block ends (an error in it) is dropped (the caller rolls back)."""
    if _KEY in session.info:
        raise RuntimeError("the session is already deferring its writes")
    writes = DeferredWrites()
    session.info[_KEY] = writes
    try:
        yield writes
    finally:
        session.info.pop(_KEY, None)


def take_arguments(session: AsyncSession) -> list[Any]:
    """What was recorded, as ``tanso_apply_deferred``'s 23 arguments (empty arrays if
    nothing), and start recording afresh: for a caller that sends them together with writes
    of its own (``market_apply_group``, migration 0017)."""
    writes = deferred(session)
    if writes is None:
        raise RuntimeError("the session is not deferring its writes")
    ops, changes = writes.ledger, writes.blocks
    writes.ledger, writes.blocks = [], []
    # The changes' net effect: the blocks live before that were closed, and every block made
    # (those a later change closed again go in closed, keeping the lineage).
    made: set[uuid.UUID] = set()
    gone: set[uuid.UUID] = set()
    closed: list[uuid.UUID] = []
    created: list[tuple[Any, ...]] = []
    for change in changes:
        for block_id in change.closed:
            if block_id in made:
                gone.add(block_id)
            else:
                closed.append(block_id)
        made.update(row[0] for row in change.created)
        created += change.created
    columns: list[tuple[Any, ...]] = list(zip(*created, strict=True)) if created else [()] * 9
    return [
        [op.kind for op in ops],
        [op.hold_id for op in ops],
        [op.entry_id for op in ops],
        [op.organization_id for op in ops],
        [op.asset for op in ops],
        [op.amount for op in ops],
        [op.source for op in ops],
        [op.destination for op in ops],
        [op.entry_kind for op in ops],
        [op.reference for op in ops],
        [op.rest_only for op in ops],
        utc_now(),
        closed,
        *(list(column) for column in columns),
        [row[0] in gone for row in created],
    ]
