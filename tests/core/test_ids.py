"""UUIDv7 ids: version and variant bits, strict order within a process (also within one
millisecond, across a counter overflow and when the clock steps back), and uniqueness across
threads."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core import ids
from app.core.ids import new_id, new_ids


def _millisecond(value: uuid.UUID) -> int:
    return value.int >> 80


def _is_v7(value: uuid.UUID) -> bool:
    return value.version == 7 and value.variant == uuid.RFC_4122


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_every_id_is_v7_and_above_the_last(counts: list[int]) -> None:
    made: list[uuid.UUID] = []
    for count in counts:
        made += new_ids(count) if count != 1 else [new_id()]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(_is_v7(i) for i in made)
    assert len(made) == sum(counts)


def test_the_clock_is_the_first_48_bits() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    assert before <= _millisecond(made) <= time.time_ns() // 1_000_000 + 1


def test_later_milliseconds_sort_after() -> None:
    first = new_ids(3)
    time.sleep(0.002)
    assert new_id() > first[-1]


def test_a_clock_stepping_back_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = new_id()
    monkeypatch.setattr(time, "time_ns", lambda: (_millisecond(ahead) - 5_000) * 1_000_000)
    after = [new_id() for _ in range(5)]
    assert after == sorted(after)
    assert after[0] > ahead
    assert {_millisecond(i) for i in after} == {_millisecond(ahead)}


def test_a_full_counter_moves_to_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    last = new_id()
    frozen = _millisecond(last) * 1_000_000
    monkeypatch.setattr(time, "time_ns", lambda: frozen)
    monkeypatch.setattr(ids, "_counter", (1 << 74) - 2)  # two ids left in this millisecond
    made = new_ids(4)
    assert made == sorted(made)
    assert made[0] > last
    assert all(_is_v7(i) for i in made)
    assert _millisecond(made[-1]) == _millisecond(last) + 1


def test_threads_never_share_an_id() -> None:
    barrier = threading.Barrier(8)

    def make(_: int) -> list[uuid.UUID]:
        barrier.wait()
        return [new_id() for _ in range(2_000)]

    with ThreadPoolExecutor(8) as pool:
        made = [i for part in pool.map(make, range(8)) for i in part]
    assert len(set(made)) == len(made) == 16_000
