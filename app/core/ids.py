"""Identifiers: UUIDv7 (time-ordered), so primary keys double as stable pagination cursors."""

from __future__ import annotations

import secrets
import uuid

import uuid6


def new_id() -> uuid.UUID:
    return uuid.UUID(int=uuid6.uuid7().int)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def public_code(prefix: str, groups: int = 3) -> str:
    """A short, unguessable, readable public code such as ``RT-7K3M-9Q2X-PA4D``.

    Crockford base32 (no I, L, O, U), 20 bits a group: 60 bits of randomness for 3 groups.
    """
    value = secrets.randbits(20 * groups)
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(4 * groups)]
    return prefix + "-" + "-".join("".join(chars[i : i + 4]) for i in range(0, len(chars), 4))
