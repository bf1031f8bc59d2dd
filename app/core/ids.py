"""Identifiers: UUIDv7 (time-ordered), so primary keys double as stable pagination cursors."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> uuid.UUID:
    return uuid.UUID(int=uuid6.uuid7().int)
