"""Queries on the registry's tables."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.time import utc_now
from app.db import deferred as deferred_writes
from app.db.driver import DatabaseRefusal, fetch_rows, scalar_call
from app.offsets import serials
from app.offsets.models import (
    POOL_SHARDS,
    Batch,
    Block,
    ClaimAllocation,
    OffsetPoolShard,
    Project,
    Retirement,
    SerialCounter,
)


async def allocate_serials(session: AsyncSession, quantity: int) -> int:
    """Reserve ``quantity`` consecutive registry serials; returns the first.

    The counter row is locked until commit, so issuances are serialised: ranges never overlap
    (and the exclusion constraint on batches would refuse it if they did).
    """
    start = await session.scalar(
        update(SerialCounter)
        .where(SerialCounter.id == 1)
        .values(next_serial=SerialCounter.next_serial + quantity)
        .returning(SerialCounter.next_serial - quantity)
    )
    assert start is not None, "offset_serial_counter is seeded by the migration"
    return int(start)


async def lock_batch(session: AsyncSession, batch_id: uuid.UUID) -> tuple[Batch, Project] | None:
    """The batch and its project; the batch row is locked so its blocks change one at a time."""
    row = (
        await session.execute(
            select(Batch, Project)
            .join(Project, Project.id == Batch.project_id)
            .where(Batch.id == batch_id)
            .with_for_update(of=Batch, key_share=True)  # FOR NO KEY UPDATE
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def get_batch(session: AsyncSession, batch_id: uuid.UUID) -> tuple[Batch, Project] | None:
    row = (
        await session.execute(
            select(Batch, Project)
            .join(Project, Project.id == Batch.project_id)
            .where(Batch.id == batch_id)
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


_COLUMNS = (
    "id, batch_id, holder_organization_id, serial_start, serial_end, state, parent_ids, hold_id,"
    " retirement_id"
)
_COLUMNS_OF_O = ", ".join(f"o.{c.strip()}" for c in _COLUMNS.split(","))
_LIVE_BLOCKS_SQL = (
    f"SELECT {_COLUMNS} FROM offset_blocks WHERE batch_id = :batch AND closed_at IS NULL"
)


def _of_holder(holder: str) -> str:
    """The condition for the batch's live blocks of ``holder``: a look-up in the live-blocks
    index (batch, holder, serial) and nowhere else. The exclusion constraint's GiST index on
    (batch, serial range) serves ``batch_id = :batch`` too, and without statistics (a new
    database, a table grown since its last ANALYZE, a new batch) the planner took it and
    filtered the batch's every live block by holder (5 ms a call for 16 sellers at 1,900
    live blocks). Compared as one row as well, batch and holder are an index condition for a
    B-tree only (migration 0025, where ``offset_live_copy`` does the same)."""
    return (
        f"(batch_id, holder_organization_id) >= (:batch, {holder})"
        f" AND (batch_id, holder_organization_id) <= (:batch, {holder})"
        f" AND holder_organization_id = {holder} AND closed_at IS NULL"
    )


# The holder of a hold's live blocks in the batch (a credit hold is a ledger hold: its owner,
# when it still has live blocks there). LATERAL with LIMIT 1 rather than EXISTS: as a
# semi-join, a plan made on a small table read the batch's every live block once and matched
# them with the hold.
_HOLDER_OF_HOLD = (
    "SELECT h.organization_id FROM ledger_holds h CROSS JOIN LATERAL ("
    " SELECT 1 FROM offset_blocks WHERE "
    + _of_holder("h.organization_id")
    + " AND hold_id = h.id LIMIT 1) o WHERE h.id = :hold"
)
# The live blocks of the holders given and of the hold's holder: one look-up per holder in the
# live-blocks index. One array keeps the statement's text fixed whatever the number of holders
# (an IN list is rendered anew each time); LATERAL with OFFSET 0 (which keeps the planner from
# flattening it) keeps each look-up an index condition.
_OF_HOLDERS = (
    "SELECT b.* FROM (SELECT DISTINCT unnest(CAST(:holders AS uuid[]) || ARRAY("
    + _HOLDER_OF_HOLD
    + f")) AS id) h CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM offset_blocks WHERE "
    + _of_holder("h.id")
    + " OFFSET 0) b"
)
_LIVE_BLOCKS_OF_SQL = text(_OF_HOLDERS + " ORDER BY serial_start")
# The hold's live blocks, the same way.
_OF_HOLD = (
    f"SELECT b.* FROM ledger_holds h CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM offset_blocks"
    " WHERE "
    + _of_holder("h.organization_id")
    + " AND hold_id = h.id OFFSET 0) b WHERE h.id = :hold"
)
_ALL_LIVE_BLOCKS_SQL = text(_LIVE_BLOCKS_SQL + " ORDER BY serial_start")
# Live blocks touching ``m``'s (ending just before one or starting just after: at most two per
# block), looked up per block of ``m`` in the live-serials exclusion constraint's GiST index.
# LATERAL with OFFSET 0 (which keeps the planner from flattening it into a join) makes the
# range the index condition of each look-up: as a plain join, a generic plan made on small
# statistics took the batch's every live block per block of ``m`` and filtered them (17 ms a
# group in bench/orders, where every block is of one batch; seconds with 20,000 live blocks).
_TOUCHING = (
    f" CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM offset_blocks"
    " WHERE batch_id = :batch AND closed_at IS NULL"
    " AND int8range(serial_start, serial_end, '[]')"
    " && int8range(m.serial_start - 1, m.serial_end + 1, '[]') OFFSET 0) o"
)
# What a delivery out of a hold needs (``serials.settle_hold``): the hold's blocks, and the
# receivers' blocks that touch them, the only ones its pieces can merge with. Not every block
# of the receivers: a buyer's blocks grow with every purchase (each one a separate run of
# serials), and reading them all made each delivery cost more than the last.
_DELIVERY_BLOCKS_SQL = text(
    f"WITH m AS MATERIALIZED ({_OF_HOLD})"
    f" SELECT {_COLUMNS} FROM m UNION"
    f" SELECT {_COLUMNS_OF_O} FROM m{_TOUCHING}"
    " WHERE o.holder_organization_id = ANY(CAST(:holders AS uuid[]))"
    " ORDER BY serial_start"
)
# For the copy kept while deferring (through the driver: ``$n`` placeholders; a group reads
# many blocks at once, where SQLAlchemy's row processing costs more than the query): the
# active blocks of the holders given, the blocks of the holds given, and every block touching
# one of them, whoever holds it (``offset_live_copy_of``, migration 0029, where the order
# group's lock call reads it too).
_COPY_SQL = "SELECT * FROM offset_live_copy_of($1, $2::uuid[], $3::uuid[])"


async def live_blocks(
    session: AsyncSession,
    batch_id: uuid.UUID,
    holders: Iterable[uuid.UUID] | None = None,
    *,
    hold_id: uuid.UUID | None = None,
    receiving: bool = False,
) -> list[serials.Block]:
    """Live blocks of a batch, of some holders (or all), or those of one hold's holder. Fixed
    statements, rows straight to pure blocks: the order path runs this under its lock, where
    building an ORM query and its objects cost more than the query.

    ``receiving``: the holders only receive from the hold (``serials.settle_hold``): of theirs,
    only the blocks touching the hold's, which are all a delivery can merge with; and of the
    hold's holder, only the hold's blocks.

    While the session defers its writes (``app.db.deferred``), the blocks come from the copy
    kept in step with the deferred changes (``_LiveCopy``): a holder's blocks are read from
    the database the first time they are asked for, and from the copy after."""
    if (writes := deferred_writes.deferred(session)) is not None:
        if holders is None and hold_id is None:
            raise RuntimeError("a batch's every live block cannot be read while deferring")
        return await _live_copy(writes).of(
            session, batch_id, list(holders or ()), hold_id, receiving=receiving
        )
    if holders is None and hold_id is None:
        result = await session.execute(_ALL_LIVE_BLOCKS_SQL, {"batch": batch_id})
    else:
        if receiving and hold_id is None:
            raise ValueError("a delivery is out of a hold")
        result = await session.execute(
            _DELIVERY_BLOCKS_SQL if receiving else _LIVE_BLOCKS_OF_SQL,
            {"batch": batch_id, "holders": list(holders or ()), "hold": hold_id},
        )
    return [_block(row) for row in result.all()]


def _block(row: Sequence[Any]) -> serials.Block:
    block_id, batch, holder, start, end, state, parents, hold, retirement = row[:9]
    return serials.Block(
        id=block_id,
        batch_id=batch,
        holder=holder,
        serial_start=start,
        serial_end=end,
        state=serials.BlockState(state),
        parent_ids=tuple(parents),
        hold_ref=hold,
        retirement_ref=retirement,
    )


class _LiveCopy:
    """The live blocks read so far, per batch, with the deferred changes applied.

    What an operation takes from is read before it runs: a holder's *active* blocks (it
    holds, transfers or retires credits) or a hold's blocks (it delivers or releases them),
    each with every live block touching them, whoever holds it. That is all an operation
    needs: a pure operation takes only from its source's active blocks or from its hold's,
    and merges what it moves only with blocks touching them (the merge key includes the state
    and the hold, so another hold's blocks never merge). Every serial a group moves was read
    so, so every block that can touch a moved piece is here (read, or made by the group), and
    the database is still right about every block not here. A holder's blocks are read only
    as far as that: a seller with many resting sells has a held block for each, and reading
    them all for every group cost a group their number (``bench/orders --spread``). Kept by
    holder, with the holder of each hold that has held blocks here, so an operation looks
    only at its holders' blocks, as the database query would."""

    def __init__(self) -> None:
        # batch -> holder -> block id -> block (known live blocks)
        self.blocks: dict[uuid.UUID, dict[uuid.UUID, dict[uuid.UUID, serials.Block]]] = {}
        self.active: dict[uuid.UUID, set[uuid.UUID]] = {}  # batch -> holders' active read
        self.read_holds: dict[uuid.UUID, set[uuid.UUID]] = {}  # batch -> holds' blocks read
        self.closed: set[uuid.UUID] = set()  # blocks the deferred changes closed
        # hold -> (its holder, how many of its blocks are live here)
        self.holds: dict[uuid.UUID, tuple[uuid.UUID, int]] = {}

    async def load(
        self,
        session: AsyncSession,
        batch_id: uuid.UUID,
        holders: Sequence[uuid.UUID],
        holds: Sequence[uuid.UUID] = (),
    ) -> None:
        """Read the holders' active blocks and the holds' blocks that are not read yet."""
        active = self.active.setdefault(batch_id, set())
        read_holds = self.read_holds.setdefault(batch_id, set())
        missing = [h for h in dict.fromkeys(holders) if h not in active]
        missing_holds = [h for h in dict.fromkeys(holds) if h not in read_holds]
        if not missing and not missing_holds:
            return
        rows = await fetch_rows(session, _COPY_SQL, [batch_id, missing, missing_holds])
        self.add_read(batch_id, missing, missing_holds, rows)

    def add_read(
        self,
        batch_id: uuid.UUID,
        holders: Iterable[uuid.UUID],
        holds: Iterable[uuid.UUID],
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """Rows of ``offset_live_copy_of`` for these holders' active blocks and these holds'
        blocks, read under the batch lock that is still held."""
        self.blocks.setdefault(batch_id, {})
        self.active.setdefault(batch_id, set()).update(holders)
        self.read_holds.setdefault(batch_id, set()).update(holds)
        self._add(_block(row) for row in rows)

    def _add(self, blocks: Iterable[serials.Block]) -> None:
        for block in blocks:
            known = self.blocks[block.batch_id].setdefault(block.holder, {})
            if block.id in known or block.id in self.closed:
                continue  # read before, or closed by this group since
            known[block.id] = block
            if block.hold_ref is not None:
                _, live = self.holds.get(block.hold_ref, (block.holder, 0))
                self.holds[block.hold_ref] = (block.holder, live + 1)

    async def of(
        self,
        session: AsyncSession,
        batch_id: uuid.UUID,
        holders: list[uuid.UUID],
        hold_id: uuid.UUID | None,
        *,
        receiving: bool = False,
    ) -> list[serials.Block]:
        """The blocks of ``holders`` and of the hold's holder known here, once what the
        operation takes from is read: the hold's blocks (a delivery or a release), or else
        the holders' active blocks."""
        if hold_id is not None:
            await self.load(session, batch_id, [], [hold_id])
        else:
            await self.load(session, batch_id, [] if receiving else holders)
        wanted = set(holders)
        if hold_id is not None and hold_id in self.holds:
            wanted.add(self.holds[hold_id][0])
        by_holder = self.blocks[batch_id]
        return sorted(
            (b for h in wanted for b in by_holder.get(h, {}).values()),
            key=lambda b: b.serial_start,
        )

    def apply(self, change: serials.BlockChange) -> None:
        # A hold's blocks made here are all here: an operation on it reads nothing more.
        for block in change.created:
            if block.hold_ref is not None:
                self.read_holds.setdefault(block.batch_id, set()).add(block.hold_ref)
        for block in change.closed:
            del self.blocks[block.batch_id][block.holder][block.id]
            self.closed.add(block.id)
            if block.hold_ref is not None:
                holder, live = self.holds[block.hold_ref]
                if live > 1:
                    self.holds[block.hold_ref] = (holder, live - 1)
                else:
                    del self.holds[block.hold_ref]
        self._add(change.created)


_LIVE_COPY = "offsets.live_blocks"


def _live_copy(writes: deferred_writes.DeferredWrites) -> _LiveCopy:
    copy: _LiveCopy = writes.caches.setdefault(_LIVE_COPY, _LiveCopy())
    return copy


async def read_live_blocks(
    session: AsyncSession,
    batch_id: uuid.UUID,
    holders: Iterable[uuid.UUID],
    holds: Iterable[uuid.UUID] = (),
) -> None:
    """While deferring, read the holders' active blocks of the batch and the holds' blocks,
    and those touching them, into the copy in one statement (a group of orders reads what
    all its sells and fills take from at once)."""
    if (writes := deferred_writes.deferred(session)) is not None:
        await _live_copy(writes).load(session, batch_id, list(holders), list(holds))


def add_live_blocks(
    session: AsyncSession,
    batch_id: uuid.UUID,
    holders: Iterable[uuid.UUID],
    holds: Iterable[uuid.UUID],
    rows: Iterable[Sequence[Any]],
) -> None:
    """While deferring, take into the copy the holders' active blocks and the holds' blocks
    (and those touching them) as another call read them, under the batch lock held since
    (``offset_live_copy_of`` rows)."""
    if (writes := deferred_writes.deferred(session)) is not None:
        _live_copy(writes).add_read(batch_id, holders, holds, rows)


# Persisting a change is one call of ``offset_apply_change`` (migration 0013): close the old
# blocks, then insert the new ones, so the live-serials exclusion constraint sees the old ones
# closed. TN014: a block to close was not live (changed under the batch lock: a bug).
_APPLY_CHANGE_SQL = "SELECT offset_apply_change($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
BLOCKS_CHANGED_SQLSTATE = "TN014"


def _created_row(b: serials.Block) -> tuple[Any, ...]:
    return (
        b.id,
        b.batch_id,
        b.holder,
        b.serial_start,
        b.serial_end,
        b.state.value,
        b.hold_ref,
        b.retirement_ref,
        ",".join(str(p) for p in b.parent_ids),
    )


async def apply_change(session: AsyncSession, change: serials.BlockChange) -> None:
    """Persist a pure change (close its old blocks, insert its new ones) in one round trip,
    or record it while the session defers its writes (``app.db.deferred``)."""
    created = [_created_row(b) for b in change.created]
    if (writes := deferred_writes.deferred(session)) is not None:
        copy = _live_copy(writes)
        copy.apply(change)
        writes.blocks.append(deferred_writes.BlockChange([b.id for b in change.closed], created))
        return
    try:
        await scalar_call(
            session,
            _APPLY_CHANGE_SQL,
            [[b.id for b in change.closed], utc_now(), *(list(c) for c in _columns(created))],
        )
    except DatabaseRefusal as refusal:
        if refusal.sqlstate == BLOCKS_CHANGED_SQLSTATE:
            raise RuntimeError("serial blocks changed under a batch lock") from refusal
        raise refusal.__cause__ or refusal from None


def _columns(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The 9 columns of ``offset_apply_change``'s new blocks."""
    return list(zip(*rows, strict=True)) if rows else [()] * 9


async def holdings(
    session: AsyncSession, organization_id: uuid.UUID
) -> list[tuple[Batch, Project, list[Block]]]:
    rows = (
        await session.execute(
            select(Batch, Project, Block)
            .join(Project, Project.id == Batch.project_id)
            .join(Block, Block.batch_id == Batch.id)
            .where(
                Block.holder_organization_id == organization_id,
                Block.closed_at.is_(None),
                Block.state != serials.BlockState.RETIRED.value,
            )
            .order_by(Batch.vintage, Batch.id, Block.serial_start)
        )
    ).all()
    out: dict[uuid.UUID, tuple[Batch, Project, list[Block]]] = {}
    for batch, project, block in rows:
        out.setdefault(batch.id, (batch, project, []))[2].append(block)
    return list(out.values())


async def lock_retirements(
    session: AsyncSession, organization_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Retirement]:
    """The organisation's retirements among ``ids``, locked (in id order) and read fresh.

    ``populate_existing``: a retirement this session loaded before the lock (e.g. through a
    claim's allocations) holds values that may be stale by the time the lock is granted; the
    locked row is the truth, or ``claimed_g`` would be written back from an old total.
    """
    rows = (
        (
            await session.execute(
                select(Retirement)
                .where(Retirement.id.in_(list(ids)), Retirement.organization_id == organization_id)
                .order_by(Retirement.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )
    return {r.id: r for r in rows}


async def retirement_views(
    session: AsyncSession, where: Any, *, limit: int | None = None, after: datetime | None = None
) -> list[tuple[Retirement, Batch, Project]]:
    stmt = (
        select(Retirement, Batch, Project)
        .join(Batch, Batch.id == Retirement.batch_id)
        .join(Project, Project.id == Batch.project_id)
        .where(where)
        .order_by(Retirement.id.desc())
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(r, b, p) for r, b, p in (await session.execute(stmt)).all()]


async def allocations_for(
    session: AsyncSession, *, claim_id: uuid.UUID | None = None, pool_id: uuid.UUID | None = None
) -> list[tuple[ClaimAllocation, Retirement, Batch, Project]]:
    stmt = (
        select(ClaimAllocation, Retirement, Batch, Project)
        .join(Retirement, Retirement.id == ClaimAllocation.retirement_id)
        .join(Batch, Batch.id == Retirement.batch_id)
        .join(Project, Project.id == Batch.project_id)
        .order_by(ClaimAllocation.id)
    )
    if claim_id is not None:
        stmt = stmt.where(ClaimAllocation.claim_id == claim_id)
    if pool_id is not None:
        stmt = stmt.where(ClaimAllocation.pool_id == pool_id)
    return [(a, r, b, p) for a, r, b, p in (await session.execute(stmt)).all()]


async def retired_tonnes(
    session: AsyncSession,
    organization_id: uuid.UUID,
    start: datetime,
    end: datetime,
    prefecture: str | None,
) -> tuple[int, int, int]:
    """(all retired tonnes, tonnes from credits issued in ``prefecture``, retirements) in [start, end)."""
    local = (
        func.coalesce(func.sum(Retirement.quantity).filter(Batch.prefecture == prefecture), 0)
        if prefecture
        else literal(0)
    )
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(Retirement.quantity), 0), local, func.count(Retirement.id)
            )
            .join(Batch, Batch.id == Retirement.batch_id)
            .where(
                and_(
                    Retirement.organization_id == organization_id,
                    Retirement.retired_at >= start,
                    Retirement.retired_at < end,
                )
            )
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


# --- offset pool shards ----------------------------------------------------------------


async def create_pool_shards(session: AsyncSession, pool_id: uuid.UUID) -> None:
    await session.execute(
        insert(OffsetPoolShard),
        [{"pool_id": pool_id, "shard": i, "remaining_g": 0} for i in range(POOL_SHARDS)],
    )


async def _lock_shards(session: AsyncSession, pool_id: uuid.UUID) -> list[tuple[int, int]]:
    """Every shard of the pool, locked. Writers of several shards first take the pool's
    advisory lock, so they run one at a time; a single draw never waits for a shard (SKIP
    LOCKED). So no cycle of waits can form."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(f"offset_pool:{pool_id}", 0)))
    )
    rows = await session.execute(
        select(OffsetPoolShard.shard, OffsetPoolShard.remaining_g)
        .where(OffsetPoolShard.pool_id == pool_id)
        .order_by(OffsetPoolShard.shard)
        .with_for_update()
    )
    return [(int(shard), int(grams)) for shard, grams in rows.all()]


async def _set_shards(session: AsyncSession, pool_id: uuid.UUID, values: dict[int, int]) -> None:
    for shard, grams in values.items():
        await session.execute(
            update(OffsetPoolShard)
            .where(OffsetPoolShard.pool_id == pool_id, OffsetPoolShard.shard == shard)
            .values(remaining_g=grams)
        )


async def add_to_pool(session: AsyncSession, pool_id: uuid.UUID, grams: int) -> None:
    """Spread ``grams`` evenly over the pool's shards."""
    shards = await _lock_shards(session, pool_id)
    base, extra = divmod(grams, len(shards))
    await _set_shards(session, pool_id, {s: g + base + (1 if s < extra else 0) for s, g in shards})


async def return_to_pool(session: AsyncSession, pool_id: uuid.UUID, grams: int) -> None:
    """Give grams back (a revoked unit claim) to one shard."""
    await session.execute(
        update(OffsetPoolShard)
        .where(OffsetPoolShard.pool_id == pool_id, OffsetPoolShard.shard == 0)
        .values(remaining_g=OffsetPoolShard.remaining_g + grams)
    )


_DRAW_SQL = "SELECT offset_pool_draw($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"


async def draw_from_pool(session: AsyncSession, values: dict[str, Any]) -> int:
    """Insert a unit claim and take its grams from its pool in one round trip
    (``offset_pool_draw``, migration 0003); returns the grams left in the pool.

    Raises ``DatabaseRefusal``: SQLSTATE TN102 when the pool is short (nothing is written),
    23505 on ``offset_claims_pool_id_reference_key`` for a reference already drawn.
    """
    left = await scalar_call(
        session,
        _DRAW_SQL,
        [
            values["pool_id"],
            values["covered_g"],
            values["id"],
            values["code"],
            values["organization_id"],
            values["reference"],
            str(values["claim_type"]),
            json.dumps(values["subject"]),
            values["document"],
            values["signature"],
            values["key_id"],
            values["created_at"],
        ],
    )
    return int(left)


async def pool_remaining(
    session: AsyncSession, pool_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    rows = await session.execute(
        select(OffsetPoolShard.pool_id, func.sum(OffsetPoolShard.remaining_g))
        .where(OffsetPoolShard.pool_id.in_(list(pool_ids)))
        .group_by(OffsetPoolShard.pool_id)
    )
    return {pool_id: int(total) for pool_id, total in rows.all()}
