"""Pure validation of ledger entries: no I/O, so it can be tested exhaustively.

An entry is two or more legs; each leg moves a signed integer amount of one asset into (+)
or out of (-) one account. For every asset the legs of an entry sum to zero.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# PostgreSQL BIGINT is signed 64-bit; keep every amount (and any sum of a few) well inside it.
MAX_AMOUNT = 10**15
MAX_LEGS = 10_000


class EntryError(ValueError):
    """The entry is malformed; the message says how."""


class UnbalancedEntry(EntryError):
    pass


@dataclass(frozen=True, slots=True)
class Leg:
    account_id: uuid.UUID
    asset: str
    amount: int


def validate_legs(legs: Sequence[Leg]) -> None:
    if len(legs) < 2:
        raise EntryError("an entry needs at least two postings")
    if len(legs) > MAX_LEGS:
        raise EntryError(f"an entry has at most {MAX_LEGS} postings")
    totals: dict[str, int] = defaultdict(int)
    account_assets: dict[uuid.UUID, str] = {}
    for leg in legs:
        if type(leg.amount) is not int:
            raise EntryError("amounts are integers")
        if leg.amount == 0:
            raise EntryError("a posting cannot be zero")
        if abs(leg.amount) > MAX_AMOUNT:
            raise EntryError(f"a posting is at most {MAX_AMOUNT} in absolute value")
        if not leg.asset:
            raise EntryError("a posting names its asset")
        seen = account_assets.setdefault(leg.account_id, leg.asset)
        if seen != leg.asset:
            raise EntryError("an account holds exactly one asset")
        totals[leg.asset] += leg.amount
    unbalanced = sorted(asset for asset, total in totals.items() if total != 0)
    if unbalanced:
        raise UnbalancedEntry(f"postings do not sum to zero for: {', '.join(unbalanced)}")


def transfer(source: uuid.UUID, destination: uuid.UUID, asset: str, amount: int) -> list[Leg]:
    """The two legs that move ``amount`` of ``asset`` from ``source`` to ``destination``."""
    if amount <= 0:
        raise EntryError("a transfer moves a positive amount")
    if source == destination:
        raise EntryError("a transfer needs two different accounts")
    return [Leg(source, asset, -amount), Leg(destination, asset, amount)]


def net_by_account(legs: Iterable[Leg]) -> dict[uuid.UUID, int]:
    """What each account gains (or loses) from the legs: the model the database must match."""
    out: dict[uuid.UUID, int] = defaultdict(int)
    for leg in legs:
        out[leg.account_id] += leg.amount
    return dict(out)
