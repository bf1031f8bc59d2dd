"""Serial blocks (app/offsets/serials.py): table-driven cases and property-based tests.

Pure: no database. Blocks are written as short specs, ``"A 1-10"`` (active), ``"A 1-10 h1"``
(held by hold h1), ``"A 1-10 r1"`` (retired by retirement r1), to keep the tables readable.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app.offsets.serials import (
    Block,
    BlockChange,
    BlockState,
    FrozenBlock,
    IdFactory,
    InsufficientCredits,
    InvalidBlocks,
    InvalidOperation,
    InvalidQuantity,
    SerialError,
    SerialLabel,
    UnknownHold,
    check_partition,
    format_serial,
    hold,
    hold_totals,
    holder_totals,
    issue,
    parse_serial,
    release,
    retire,
    retirement_totals,
    settle_hold,
    take,
    transfer,
)

ACTIVE, HELD, RETIRED = BlockState.ACTIVE, BlockState.HELD, BlockState.RETIRED
BATCH = uuid.UUID(int=0xBA7C4)
OTHER_BATCH = uuid.UUID(int=0xBA7C5)
HOLDERS = {name: uuid.UUID(int=0xA0 + i) for i, name in enumerate("ABCD")}
A, B, C, D = (HOLDERS[n] for n in "ABCD")
REFS = {f"h{i}": uuid.UUID(int=0x400 + i) for i in range(1, 4)} | {
    f"r{i}": uuid.UUID(int=0x800 + i) for i in range(1, 7)
}
H1, H2, H3 = REFS["h1"], REFS["h2"], REFS["h3"]
R1, R2 = REFS["r1"], REFS["r2"]
NAMES = {v: k for k, v in (HOLDERS | REFS).items()}


class Ids:
    """Deterministic id factory: 1, 2, 3, ..."""

    def __init__(self, start: int = 1) -> None:
        self._next = itertools.count(start)

    def __call__(self) -> uuid.UUID:
        return uuid.UUID(int=next(self._next))


def build(specs: Iterable[str], batch: uuid.UUID = BATCH) -> list[Block]:
    """Blocks from specs; their ids start at 10,000 so they never meet an ``Ids()`` id."""
    ids = Ids(10_000)
    out = []
    for spec in specs:
        holder, rng, *ref = spec.split()
        start, end = (int(x) for x in rng.split("-"))
        state, hold_ref, retirement_ref = ACTIVE, None, None
        if ref and ref[0].startswith("h"):
            state, hold_ref = HELD, REFS[ref[0]]
        elif ref:
            state, retirement_ref = RETIRED, REFS[ref[0]]
        out.append(
            Block(ids(), batch, HOLDERS[holder], start, end, state, (), hold_ref, retirement_ref)
        )
    return out


def spec(b: Block) -> str:
    ref = b.hold_ref or b.retirement_ref
    suffix = f" {NAMES[ref]}" if ref is not None else ""
    return f"{NAMES[b.holder]} {b.serial_start}-{b.serial_end}{suffix}"


def shape(blocks: Iterable[Block]) -> list[str]:
    return [spec(b) for b in sorted(blocks, key=lambda b: b.serial_start)]


def serials(blocks: Iterable[Block | tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for b in blocks:
        start, end = (b.serial_start, b.serial_end) if isinstance(b, Block) else b
        out.extend(range(start, end + 1))
    return sorted(out)


Op = Callable[[list[Block], IdFactory], BlockChange]


@dataclass(frozen=True)
class Case:
    name: str
    before: list[str]
    op: Op
    after: list[str]


# ---------------------------------------------------------------------------------------------
# Table: successful operations

CASES = [
    Case(
        "whole block moves",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, B, 10, new_id),
        ["B 1-10"],
    ),
    Case(
        "split moves the low end",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, B, 3, new_id),
        ["B 1-3", "A 4-10"],
    ),
    Case(
        "multi-block take, lowest serials first, last block split",
        ["A 11-20", "C 6-10", "A 1-5"],
        lambda bs, new_id: transfer(bs, A, B, 8, new_id),
        ["B 1-5", "C 6-10", "B 11-13", "A 14-20"],
    ),
    Case(
        "multi-block take merges through the receiver's block",
        ["A 1-5", "B 6-10", "A 11-20"],
        lambda bs, new_id: transfer(bs, A, B, 8, new_id),
        ["B 1-13", "A 14-20"],
    ),
    Case(
        "merge with the receiver's block on the right",
        ["A 1-10", "B 11-20"],
        lambda bs, new_id: transfer(bs, A, B, 10, new_id),
        ["B 1-20"],
    ),
    Case(
        "merge with the receiver's block on the left",
        ["B 1-10", "A 11-20"],
        lambda bs, new_id: transfer(bs, A, B, 5, new_id),
        ["B 1-15", "A 16-20"],
    ),
    Case(
        "no merge across a gap",
        ["A 1-10", "C 11-11", "B 12-20"],
        lambda bs, new_id: transfer(bs, A, B, 10, new_id),
        ["B 1-10", "C 11-11", "B 12-20"],
    ),
    Case(
        "no merge across holders",
        ["A 1-10", "C 11-20"],
        lambda bs, new_id: transfer(bs, A, B, 10, new_id),
        ["B 1-10", "C 11-20"],
    ),
    Case(
        "no merge with the receiver's held block",
        ["A 1-10", "B 11-20 h1"],
        lambda bs, new_id: transfer(bs, A, B, 10, new_id),
        ["B 1-10", "B 11-20 h1"],
    ),
    Case(
        "no merge with the receiver's retired block",
        ["A 1-10", "B 11-20 r1"],
        lambda bs, new_id: transfer(bs, A, B, 10, new_id),
        ["B 1-10", "B 11-20 r1"],
    ),
    Case(
        "transfer skips held credits",
        ["A 1-5 h1", "A 6-10"],
        lambda bs, new_id: transfer(bs, A, B, 3, new_id),
        ["A 1-5 h1", "B 6-8", "A 9-10"],
    ),
    Case(
        "transfer skips retired credits",
        ["A 1-5 r1", "A 6-10"],
        lambda bs, new_id: transfer(bs, A, B, 5, new_id),
        ["A 1-5 r1", "B 6-10"],
    ),
    Case(
        "hold marks the low end",
        ["A 1-10"],
        lambda bs, new_id: hold(bs, A, 4, H1, new_id),
        ["A 1-4 h1", "A 5-10"],
    ),
    Case(
        "topping up a hold merges with the same hold",
        ["A 1-4 h1", "A 5-10"],
        lambda bs, new_id: hold(bs, A, 3, H1, new_id),
        ["A 1-7 h1", "A 8-10"],
    ),
    Case(
        "no merge across holds",
        ["A 1-4 h1", "A 5-10"],
        lambda bs, new_id: hold(bs, A, 3, H2, new_id),
        ["A 1-4 h1", "A 5-7 h2", "A 8-10"],
    ),
    Case(
        "release partial: lowest held serials first",
        ["A 1-10 h1", "A 11-20"],
        lambda bs, new_id: release(bs, H1, 4, new_id),
        ["A 1-4", "A 5-10 h1", "A 11-20"],
    ),
    Case(
        "release the rest merges on both sides",
        ["A 1-4", "A 5-10 h1", "A 11-20"],
        lambda bs, new_id: release(bs, H1, None, new_id),
        ["A 1-20"],
    ),
    Case(
        "release spanning two held blocks of one hold",
        ["A 1-3 h1", "B 4-5", "A 6-10 h1"],
        lambda bs, new_id: release(bs, H1, 5, new_id),
        ["A 1-3", "B 4-5", "A 6-7", "A 8-10 h1"],
    ),
    Case(
        "settle partial",
        ["A 1-10 h1"],
        lambda bs, new_id: settle_hold(bs, H1, B, 6, new_id),
        ["B 1-6", "A 7-10 h1"],
    ),
    Case(
        "settle the rest merges with the receiver",
        ["B 1-6", "A 7-10 h1", "B 11-12"],
        lambda bs, new_id: settle_hold(bs, H1, B, None, new_id),
        ["B 1-12"],
    ),
    Case(
        "settle to the hold's own holder is a release",
        ["A 1-10 h1", "A 11-20"],
        lambda bs, new_id: settle_hold(bs, H1, A, None, new_id),
        ["A 1-20"],
    ),
    Case(
        "retire the low end",
        ["A 1-10"],
        lambda bs, new_id: retire(bs, A, 3, R1, new_id),
        ["A 1-3 r1", "A 4-10"],
    ),
    Case(
        "retired pieces of one call coalesce",
        ["A 1-5", "A 6-10"],
        lambda bs, new_id: retire(bs, A, 8, R2, new_id),
        ["A 1-8 r2", "A 9-10"],
    ),
    Case(
        "no merge with another retirement",
        ["A 1-5 r1", "A 6-10"],
        lambda bs, new_id: retire(bs, A, 5, R2, new_id),
        ["A 1-5 r1", "A 6-10 r2"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_operation(case: Case) -> None:
    before = build(case.before)
    snapshot = list(before)
    change = case.op(before, Ids())
    assert before == snapshot, "the input list was mutated"
    after = change.apply(before)
    assert shape(after) == case.after
    assert check_partition(1, max(b.serial_end for b in before), after) == []
    # every touched block is replaced by new blocks whose lineage names it
    closed_ids = {b.id for b in change.closed}
    assert closed_ids == {p for b in change.created for p in b.parent_ids}
    assert serials(change.closed) == serials(change.created)


def test_split_lineage_and_movement() -> None:
    (a,) = build(["A 1-10"])
    change = transfer([a], A, B, 3, Ids())
    moved, rest = change.created
    assert (moved.holder, moved.serial_start, moved.serial_end) == (B, 1, 3)
    assert (rest.holder, rest.serial_start, rest.serial_end) == (A, 4, 10)
    assert moved.parent_ids == rest.parent_ids == (a.id,)
    assert a.id not in {moved.id, rest.id}
    assert change.closed == (a,)
    (m,) = change.moved
    assert (m.serial_start, m.serial_end, m.quantity) == (1, 3, 3)
    assert (m.source_block_id, m.from_holder, m.from_state) == (a.id, A, ACTIVE)
    assert (m.to_holder, m.to_state) == (B, ACTIVE)
    assert change.quantity == 3


def test_merge_lineage_keeps_all_parents_in_serial_order() -> None:
    a1, b, a2 = build(["A 1-5", "B 6-10", "A 11-20"])
    change = transfer([a2, b, a1], A, B, 8, Ids())
    merged, rest = change.created
    assert (merged.holder, merged.serial_start, merged.serial_end) == (B, 1, 13)
    assert merged.parent_ids == (a1.id, b.id, a2.id)
    assert rest.parent_ids == (a2.id,)
    assert [(m.serial_start, m.serial_end, m.source_block_id) for m in change.moved] == [
        (1, 5, a1.id),
        (11, 13, a2.id),
    ]
    assert change.closed == (a1, b, a2)


def test_ids_come_from_the_factory_in_a_fixed_order() -> None:
    blocks = build(["A 1-5", "B 6-10", "A 11-20"])
    first = transfer(blocks, A, B, 8, Ids())
    second = transfer(blocks, A, B, 8, Ids())
    assert first == second
    assert {b.id for b in first.created} == {uuid.UUID(int=1), uuid.UUID(int=2)}


def test_issue() -> None:
    change = issue(BATCH, A, 101, 600, Ids())
    (block,) = change.created
    assert block == Block(uuid.UUID(int=1), BATCH, A, 101, 600)
    assert block.quantity == 500
    assert block.parent_ids == ()
    assert change.closed == ()
    (m,) = change.moved
    assert (m.from_holder, m.from_state, m.source_block_id, m.to_holder) == (None, None, None, A)
    assert change.apply([]) == [block]
    with pytest.raises(InvalidBlocks):
        issue(BATCH, A, 10, 9, Ids())


def test_take_is_lowest_serials_first() -> None:
    blocks = build(["A 21-30", "B 11-20", "A 1-5", "A 6-8 h1", "A 9-10"])
    selection = take(blocks, A, 9)
    assert [(p.serial_start, p.serial_end, p.is_whole) for p in selection.portions] == [
        (1, 5, True),
        (9, 10, True),
        (21, 22, False),
    ]
    assert selection.quantity == 9
    held = take(blocks, A, 2, HELD, hold_ref=H1)
    assert [(p.serial_start, p.serial_end) for p in held.portions] == [(6, 7)]


# ---------------------------------------------------------------------------------------------
# Table: operations that must fail, and change nothing


@dataclass(frozen=True)
class Refusal:
    name: str
    before: list[str]
    op: Op
    error: type[SerialError]


def take_retired(blocks: list[Block], holder: uuid.UUID) -> BlockChange:
    take(blocks, holder, 1, RETIRED)
    raise AssertionError("retired credits were taken")


REFUSALS = [
    Refusal(
        "held credits are not transferable",
        ["A 1-5", "A 6-10 h1"],
        lambda bs, new_id: transfer(bs, A, B, 6, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "held credits cannot be retired",
        ["A 1-5", "A 6-10 h1"],
        lambda bs, new_id: retire(bs, A, 6, R1, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "held credits cannot be held again",
        ["A 1-5", "A 6-10 h1"],
        lambda bs, new_id: hold(bs, A, 6, H2, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "retired credits are not transferable",
        ["A 1-5 r1", "A 6-10"],
        lambda bs, new_id: transfer(bs, A, B, 6, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "more than the holder has",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, B, 11, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "a holder with nothing",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, C, B, 1, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "release more than held",
        ["A 1-5 h1", "A 6-10"],
        lambda bs, new_id: release(bs, H1, 6, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "settle more than held",
        ["A 1-5 h1", "A 6-10"],
        lambda bs, new_id: settle_hold(bs, H1, B, 6, new_id),
        InsufficientCredits,
    ),
    Refusal(
        "zero quantity",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, B, 0, new_id),
        InvalidQuantity,
    ),
    Refusal(
        "negative quantity",
        ["A 1-10"],
        lambda bs, new_id: hold(bs, A, -1, H1, new_id),
        InvalidQuantity,
    ),
    Refusal(
        "fractional quantity",
        ["A 1-10"],
        lambda bs, new_id: retire(bs, A, 1.5, R1, new_id),  # type: ignore[arg-type]
        InvalidQuantity,
    ),
    Refusal(
        "boolean quantity",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, B, True, new_id),
        InvalidQuantity,
    ),
    Refusal(
        "string quantity",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, B, "3", new_id),  # type: ignore[arg-type]
        InvalidQuantity,
    ),
    Refusal(
        "zero release",
        ["A 1-10 h1"],
        lambda bs, new_id: release(bs, H1, 0, new_id),
        InvalidQuantity,
    ),
    Refusal(
        "transfer to oneself",
        ["A 1-10"],
        lambda bs, new_id: transfer(bs, A, A, 1, new_id),
        InvalidOperation,
    ),
    Refusal(
        "a hold belongs to one holder",
        ["A 1-5 h1", "B 6-10"],
        lambda bs, new_id: hold(bs, B, 1, H1, new_id),
        InvalidOperation,
    ),
    Refusal(
        "a retirement ref is used once",
        ["A 1-5 r1", "A 6-10"],
        lambda bs, new_id: retire(bs, A, 1, R1, new_id),
        InvalidOperation,
    ),
    Refusal(
        "release an unknown hold",
        ["A 1-5 h1", "A 6-10"],
        lambda bs, new_id: release(bs, H2, None, new_id),
        UnknownHold,
    ),
    Refusal(
        "settle an unknown hold",
        ["A 1-10"],
        lambda bs, new_id: settle_hold(bs, H1, B, 1, new_id),
        UnknownHold,
    ),
    Refusal(
        "blocks of two batches",
        ["A 1-10"],
        lambda bs, new_id: transfer([*bs, *build(["B 11-20"], batch=OTHER_BATCH)], A, B, 1, new_id),
        InvalidBlocks,
    ),
    Refusal(
        "a block passed twice",
        ["A 1-10"],
        lambda bs, new_id: transfer([*bs, *bs], A, B, 1, new_id),
        InvalidBlocks,
    ),
    Refusal(
        "a reversed range",
        ["A 1-10"],
        lambda bs, new_id: transfer([replace(bs[0], serial_end=0)], A, B, 1, new_id),
        InvalidBlocks,
    ),
    Refusal(
        "a held block without a hold ref",
        ["A 1-10"],
        lambda bs, new_id: transfer([replace(bs[0], state=HELD)], A, B, 1, new_id),
        InvalidBlocks,
    ),
    Refusal(
        "overlapping source blocks",
        ["A 1-10", "A 5-15"],
        lambda bs, new_id: transfer(bs, A, B, 12, new_id),
        InvalidBlocks,
    ),
    Refusal(
        "retired credits cannot be taken",
        ["A 1-10 r1"],
        lambda bs, new_id: take_retired(bs, A),
        FrozenBlock,
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.name for c in REFUSALS])
def test_refusal(case: Refusal) -> None:
    before = build(case.before)
    snapshot = list(before)
    ids = Ids()
    with pytest.raises(SerialError) as info:
        case.op(before, ids)
    assert type(info.value) is case.error, info.value
    assert isinstance(info.value, ValueError)
    assert before == snapshot


def test_insufficient_credits_says_how_many_are_held() -> None:
    blocks = build(["A 1-5", "A 6-10 h1"])
    with pytest.raises(InsufficientCredits, match="5 more are held") as info:
        transfer(blocks, A, B, 6, Ids())
    assert (info.value.requested, info.value.available) == (6, 5)


def test_apply_never_closes_a_retired_block() -> None:
    (r,) = build(["A 1-10 r1"])
    forged = BlockChange(closed=(r,), created=(replace(r, id=uuid.UUID(int=1)),), moved=())
    with pytest.raises(FrozenBlock):
        forged.apply([r])


def test_apply_refuses_a_stale_change() -> None:
    blocks = build(["A 1-10"])
    change = transfer(blocks, A, B, 3, Ids())
    after = change.apply(blocks)
    with pytest.raises(InvalidBlocks):
        change.apply(after)


# ---------------------------------------------------------------------------------------------
# Partition check and totals


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["A 1-4", "B 5-5", "C 6-10 h1", "A 11-20 r1"], []),
        (["A 1-4", "B 7-20"], ["gap 5-6"]),
        (["A 3-20"], ["gap 1-2"]),
        (["A 1-17"], ["gap 18-20"]),
        ([], ["gap 1-20"]),
        (["A 1-10", "B 8-20"], ["overlap 8-10"]),
        (["A 1-20", "B 5-6"], ["overlap 5-6"]),
        (["A 0-20"], ["outside the batch range"]),
        (["A 1-21"], ["outside the batch range"]),
        (["A 1-10", "B 11-20", "C 30-40"], ["outside the batch range"]),
    ],
)
def test_check_partition(specs: list[str], expected: list[str]) -> None:
    problems = check_partition(1, 20, build(specs))
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_check_partition_reports_malformed_blocks() -> None:
    a, b = build(["A 1-10", "B 11-20"])
    assert "serial_end 5 < serial_start 11" in " ".join(
        check_partition(1, 20, [a, replace(b, serial_end=5)])
    )
    assert any("appears twice" in p for p in check_partition(1, 20, [a, a, b]))
    assert any(
        "several batches" in p
        for p in check_partition(1, 20, [a, replace(b, batch_id=OTHER_BATCH)])
    )
    assert any("hold ref" in p for p in check_partition(1, 20, [a, replace(b, state=HELD)]))
    assert check_partition(5, 4, []) == ["batch range 5-4 is empty or reversed"]


def test_totals() -> None:
    blocks = build(["A 1-4", "B 5-5", "A 6-10 h1", "A 11-12 h2", "A 13-20 r1", "B 21-22"])
    assert holder_totals(blocks) == {(A, ACTIVE): 4, (B, ACTIVE): 3, (A, HELD): 7, (A, RETIRED): 8}
    assert hold_totals(blocks) == {H1: 5, H2: 2}
    assert retirement_totals(blocks) == {R1: 8}


# ---------------------------------------------------------------------------------------------
# Display form


def test_format_serial() -> None:
    assert format_serial("P0042", 2024, 1, 500) == "JCR-P0042-2024-000000001-000000500"
    assert format_serial("EN-S-001", 2023, 7, 7) == "JCR-EN-S-001-2023-000000007-000000007"
    assert format_serial("P1", 2030, 1, 12_345_678_901) == "JCR-P1-2030-000000001-12345678901"
    for bad in [("", 2024, 1, 2), ("P 1", 2024, 1, 2), ("P1", 24, 1, 2), ("P1", 2024, 3, 2)]:
        with pytest.raises(SerialError):
            format_serial(*bad)
    for text in [
        "JCR-P1-2024-1-2",
        "XYZ-P1-2024-000000001-000000002",
        "JCR-P1-2024-000000003-000000002",
    ]:
        with pytest.raises(SerialError):
            parse_serial(text)


@given(
    project=st.from_regex(r"[A-Z][A-Z0-9-]{0,15}", fullmatch=True),
    vintage=st.integers(1000, 9999),
    start=st.integers(0, 10**12),
    size=st.integers(0, 10**6),
)
def test_serial_label_round_trip(project: str, vintage: int, start: int, size: int) -> None:
    text = format_serial(project, vintage, start, start + size)
    assert parse_serial(text) == SerialLabel(project, vintage, start, start + size)


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def partitions(draw: st.DrawFn) -> tuple[int, int, list[Block]]:
    """A batch range and blocks that partition it, with random holders and states."""
    start = draw(st.integers(0, 10**9))
    size = draw(st.integers(1, 300))
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=40)) if size > 1 else set())
    bounds = [0, *cuts, size]
    ids = Ids(1)
    blocks = []
    for lo, hi in itertools.pairwise(bounds):
        holder = draw(st.sampled_from([A, B, C, D]))
        kind = draw(st.sampled_from(list(BlockState)))
        blocks.append(
            Block(
                ids(),
                BATCH,
                holder,
                start + lo,
                start + hi - 1,
                kind,
                (),
                H1 if kind == HELD else None,
                R1 if kind == RETIRED else None,
            )
        )
    return start, start + size - 1, draw(st.permutations(blocks))


@given(partitions(), st.data())
def test_check_partition_finds_every_damage(
    partition: tuple[int, int, list[Block]], data: st.DataObject
) -> None:
    lo, hi, blocks = partition
    assert check_partition(lo, hi, blocks) == []
    victim = data.draw(st.sampled_from(blocks))
    without = [b for b in blocks if b is not victim]
    assert any(p.startswith("gap") for p in check_partition(lo, hi, without))
    doubled = [*blocks, replace(victim, id=uuid.uuid4())]
    assert any(p.startswith("overlap") for p in check_partition(lo, hi, doubled))
    stretched = [replace(b, serial_end=hi + 1) if b.serial_end == hi else b for b in blocks]
    assert any("outside" in p for p in check_partition(lo, hi, stretched))


@given(partitions(), st.integers(1, 300), st.sampled_from([A, B, C, D]))
def test_take_gives_the_lowest_serials(
    partition: tuple[int, int, list[Block]], quantity: int, holder: uuid.UUID
) -> None:
    _, _, blocks = partition
    own = serials(b for b in blocks if b.holder == holder and b.state == ACTIVE)
    if quantity > len(own):
        with pytest.raises(InsufficientCredits):
            take(blocks, holder, quantity)
        return
    selection = take(blocks, holder, quantity)
    assert serials((p.serial_start, p.serial_end) for p in selection.portions) == own[:quantity]
    assert all(p.is_whole for p in selection.portions[:-1])


QUANTITIES = st.integers(-1, 25) | st.integers(1, 220)
HOLDER = st.sampled_from([A, B, C, D])
HOLD_REF = st.sampled_from([H1, H2, H3])
RETIREMENT_REFS = [REFS[f"r{i}"] for i in range(1, 7)]
RETIREMENT_REF = st.sampled_from(RETIREMENT_REFS)


class SerialMachine(RuleBasedStateMachine):
    """One batch issued to A, then random operations between four holders.

    The model is plain integers: credits per (holder, state), per hold and per retirement.
    """

    def __init__(self) -> None:
        super().__init__()
        self.new_id = Ids()
        self.blocks: list[Block] = []
        self.lo = self.hi = 0
        self.balance: Counter[tuple[uuid.UUID, BlockState]] = Counter()
        self.holds: dict[uuid.UUID, tuple[uuid.UUID, int]] = {}
        self.retirements: dict[uuid.UUID, int] = {}
        self.retired_seen: dict[uuid.UUID, Block] = {}
        self.all_ids: set[uuid.UUID] = set()

    @initialize(start=st.integers(1, 10**9), size=st.integers(1, 200))
    def issue_batch(self, start: int, size: int) -> None:
        self.lo, self.hi = start, start + size - 1
        change = issue(BATCH, A, self.lo, self.hi, self.new_id)
        self.blocks = change.apply([])
        self.all_ids = {b.id for b in self.blocks}
        self.balance[(A, ACTIVE)] = size

    # -- the harness ------------------------------------------------------------------------

    def run(
        self,
        op: Callable[[list[Block]], BlockChange],
        error: type[SerialError] | None,
        sources: list[Block],
        quantity: int,
    ) -> None:
        """Run ``op``; it must raise exactly ``error``, or move the ``quantity`` lowest
        serials of ``sources`` and conserve every serial."""
        before = self.blocks
        snapshot = list(before)
        if error is not None:
            with pytest.raises(SerialError) as info:
                op(before)
            assert type(info.value) is error, repr(info.value)
            assert before == snapshot, "a refused operation changed its input"
            return
        change = op(before)
        assert before == snapshot, "an operation mutated its input"
        closed_ids = {b.id for b in change.closed}
        assert len(closed_ids) == len(change.closed)
        assert all(b in snapshot and b.state != RETIRED for b in change.closed)
        created_ids = {b.id for b in change.created}
        assert len(created_ids) == len(change.created)
        assert not created_ids & self.all_ids
        self.all_ids |= created_ids
        # no serial lost or doubled inside the change
        assert serials(change.closed) == serials(change.created)
        # the fixed take rule: the lowest serials of the sources move
        moved = serials((m.serial_start, m.serial_end) for m in change.moved)
        assert moved == serials(sources)[:quantity]
        # lineage: parents are closed blocks, every closed block has a child, children lie
        # inside their parents
        by_id = {b.id: b for b in change.closed}
        for b in change.created:
            assert b.parent_ids
            assert set(b.parent_ids) <= closed_ids
            inside = set(serials(by_id[p] for p in b.parent_ids))
            assert set(range(b.serial_start, b.serial_end + 1)) <= inside
        assert closed_ids == {p for b in change.created for p in b.parent_ids}
        self.blocks = change.apply(before)

    def active_of(self, holder: uuid.UUID) -> list[Block]:
        return [b for b in self.blocks if b.holder == holder and b.state == ACTIVE]

    def held_by(self, ref: uuid.UUID) -> list[Block]:
        return [b for b in self.blocks if b.state == HELD and b.hold_ref == ref]

    # -- rules --------------------------------------------------------------------------------

    def do_transfer(self, src: uuid.UUID, dst: uuid.UUID, quantity: int) -> None:
        error: type[SerialError] | None = None
        if quantity <= 0:
            error = InvalidQuantity
        elif src == dst:
            error = InvalidOperation
        elif quantity > self.balance[(src, ACTIVE)]:
            error = InsufficientCredits
        sources = self.active_of(src)
        self.run(lambda bs: transfer(bs, src, dst, quantity, self.new_id), error, sources, quantity)
        if error is None:
            self.balance[(src, ACTIVE)] -= quantity
            self.balance[(dst, ACTIVE)] += quantity

    def do_hold(self, holder: uuid.UUID, ref: uuid.UUID, quantity: int) -> None:
        error: type[SerialError] | None = None
        owner, held = self.holds.get(ref, (holder, 0))
        if quantity <= 0:
            error = InvalidQuantity
        elif owner != holder:
            error = InvalidOperation
        elif quantity > self.balance[(holder, ACTIVE)]:
            error = InsufficientCredits
        sources = self.active_of(holder)
        self.run(lambda bs: hold(bs, holder, quantity, ref, self.new_id), error, sources, quantity)
        if error is None:
            self.balance[(holder, ACTIVE)] -= quantity
            self.balance[(holder, HELD)] += quantity
            self.holds[ref] = (holder, held + quantity)

    def _from_hold(self, ref: uuid.UUID, to: uuid.UUID | None, quantity: int | None) -> None:
        error: type[SerialError] | None = None
        owner, held = self.holds.get(ref, (A, 0))
        wanted = held if quantity is None else quantity
        if quantity is not None and quantity <= 0:
            error = InvalidQuantity
        elif ref not in self.holds:
            error = UnknownHold
        elif wanted > held:
            error = InsufficientCredits
        sources = self.held_by(ref)
        if to is None:
            self.run(lambda bs: release(bs, ref, quantity, self.new_id), error, sources, wanted)
        else:
            receiver = to
            self.run(
                lambda bs: settle_hold(bs, ref, receiver, quantity, self.new_id),
                error,
                sources,
                wanted,
            )
        if error is None:
            self.balance[(owner, HELD)] -= wanted
            self.balance[(owner if to is None else to, ACTIVE)] += wanted
            if wanted == held:
                del self.holds[ref]
            else:
                self.holds[ref] = (owner, held - wanted)

    def do_retire(self, holder: uuid.UUID, ref: uuid.UUID, quantity: int) -> None:
        error: type[SerialError] | None = None
        if quantity <= 0:
            error = InvalidQuantity
        elif ref in self.retirements:
            error = InvalidOperation
        elif quantity > self.balance[(holder, ACTIVE)]:
            error = InsufficientCredits
        sources = self.active_of(holder)
        self.run(
            lambda bs: retire(bs, holder, quantity, ref, self.new_id), error, sources, quantity
        )
        if error is None:
            self.balance[(holder, ACTIVE)] -= quantity
            self.balance[(holder, RETIRED)] += quantity
            self.retirements[ref] = quantity

    def do_take_retired(self, holder: uuid.UUID) -> None:
        self.run(lambda bs: take_retired(bs, holder), FrozenBlock, [], 0)

    # -- rules: anything (mostly refused), and operations drawn to succeed --------------------

    @rule(data=st.data())
    def anything(self, data: st.DataObject) -> None:
        kinds = ["transfer", "hold", "release", "settle", "retire", "take retired"]
        kind = data.draw(st.sampled_from(kinds))
        holder, other = data.draw(HOLDER), data.draw(HOLDER)
        quantity = data.draw(QUANTITIES)
        if kind == "transfer":
            self.do_transfer(holder, other, quantity)
        elif kind == "hold":
            self.do_hold(holder, data.draw(HOLD_REF), quantity)
        elif kind == "release":
            self._from_hold(data.draw(HOLD_REF), None, data.draw(st.none() | QUANTITIES))
        elif kind == "settle":
            self._from_hold(data.draw(HOLD_REF), other, data.draw(st.none() | QUANTITIES))
        elif kind == "retire":
            self.do_retire(holder, data.draw(RETIREMENT_REF), quantity)
        else:
            self.do_take_retired(holder)

    def with_active(self) -> list[uuid.UUID]:
        return [h for h in (A, B, C, D) if self.balance[(h, ACTIVE)] > 0]

    @precondition(lambda self: self.with_active())
    @rule(data=st.data())
    def valid_transfer(self, data: st.DataObject) -> None:
        src = data.draw(st.sampled_from(self.with_active()))
        dst = data.draw(st.sampled_from([h for h in (A, B, C, D) if h != src]))
        self.do_transfer(src, dst, data.draw(st.integers(1, self.balance[(src, ACTIVE)])))

    @precondition(lambda self: self.with_active())
    @rule(data=st.data())
    def valid_hold(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.with_active()))
        refs = [r for r in (H1, H2, H3) if self.holds.get(r, (holder, 0))[0] == holder]
        if refs:
            ref = data.draw(st.sampled_from(refs))
            self.do_hold(holder, ref, data.draw(st.integers(1, self.balance[(holder, ACTIVE)])))

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def valid_release(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.holds)))
        quantity = data.draw(st.none() | st.integers(1, self.holds[ref][1]))
        self._from_hold(ref, None, quantity)

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), to=HOLDER)
    def valid_settle(self, data: st.DataObject, to: uuid.UUID) -> None:
        ref = data.draw(st.sampled_from(sorted(self.holds)))
        quantity = data.draw(st.none() | st.integers(1, self.holds[ref][1]))
        self._from_hold(ref, to, quantity)

    @precondition(lambda self: self.with_active())
    @rule(data=st.data())
    def valid_retire(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.with_active()))
        unused = [r for r in RETIREMENT_REFS if r not in self.retirements]
        ref = data.draw(st.sampled_from(unused)) if unused else uuid.uuid4()
        self.do_retire(holder, ref, data.draw(st.integers(1, self.balance[(holder, ACTIVE)])))

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def partition_is_exact(self) -> None:
        assert check_partition(self.lo, self.hi, self.blocks) == []

    @invariant()
    def no_serial_lost_or_doubled(self) -> None:
        assert serials(self.blocks) == list(range(self.lo, self.hi + 1))

    @invariant()
    def totals_match_the_model(self) -> None:
        assert holder_totals(self.blocks) == {k: v for k, v in self.balance.items() if v}
        assert hold_totals(self.blocks) == {ref: n for ref, (_, n) in self.holds.items()}
        assert retirement_totals(self.blocks) == self.retirements
        for ref, (owner, _) in self.holds.items():
            assert {b.holder for b in self.held_by(ref)} == {owner}

    @invariant()
    def retired_blocks_never_change(self) -> None:
        live = {b.id: b for b in self.blocks}
        for block_id, block in self.retired_seen.items():
            assert live.get(block_id) == block
        for b in self.blocks:
            if b.state == RETIRED:
                assert b.retirement_ref is not None
                assert b.hold_ref is None
                self.retired_seen.setdefault(b.id, b)

    @invariant()
    def blocks_are_merged_maximally(self) -> None:
        """No two active blocks of a holder, or held blocks of a hold, touch."""
        ends: set[tuple[object, ...]] = set()
        for b in self.blocks:
            if b.state != RETIRED:
                ends.add((b.holder, b.state, b.hold_ref, b.serial_end))
        for b in self.blocks:
            if b.state != RETIRED:
                assert (b.holder, b.state, b.hold_ref, b.serial_start - 1) not in ends


SerialMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)
TestSerialMachine = SerialMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Cost


def test_thousands_of_blocks_stay_fast() -> None:
    """4,000 fragmented blocks, 200 operations: each one pass over the blocks."""
    ids = Ids(1)
    holders = [A, B, C, D]
    blocks = [Block(ids(), BATCH, holders[i % 4], 1 + 3 * i, 3 + 3 * i) for i in range(4_000)]
    began = time.perf_counter()
    for i in range(50):
        blocks = transfer(blocks, A, B, 7 + i, ids).apply(blocks)
        blocks = hold(blocks, B, 5, H1, ids).apply(blocks)
        blocks = release(blocks, H1, None, ids).apply(blocks)
        blocks = retire(blocks, C, 2, uuid.UUID(int=0x9000 + i), ids).apply(blocks)
    elapsed = time.perf_counter() - began
    assert check_partition(1, 12_000, blocks) == []
    assert elapsed < 5, f"200 operations on ~4,000 blocks took {elapsed:.2f}s"
