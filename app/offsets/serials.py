"""Serial blocks of credit batches: pure split, merge, hold and retirement rules.

No I/O. The offsets service loads a batch's live blocks under lock, calls one operation here,
and persists the ``BlockChange`` it returns (close ``closed``, insert ``created``, record
``moved``). Inputs are never mutated; every function is deterministic given ``new_id``.

Model
-----
A batch owns the contiguous serial range ``[batch_start, batch_end]`` (inclusive). Its *live*
blocks partition that range exactly (no gap, no overlap); ``check_partition`` verifies it.
A block is ``[serial_start, serial_end]`` (inclusive, ``quantity = end - start + 1``) owned by
one holder, in one state:

* ``active``  - the holder's freely usable credits. For every holder, the active blocks of a
  batch sum to the holder's ledger balance of that batch's asset (available account).
* ``held``    - reserved by one hold (``hold_ref``: a sell order, an auction lot, ...). A held
  credit cannot be transferred or retired; only ``release`` (back to active, same holder)
  or ``settle_hold`` (to a holder, as active) moves it. The held blocks of a holder sum to its
  held ledger account. A hold belongs to exactly one holder.
* ``retired`` - frozen forever and belongs to exactly one retirement (``retirement_ref``).
  No operation splits, merges, moves or closes a retired block.

Blocks are immutable: an operation *closes* the blocks it touches and *creates* new ones
with fresh ids from ``new_id`` - even a whole block that only changes holder gets a new id.
A block, once created, is closed at most once; retired blocks are never closed.

Fixed rules
-----------
Take rule (which credits move): a holder's candidate blocks are taken in ascending serial
order, lowest serials first; only the last block taken may be split, and when it is, its
LOW end moves: ``[start, start + q - 1]`` moves and the remainder ``[start + q, end]`` stays,
as a new block with the same holder, state and refs. So an operation always moves the ``q``
lowest serials the source has. (UNDP's registry moves the tail; we move the head so that the
moved part keeps the source's first serial and ``take`` is a simple prefix.)

Merge rule (where credits land): the moved pieces are coalesced with each other and with the
destination's existing live blocks that *touch* them (``end + 1 == start``) and have the same
merge key - same batch, holder, state and ``hold_ref``, state active or held. Each coalesced
run becomes ONE new block with a new id. Blocks never merge across a gap, across holders,
across states or across holds. Retired pieces of one ``retire`` call are coalesced only with
each other, never with existing retired blocks. Remainders of splits are not merged.

Lineage: ``Block.parent_ids`` lists the ids of the closed blocks whose serials the block
contains, in serial order: ``()`` for issuance, ``(p,)`` for a split part or a moved whole
block, ``(p1, p2, ...)`` for a merge. Every closed block is a parent of at least one created
block, and the serials of a block lie within the union of its parents' serials, so the
history of any serial can be walked back to issuance.

Errors and their precedence: ``InvalidQuantity`` (arguments), then ``InvalidBlocks``
(malformed input), ``InvalidOperation`` (self-transfer, hold ref owned by another holder,
retirement ref already used), ``UnknownHold``, then ``InsufficientCredits``. A failed call
returns nothing, so nothing changes.

Cost: every operation is one O(n) pass over the blocks passed in plus a sort of the source
candidates. Passing only the batch's live blocks of the holders involved is enough for the
result; the hold-ownership and retirement-ref checks then see only those holders, so keep hold
and retirement refs unique in the database as well.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar

IdFactory = Callable[[], uuid.UUID]


class BlockState(StrEnum):
    ACTIVE = "active"
    HELD = "held"
    RETIRED = "retired"


_STATES = frozenset(BlockState)


# ---------------------------------------------------------------------------------------------
# Errors


class SerialError(ValueError):
    """An operation on serial blocks was refused; the message says why."""

    code: ClassVar[str] = "serial_error"


class InvalidQuantity(SerialError):
    """A quantity is not a positive integer."""

    code = "invalid_quantity"


class InsufficientCredits(SerialError):
    """More credits were asked for than the source has in the needed state."""

    code = "insufficient_credits"

    def __init__(self, detail: str, *, requested: int, available: int) -> None:
        super().__init__(detail)
        self.requested = requested
        self.available = available


class FrozenBlock(SerialError):
    """A retired block would be split, merged, moved or closed."""

    code = "frozen_block"


class UnknownHold(SerialError):
    """No live held block carries the hold reference."""

    code = "unknown_hold"


class InvalidBlocks(SerialError):
    """The blocks passed in are malformed (bad range, mixed batches, duplicate ids, ...)."""

    code = "invalid_blocks"


class InvalidOperation(SerialError):
    """The operation is not allowed as asked (self-transfer, hold or retirement ref clash)."""

    code = "invalid_operation"


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Block:
    """One serial range of one batch; see the module docstring for states and lineage."""

    id: uuid.UUID
    batch_id: uuid.UUID
    holder: uuid.UUID
    serial_start: int
    serial_end: int
    state: BlockState = BlockState.ACTIVE
    parent_ids: tuple[uuid.UUID, ...] = ()
    hold_ref: uuid.UUID | None = None
    retirement_ref: uuid.UUID | None = None

    @property
    def quantity(self) -> int:
        return self.serial_end - self.serial_start + 1


@dataclass(frozen=True, slots=True)
class Portion:
    """``quantity`` credits taken from the LOW end of ``block``."""

    block: Block
    quantity: int

    @property
    def serial_start(self) -> int:
        return self.block.serial_start

    @property
    def serial_end(self) -> int:
        return self.block.serial_start + self.quantity - 1

    @property
    def is_whole(self) -> bool:
        return self.quantity == self.block.quantity


@dataclass(frozen=True, slots=True)
class Selection:
    """The portions that supply a quantity, in ascending serial order (see ``take``)."""

    portions: tuple[Portion, ...]

    @property
    def quantity(self) -> int:
        return sum(p.quantity for p in self.portions)


@dataclass(frozen=True, slots=True)
class Movement:
    """One serial range that changed hands or state (``from_*`` is None for issuance)."""

    serial_start: int
    serial_end: int
    source_block_id: uuid.UUID | None
    from_holder: uuid.UUID | None
    from_state: BlockState | None
    to_holder: uuid.UUID
    to_state: BlockState

    @property
    def quantity(self) -> int:
        return self.serial_end - self.serial_start + 1


@dataclass(frozen=True, slots=True)
class BlockChange:
    """What to persist: close ``closed``, insert ``created``; ``moved`` is the audit trail.

    ``closed`` and ``created`` are in ascending serial order, ``moved`` in the order taken.
    """

    closed: tuple[Block, ...]
    created: tuple[Block, ...]
    moved: tuple[Movement, ...]

    @property
    def quantity(self) -> int:
        """Credits moved by the operation."""
        return sum(m.quantity for m in self.moved)

    def apply(self, blocks: Iterable[Block]) -> list[Block]:
        """The live blocks after the change: ``blocks`` minus ``closed``, plus ``created``.

        Raises ``FrozenBlock`` if the change would close a retired block and
        ``InvalidBlocks`` if a block to close is not among ``blocks`` (a stale change).
        """
        closing = {b.id: b for b in self.closed}
        for b in self.closed:
            if b.state == BlockState.RETIRED:
                raise FrozenBlock(f"block {b.id} is retired and cannot be closed")
        out: list[Block] = []
        found = 0
        for b in blocks:
            if b.id in closing:
                if closing[b.id] != b:
                    raise InvalidBlocks(f"block {b.id} changed since the change was computed")
                found += 1
            else:
                out.append(b)
        if found != len(closing):
            raise InvalidBlocks("the change closes blocks that are not live")
        out.extend(self.created)
        return out


# ---------------------------------------------------------------------------------------------
# Checks


def _check_quantity(quantity: object) -> int:
    if type(quantity) is not int:
        raise InvalidQuantity("a quantity is a whole number of credits")
    if quantity <= 0:
        raise InvalidQuantity("a quantity is positive")
    return quantity


def _range_problem(b: Block) -> str | None:
    if type(b.serial_start) is not int or type(b.serial_end) is not int:
        return f"block {b.id}: serials are integers"
    if b.serial_start < 0:
        return f"block {b.id}: serial_start {b.serial_start} is negative"
    if b.serial_end < b.serial_start:
        return f"block {b.id}: serial_end {b.serial_end} < serial_start {b.serial_start}"
    return None


def _state_problem(b: Block) -> str | None:
    if b.state not in _STATES:
        return f"block {b.id}: unknown state {b.state!r}"
    if b.state == BlockState.ACTIVE and (b.hold_ref is not None or b.retirement_ref is not None):
        return f"block {b.id}: an active block has no hold or retirement ref"
    if b.state == BlockState.HELD and (b.hold_ref is None or b.retirement_ref is not None):
        return f"block {b.id}: a held block has a hold ref and no retirement ref"
    if b.state == BlockState.RETIRED and (b.retirement_ref is None or b.hold_ref is not None):
        return f"block {b.id}: a retired block has a retirement ref and no hold ref"
    return None


def _validated(blocks: Iterable[Block]) -> list[Block]:
    """The blocks as a list, after per-block checks, one batch and unique ids (O(n))."""
    items = list(blocks)
    ids: set[uuid.UUID] = set()
    batch: uuid.UUID | None = None
    for b in items:
        problem = _range_problem(b) or _state_problem(b)
        if problem:
            raise InvalidBlocks(problem)
        if b.id in ids:
            raise InvalidBlocks(f"block {b.id} appears twice")
        ids.add(b.id)
        if batch is None:
            batch = b.batch_id
        elif b.batch_id != batch:
            raise InvalidBlocks("blocks of several batches were passed to one operation")
    return items


def check_partition(
    batch_serial_start: int, batch_serial_end: int, blocks: Iterable[Block]
) -> list[str]:
    """Violations of "the live blocks partition the batch range exactly"; empty when it holds.

    Reports bad ranges, inconsistent state/ref fields, duplicate ids, mixed batches, blocks
    out of the batch range, overlaps and gaps (each gap and overlap once, as serial ranges).
    """
    if batch_serial_end < batch_serial_start:
        return [f"batch range {batch_serial_start}-{batch_serial_end} is empty or reversed"]
    problems: list[str] = []
    items = list(blocks)
    if len({b.batch_id for b in items}) > 1:
        problems.append("blocks of several batches")
    ids: set[uuid.UUID] = set()
    good: list[Block] = []
    for b in items:
        if b.id in ids:
            problems.append(f"block {b.id} appears twice")
        ids.add(b.id)
        state_problem = _state_problem(b)
        if state_problem:
            problems.append(state_problem)
        range_problem = _range_problem(b)
        if range_problem:
            problems.append(range_problem)
            continue
        if b.serial_start < batch_serial_start or b.serial_end > batch_serial_end:
            problems.append(
                f"block {b.id}: {b.serial_start}-{b.serial_end} lies outside the batch range "
                f"{batch_serial_start}-{batch_serial_end}"
            )
        good.append(b)
    good.sort(key=lambda b: (b.serial_start, b.serial_end))
    reach = batch_serial_start - 1  # highest serial covered so far
    reach_block: Block | None = None
    for b in good:
        if reach_block is not None and b.serial_start <= reach:
            problems.append(
                f"overlap {b.serial_start}-{min(reach, b.serial_end)}: "
                f"blocks {reach_block.id} and {b.id}"
            )
        gap_start = max(reach + 1, batch_serial_start)
        gap_end = min(b.serial_start - 1, batch_serial_end)
        if gap_start <= gap_end:
            problems.append(f"gap {gap_start}-{gap_end}")
        if b.serial_end > reach:
            reach, reach_block = b.serial_end, b
    if reach < batch_serial_end:
        problems.append(f"gap {max(reach + 1, batch_serial_start)}-{batch_serial_end}")
    return problems


def holder_totals(blocks: Iterable[Block]) -> dict[tuple[uuid.UUID, BlockState], int]:
    """Credits per (holder, state); only non-zero totals appear."""
    out: dict[tuple[uuid.UUID, BlockState], int] = defaultdict(int)
    for b in blocks:
        out[(b.holder, b.state)] += b.quantity
    return dict(out)


def hold_totals(blocks: Iterable[Block]) -> dict[uuid.UUID, int]:
    """Credits per hold ref (held blocks only)."""
    out: dict[uuid.UUID, int] = defaultdict(int)
    for b in blocks:
        if b.state == BlockState.HELD and b.hold_ref is not None:
            out[b.hold_ref] += b.quantity
    return dict(out)


def retirement_totals(blocks: Iterable[Block]) -> dict[uuid.UUID, int]:
    """Credits per retirement ref (retired blocks only)."""
    out: dict[uuid.UUID, int] = defaultdict(int)
    for b in blocks:
        if b.state == BlockState.RETIRED and b.retirement_ref is not None:
            out[b.retirement_ref] += b.quantity
    return dict(out)


# ---------------------------------------------------------------------------------------------
# Selection


def _select(candidates: Sequence[Block], quantity: int, what: str) -> Selection:
    """Lowest serials first; only the last portion may be partial (its low end is taken)."""
    available = sum(b.quantity for b in candidates)
    if quantity > available:
        raise InsufficientCredits(
            f"{what}: asked for {quantity}, only {available} available",
            requested=quantity,
            available=available,
        )
    portions: list[Portion] = []
    remaining = quantity
    for b in sorted(candidates, key=lambda b: b.serial_start):
        if remaining == 0:
            break
        n = min(remaining, b.quantity)
        portions.append(Portion(b, n))
        remaining -= n
    return Selection(tuple(portions))


def take(
    blocks: Iterable[Block],
    holder: uuid.UUID,
    quantity: int,
    from_state: BlockState = BlockState.ACTIVE,
    *,
    hold_ref: uuid.UUID | None = None,
) -> Selection:
    """Which of ``holder``'s blocks in ``from_state`` supply ``quantity`` credits.

    Fixed rule: lowest serials first; a split block gives its LOW end
    (``[start, start + q - 1]``). With ``from_state=held``, ``hold_ref`` narrows the
    candidates to one hold. Retired blocks can never be taken (``FrozenBlock``).
    """
    _check_quantity(quantity)
    items = _validated(blocks)
    if from_state == BlockState.RETIRED:
        raise FrozenBlock("retired credits are frozen and cannot be taken")
    candidates = [
        b
        for b in items
        if b.holder == holder
        and b.state == from_state
        and (hold_ref is None or b.hold_ref == hold_ref)
    ]
    return _select(candidates, quantity, f"holder {holder} ({from_state})")


def _insufficient_detail(items: Sequence[Block], holder: uuid.UUID) -> str:
    held = sum(b.quantity for b in items if b.holder == holder and b.state == BlockState.HELD)
    suffix = f"; {held} more are held and cannot be used" if held else ""
    return f"holder {holder} (active credits{suffix})"


# ---------------------------------------------------------------------------------------------
# The one mover behind every operation


def _move(
    items: Sequence[Block],
    selection: Selection,
    new_id: IdFactory,
    *,
    to_holder: uuid.UUID,
    to_state: BlockState,
    hold_ref: uuid.UUID | None = None,
    retirement_ref: uuid.UUID | None = None,
) -> BlockChange:
    closed: list[Block] = []
    remainders: list[Block] = []
    moved: list[Movement] = []
    # (start, end, parent ids) of everything that ends up in the destination
    pieces: list[tuple[int, int, tuple[uuid.UUID, ...]]] = []
    for p in selection.portions:
        b = p.block
        closed.append(b)
        moved.append(
            Movement(p.serial_start, p.serial_end, b.id, b.holder, b.state, to_holder, to_state)
        )
        pieces.append((p.serial_start, p.serial_end, (b.id,)))
        if not p.is_whole:
            remainders.append(
                replace(b, id=new_id(), serial_start=p.serial_end + 1, parent_ids=(b.id,))
            )
    batch_id = selection.portions[0].block.batch_id

    if to_state != BlockState.RETIRED:
        # Touching live blocks with the destination's merge key join the run.
        taken = {b.id for b in closed}
        by_start: dict[int, Block] = {}
        by_end: dict[int, Block] = {}
        for b in items:
            if (
                b.holder == to_holder
                and b.state == to_state
                and b.hold_ref == hold_ref
                and b.id not in taken
            ):
                by_start[b.serial_start] = b
                by_end[b.serial_end] = b
        neighbours: dict[uuid.UUID, Block] = {}
        for start, end, _ in pieces:
            for n in (by_end.get(start - 1), by_start.get(end + 1)):
                if n is not None:
                    neighbours[n.id] = n
        for n in neighbours.values():
            closed.append(n)
            pieces.append((n.serial_start, n.serial_end, (n.id,)))
        pieces.sort(key=lambda piece: piece[0])

    runs: list[tuple[int, int, list[uuid.UUID]]] = []
    for start, end, parents in pieces:
        if runs and start <= runs[-1][1]:
            raise InvalidBlocks(f"blocks overlap at serial {start}")
        if runs and start == runs[-1][1] + 1:
            run_start, _, run_parents = runs[-1]
            runs[-1] = (run_start, end, run_parents + list(parents))
        else:
            runs.append((start, end, list(parents)))

    created = remainders + [
        Block(
            id=new_id(),
            batch_id=batch_id,
            holder=to_holder,
            serial_start=start,
            serial_end=end,
            state=to_state,
            parent_ids=tuple(dict.fromkeys(parents)),
            hold_ref=hold_ref,
            retirement_ref=retirement_ref,
        )
        for start, end, parents in runs
    ]
    return BlockChange(
        closed=tuple(sorted(closed, key=lambda b: b.serial_start)),
        created=tuple(sorted(created, key=lambda b: b.serial_start)),
        moved=tuple(moved),
    )


# ---------------------------------------------------------------------------------------------
# Operations


def issue(
    batch_id: uuid.UUID,
    holder: uuid.UUID,
    serial_start: int,
    serial_end: int,
    new_id: IdFactory,
) -> BlockChange:
    """The first block of a batch: the whole range, active, owned by ``holder``."""
    block = Block(new_id(), batch_id, holder, serial_start, serial_end)
    problem = _range_problem(block)
    if problem:
        raise InvalidBlocks(problem)
    movement = Movement(serial_start, serial_end, None, None, None, holder, BlockState.ACTIVE)
    return BlockChange(closed=(), created=(block,), moved=(movement,))


def transfer(
    blocks: Iterable[Block],
    from_holder: uuid.UUID,
    to_holder: uuid.UUID,
    quantity: int,
    new_id: IdFactory,
) -> BlockChange:
    """Move ``quantity`` ACTIVE credits of ``from_holder`` to ``to_holder`` (as active).

    Take rule and merge rule as in the module docstring. Held and retired credits are never
    taken: asking for more than the active quantity raises ``InsufficientCredits``.
    """
    _check_quantity(quantity)
    items = _validated(blocks)
    if from_holder == to_holder:
        raise InvalidOperation("a transfer needs two different holders")
    sources = [b for b in items if b.holder == from_holder and b.state == BlockState.ACTIVE]
    selection = _select(sources, quantity, _insufficient_detail(items, from_holder))
    return _move(items, selection, new_id, to_holder=to_holder, to_state=BlockState.ACTIVE)


def hold(
    blocks: Iterable[Block],
    holder: uuid.UUID,
    quantity: int,
    hold_ref: uuid.UUID,
    new_id: IdFactory,
) -> BlockChange:
    """Mark ``quantity`` of ``holder``'s active credits held by ``hold_ref``.

    A hold ref may be topped up by later calls, but only by the same holder
    (``InvalidOperation`` otherwise). Held pieces merge with touching blocks of the same hold.
    """
    _check_quantity(quantity)
    items = _validated(blocks)
    for b in items:
        if b.state == BlockState.HELD and b.hold_ref == hold_ref and b.holder != holder:
            raise InvalidOperation(f"hold {hold_ref} belongs to another holder")
    sources = [b for b in items if b.holder == holder and b.state == BlockState.ACTIVE]
    selection = _select(sources, quantity, _insufficient_detail(items, holder))
    return _move(
        items, selection, new_id, to_holder=holder, to_state=BlockState.HELD, hold_ref=hold_ref
    )


def _held_by(items: Sequence[Block], hold_ref: uuid.UUID) -> tuple[uuid.UUID, list[Block]]:
    held = [b for b in items if b.state == BlockState.HELD and b.hold_ref == hold_ref]
    if not held:
        raise UnknownHold(f"no credits are held by {hold_ref}")
    holders = {b.holder for b in held}
    if len(holders) > 1:
        raise InvalidBlocks(f"hold {hold_ref} spans several holders")
    return held[0].holder, held


def release(
    blocks: Iterable[Block],
    hold_ref: uuid.UUID,
    quantity: int | None,
    new_id: IdFactory,
) -> BlockChange:
    """Return ``quantity`` (None: all) credits of a hold to its holder as active.

    Lowest held serials first; released pieces merge with the holder's touching active blocks.
    """
    if quantity is not None:
        _check_quantity(quantity)
    items = _validated(blocks)
    holder, held = _held_by(items, hold_ref)
    wanted = sum(b.quantity for b in held) if quantity is None else quantity
    selection = _select(held, wanted, f"hold {hold_ref}")
    return _move(items, selection, new_id, to_holder=holder, to_state=BlockState.ACTIVE)


def settle_hold(
    blocks: Iterable[Block],
    hold_ref: uuid.UUID,
    to_holder: uuid.UUID,
    quantity: int | None,
    new_id: IdFactory,
) -> BlockChange:
    """Deliver ``quantity`` (None: all) credits of a hold to ``to_holder`` as active.

    Lowest held serials first; the rest of the hold stays held. Settling to the hold's own
    holder is the same as ``release``.
    """
    if quantity is not None:
        _check_quantity(quantity)
    items = _validated(blocks)
    _, held = _held_by(items, hold_ref)
    wanted = sum(b.quantity for b in held) if quantity is None else quantity
    selection = _select(held, wanted, f"hold {hold_ref}")
    return _move(items, selection, new_id, to_holder=to_holder, to_state=BlockState.ACTIVE)


def settle_hold_many(
    blocks: Iterable[Block],
    hold_ref: uuid.UUID,
    deliveries: Sequence[tuple[uuid.UUID, int]],
    new_id: IdFactory,
    *,
    release_rest: bool = False,
) -> BlockChange:
    """``settle_hold`` for each ``(to_holder, quantity)`` of ``deliveries`` in turn, then
    (``release_rest``) ``release`` of what the hold has left, as ONE change.

    The live blocks after it are those the calls one by one would leave (same serials, holders,
    states and refs; ids differ). Intermediate blocks (created by one step and closed by a
    later one) are never returned: the change closes only input blocks, and lineage skips the
    intermediates (a created block's parents are the input blocks its serials came from).
    Each step sees only the hold's blocks and the recipient's, so the cost is linear in the
    number of deliveries (an auction close delivers to a thousand winners at once).
    """
    if not deliveries and not release_rest:
        raise InvalidOperation("nothing to settle")
    items = _validated(blocks)
    holder, _ = _held_by(items, hold_ref)
    live: dict[uuid.UUID, dict[uuid.UUID, Block]] = defaultdict(dict)
    for b in items:
        live[b.holder][b.id] = b
    closed: dict[uuid.UUID, Block] = {}
    created: dict[uuid.UUID, Block] = {}
    ancestry: dict[uuid.UUID, tuple[uuid.UUID, ...]] = {}
    moved: list[Movement] = []

    def origins(parents: tuple[uuid.UUID, ...]) -> tuple[uuid.UUID, ...]:
        return tuple(dict.fromkeys(a for p in parents for a in ancestry.get(p, (p,))))

    def absorb(change: BlockChange) -> None:
        for b in change.closed:
            del live[b.holder][b.id]
            if created.pop(b.id, None) is not None:
                ancestry[b.id] = origins(b.parent_ids)
            else:
                closed[b.id] = b
        for b in change.created:
            live[b.holder][b.id] = b
            created[b.id] = b
        moved.extend(change.moved)

    def scope(to_holder: uuid.UUID) -> list[Block]:
        held = [b for b in live[holder].values() if b.hold_ref == hold_ref]
        return (
            list(live[holder].values())
            if to_holder == holder
            else held + list(live[to_holder].values())
        )

    for to_holder, quantity in deliveries:
        absorb(settle_hold(scope(to_holder), hold_ref, to_holder, quantity, new_id))
    if release_rest and any(b.hold_ref == hold_ref for b in live[holder].values()):
        absorb(release(live[holder].values(), hold_ref, None, new_id))
    return BlockChange(
        closed=tuple(sorted(closed.values(), key=lambda b: b.serial_start)),
        created=tuple(
            sorted(
                (replace(b, parent_ids=origins(b.parent_ids)) for b in created.values()),
                key=lambda b: b.serial_start,
            )
        ),
        moved=tuple(moved),
    )


def retire(
    blocks: Iterable[Block],
    holder: uuid.UUID,
    quantity: int,
    retirement_ref: uuid.UUID,
    new_id: IdFactory,
) -> BlockChange:
    """Retire ``quantity`` of ``holder``'s active credits for one retirement, forever.

    A retirement ref is used once per batch (``InvalidOperation`` if retired blocks already
    carry it), so a retried retirement cannot retire twice. The retired pieces of this call
    are coalesced with each other only.
    """
    _check_quantity(quantity)
    items = _validated(blocks)
    for b in items:
        if b.state == BlockState.RETIRED and b.retirement_ref == retirement_ref:
            raise InvalidOperation(f"retirement {retirement_ref} already retired credits here")
    sources = [b for b in items if b.holder == holder and b.state == BlockState.ACTIVE]
    selection = _select(sources, quantity, _insufficient_detail(items, holder))
    return _move(
        items,
        selection,
        new_id,
        to_holder=holder,
        to_state=BlockState.RETIRED,
        retirement_ref=retirement_ref,
    )


# ---------------------------------------------------------------------------------------------
# Display form

SERIAL_PREFIX = "JCR"
_SERIAL_RE = re.compile(
    r"^JCR-(?P<project>\S+)-(?P<vintage>\d{4})-(?P<start>\d{9,})-(?P<end>\d{9,})$"
)


@dataclass(frozen=True, slots=True)
class SerialLabel:
    project_code: str
    vintage: int
    serial_start: int
    serial_end: int


def format_serial(project_code: str, vintage: int, serial_start: int, serial_end: int) -> str:
    """Display form of a block: ``JCR-<project>-<vintage>-<start:09d>-<end:09d>``.

    ``project_code`` is our project code (no whitespace; it may contain hyphens, e.g.
    ``P0123-EN-S-001``), ``vintage`` the 4-digit vintage year, start and end the inclusive
    serials zero-padded to 9 digits (longer if they need more). Example:
    ``format_serial("P0042", 2024, 1, 500) == "JCR-P0042-2024-000000001-000000500"``.
    This is our own display form, not the J-Credit registry's serial layout.
    """
    if not project_code or any(c.isspace() for c in project_code):
        raise SerialError("a project code is non-empty and has no whitespace")
    if type(vintage) is not int or not 1000 <= vintage <= 9999:
        raise SerialError("a vintage is a 4-digit year")
    if type(serial_start) is not int or type(serial_end) is not int:
        raise SerialError("serials are integers")
    if serial_start < 0 or serial_end < serial_start:
        raise SerialError("a serial range is non-negative with end >= start")
    return f"{SERIAL_PREFIX}-{project_code}-{vintage:04d}-{serial_start:09d}-{serial_end:09d}"


def parse_serial(text: str) -> SerialLabel:
    """Inverse of ``format_serial``."""
    m = _SERIAL_RE.match(text)
    if m is None:
        raise SerialError(f"not a serial label: {text!r}")
    label = SerialLabel(m["project"], int(m["vintage"]), int(m["start"]), int(m["end"]))
    if label.serial_end < label.serial_start:
        raise SerialError(f"serial range reversed in {text!r}")
    return label
