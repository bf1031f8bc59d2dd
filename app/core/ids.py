"""Identifiers: UUIDv7 (time-ordered), so primary keys double as stable pagination cursors.

RFC 9562's UUIDv7 with its "monotonic random" method (section 6.2, method 2): the 48-bit
Unix millisecond clock, then 74 bits that start at a random value in each millisecond and
count up by one for each id made in it. The ids one process makes are strictly ascending,
even within a millisecond, and across processes they sort by their millisecond. If the clock
steps back, the last millisecond is kept (and counted on) until the clock passes it again.

The ids are unique and hard to guess across processes and milliseconds, but they are not
secrets: nothing is reached by knowing an id (every query is scoped to its caller's
organisation; public codes come from ``public_code``). One id costs about 2 µs: the group
that places orders under a product's lock makes dozens per order (``app.market.group``).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_COUNTER_BITS = 74  # the 12 bits of ``rand_a`` and the 62 of ``rand_b``
_LOW = (1 << 62) - 1
_VERSION_AND_VARIANT = 0x7 << 76 | 0b10 << 62

_lock = threading.Lock()  # ids are made on the event loop and in worker threads
_last_millisecond = 0
_counter = 0  # the last id's 74 bits


def _start() -> int:
    """A millisecond's first counter: random, with room below 2**74 for any count to grow."""
    return secrets.randbits(_COUNTER_BITS - 2)


def _reserve(count: int) -> tuple[int, int]:
    """The millisecond and the first counter value of ``count`` consecutive ids."""
    global _last_millisecond, _counter
    now = time.time_ns() // 1_000_000
    with _lock:
        if now > _last_millisecond:
            millisecond, first = now, _start()
        else:  # the same millisecond, or the clock stepped back: count on from the last id
            millisecond, first = _last_millisecond, _counter + 1
        if (first + count - 1) >> _COUNTER_BITS:  # the counter would overflow: the next one
            millisecond, first = millisecond + 1, _start()
        _last_millisecond, _counter = millisecond, first + count - 1
    return millisecond, first


def _uuid(millisecond: int, counter: int) -> uuid.UUID:
    return uuid.UUID(
        int=(millisecond & 0xFFFF_FFFF_FFFF) << 80
        | _VERSION_AND_VARIANT
        | (counter >> 62) << 64
        | (counter & _LOW)
    )


def new_id() -> uuid.UUID:
    return _uuid(*_reserve(1))


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` ids in ascending order, at once (an auction close names tens of thousands of
    allocation rows)."""
    if count <= 0:
        return []
    millisecond, first = _reserve(count)
    return [_uuid(millisecond, first + i) for i in range(count)]


def public_code(prefix: str, groups: int = 3) -> str:
    """A short, unguessable, readable public code such as ``RT-7K3M-9Q2X-PA4D``.

    Crockford base32 (no I, L, O, U), 20 bits a group: 60 bits of randomness for 3 groups.
    """
    value = secrets.randbits(20 * groups)
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(4 * groups)]
    return prefix + "-" + "-".join("".join(chars[i : i + 4]) for i in range(0, len(chars), 4))
