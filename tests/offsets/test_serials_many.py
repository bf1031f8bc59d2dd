"""``serials.settle_hold_many``: one change for many deliveries out of a hold (an auction close
delivering a supply lot to every winner). Pure, property-based: it leaves the same live blocks
as ``settle_hold`` per delivery then ``release`` one call at a time, closes only input
blocks, and keeps lineage walkable (every closed block is a parent of a created one, and a
created block's serials lie within its parents')."""

from __future__ import annotations

import itertools
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.offsets.serials import (
    Block,
    BlockState,
    InsufficientCredits,
    InvalidOperation,
    check_partition,
    release,
    settle_hold,
    settle_hold_many,
)

BATCH = uuid.UUID(int=0xBA7C4)
SELLER = uuid.UUID(int=0x5E11)
BUYERS = [uuid.UUID(int=0xB0 + i) for i in range(4)]
HOLD = uuid.UUID(int=0x401)


def ids(start: int = 1) -> itertools.count[int]:
    return itertools.count(start)


def factory(counter: itertools.count[int]) -> uuid.UUID:
    return uuid.UUID(int=next(counter))


Key = tuple[uuid.UUID, BlockState, uuid.UUID | None, int, int]


def shape(blocks: list[Block]) -> list[Key]:
    """Live blocks without their ids."""
    return sorted((b.holder, b.state, b.hold_ref, b.serial_start, b.serial_end) for b in blocks)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Block], list[tuple[uuid.UUID, int]], bool]:
    """A batch's blocks (the seller's held lot among active blocks of the seller and the
    buyers, any order of segments) and deliveries that fit in the hold."""
    sizes = draw(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10))
    owners = draw(
        st.lists(
            st.sampled_from(["held", "seller", *range(len(BUYERS))]),
            min_size=len(sizes),
            max_size=len(sizes),
        )
    )
    if "held" not in owners:
        owners[0] = "held"
    counter = ids(10_000)
    blocks = []
    start = 1
    for size, owner in zip(sizes, owners, strict=True):
        if owner == "held":
            holder, state, ref = SELLER, BlockState.HELD, HOLD
        elif owner == "seller":
            holder, state, ref = SELLER, BlockState.ACTIVE, None
        else:
            holder, state, ref = BUYERS[int(owner)], BlockState.ACTIVE, None
        blocks.append(
            Block(factory(counter), BATCH, holder, start, start + size - 1, state, (), ref)
        )
        start += size
    held = sum(b.quantity for b in blocks if b.hold_ref == HOLD)
    deliveries: list[tuple[uuid.UUID, int]] = []
    left = held
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        if not left:
            break
        quantity = draw(st.integers(min_value=1, max_value=left))
        deliveries.append((draw(st.sampled_from(BUYERS)), quantity))
        left -= quantity
    release_rest = draw(st.booleans()) if deliveries else True
    return blocks, deliveries, release_rest


@settings(max_examples=300)
@given(scenarios())
def test_many_equals_one_by_one(
    scenario: tuple[list[Block], list[tuple[uuid.UUID, int]], bool],
) -> None:
    blocks, deliveries, release_rest = scenario
    counter = ids()
    change = settle_hold_many(
        blocks, HOLD, deliveries, lambda: factory(counter), release_rest=release_rest
    )
    after = change.apply(blocks)

    counter = ids()
    live = list(blocks)
    for buyer, quantity in deliveries:
        live = settle_hold(live, HOLD, buyer, quantity, lambda: factory(counter)).apply(live)
    if release_rest and any(b.hold_ref == HOLD for b in live):
        live = release(live, HOLD, None, lambda: factory(counter)).apply(live)

    assert shape(after) == shape(live)
    assert check_partition(1, max(b.serial_end for b in blocks), after) == []
    assert change.quantity == sum(q for _, q in deliveries) + (
        sum(b.quantity for b in blocks if b.hold_ref == HOLD) - sum(q for _, q in deliveries)
        if release_rest
        else 0
    )
    # Lineage: only input blocks are closed, each is a parent of a created block, and a
    # created block's serials lie within its parents' serials.
    inputs = {b.id: b for b in blocks}
    assert all(b.id in inputs for b in change.closed)
    parents = {p for b in change.created for p in b.parent_ids}
    assert {b.id for b in change.closed} <= parents
    for b in change.created:
        assert set(b.parent_ids) <= set(inputs)
        covered = {
            s for p in b.parent_ids for s in range(inputs[p].serial_start, inputs[p].serial_end + 1)
        }
        assert set(range(b.serial_start, b.serial_end + 1)) <= covered


def test_deliveries_take_the_lowest_serials_in_order() -> None:
    counter = ids(100)
    lot = Block(factory(counter), BATCH, SELLER, 1, 100, BlockState.HELD, (), HOLD)
    change = settle_hold_many(
        [lot], HOLD, [(BUYERS[0], 30), (BUYERS[1], 20), (BUYERS[0], 10)], lambda: factory(counter)
    )
    assert shape(change.apply([lot])) == [
        (BUYERS[0], BlockState.ACTIVE, None, 1, 30),
        (BUYERS[0], BlockState.ACTIVE, None, 51, 60),
        (BUYERS[1], BlockState.ACTIVE, None, 31, 50),
        (SELLER, BlockState.HELD, HOLD, 61, 100),
    ]
    assert [b.id for b in change.closed] == [lot.id]
    assert all(b.parent_ids == (lot.id,) for b in change.created)


def test_refuses_more_than_the_hold_and_nothing_to_do() -> None:
    counter = ids(100)
    lot = Block(factory(counter), BATCH, SELLER, 1, 10, BlockState.HELD, (), HOLD)
    with pytest.raises(InsufficientCredits):
        settle_hold_many([lot], HOLD, [(BUYERS[0], 6), (BUYERS[1], 5)], lambda: factory(counter))
    with pytest.raises(InvalidOperation):
        settle_hold_many([lot], HOLD, [], lambda: factory(counter))
