"""Sealed-bid auction clearing: a pure function, integers only, deterministic.

No I/O. The auction service loads the bids, calls :func:`clear` and persists the
:class:`ClearingResult`. Prices are integer JPY per t-CO2e; quantities are whole t-CO2e
(1 credit = 1 t). No float is produced anywhere.

Rules (sources: ``reference/auction-rules.md`` sections 1-3 and 9, ``reference/
ledger-and-matching.md`` section 3):

Bid format (:func:`validate_bid`, called by the service at submission)
    ``price > 0`` and a multiple of ``price_tick``; ``quantity >= min_bid_quantity`` and a
    multiple of ``quantity_step`` (EEX: lots of 500; WCI: 1,000; J-Credit: at least 1,000 t in
    1-t steps). :func:`clear` leaves out any bid that breaks these and lists it in
    ``invalid_bid_ids``; it never wins and is not counted as demand.

Ranking
    Price, highest first. Bids below ``reserve_price`` (public floor or undisclosed minimum
    price) never win. The reserve only filters: it never sets a price.

Per-bidder / per-group cap (``max_bidder_quantity``, absolute)
    Applied before allocation, as Quebec's s. 52 and EU Art. 57 do: a bidder's bids are
    taken in price order (highest first; equal prices in ``submitted_seq`` order) and any
    quantity that would take the bidder past the cap is cut, so its lowest-priced lots go
    first. When bids carry a ``group`` (parent, subsidiaries and affiliates), the same cap
    also applies to the group as a whole, in the same order across all its members. Cuts
    are rounded to ``quantity_step``. They are reported in ``cap_trims``.

Allocation
    Bids are filled in rank order until ``supply`` is reached. Every bid priced above the
    marginal price gets its full (capped) quantity. If the bids at the marginal price ask for
    more than what remains, that level is shared by ``tie_break``:

    - ``random`` (EU ETS Art. 7 / EEX): the tied bids are put in a random order fixed by the
      published seed: ascending ``SHA-256(seed || bid.id as UTF-8)`` (then ``submitted_seq``).
      They are filled in that order; the last one filled gets the remainder.
    - ``pro_rata`` (Quebec / WCI): each tied bid gets ``floor(q * remaining / tied_total)``
      rounded down to ``quantity_step``; the units left over are handed out one step at a
      time, at most one step per bid, in the same seeded random order as ``random``.
    - ``time_priority`` (J-Blue Credit: earlier application first): tied bids are filled in
      ``submitted_seq`` order.

    Winning bids at a shared marginal level of two or more bids carry ``tie_selected=True``
    (EU Art. 61(3): each bidder is told which of its tied bids were selected).

Price
    ``uniform``: every winner pays the clearing price = the price of the lowest accepted bid
    (EU ETS Art. 7(3), RGGI, WCI s. 52 "lowest price at which units are awarded", NZ). Since
    bids below the reserve are out, it is never below the reserve, and the reserve never
    raises it above the lowest accepted bid. ``pay_as_bid`` (J-Credit tenders, J-Blue): each
    winner pays its own price; ``clearing_price`` is ``None``.

Undersubscription (eligible demand, at or above the reserve and after caps, < supply)
    ``cancel`` (EU Art. 7(5)): nothing is sold, status ``cancelled``. ``sell_what_is_bid``
    (UK ETS, NZ "partial"): every eligible bid wins in full (uniform price = the lowest
    eligible bid), status ``partial``, and ``unsold_quantity`` is left for carry-over. With no
    eligible demand at all the status is ``cancelled`` either way.

Published figures (J-Credit, EU Art. 61, RGGI)
    ``bid_quantity`` is the total of the valid bids as submitted (below the reserve included),
    ``cover_ratio`` = bid quantity / supply as a reduced fraction (and in per-mille, rounded
    down). ``bidders`` counts bidders with at least one valid bid, ``winners`` those with an
    allocation. ``average_price`` is volume-weighted: ``revenue // sold_quantity`` (rounded
    down). ``median_price`` is the middle winning bid price when the winning bids are sorted
    by price, each bid counted once (J-Credit: "落札した価格を高い順に並べて真ん中"); with an
    even count, the mean of the two middle prices rounded down. ``min_price`` and ``max_price``
    are the lowest and highest winning bid prices. When uniform, all four are the clearing
    price.
    ``demand_curve`` is anonymised: each distinct price with the cumulative quantity bid at
    that price or higher, over the valid bids as submitted.

Determinism
    ``submitted_seq`` (the server's arrival sequence) and bid ids must each be unique
    (``ValueError`` otherwise). The result depends only on the rules, the seed and the set of
    bids, not on their order in the input: allocations and cap cuts come in a fixed order
    (allocations by ``submitted_seq``; cap cuts by price, highest first, then
    ``submitted_seq``).

Cost (100,000 bids in about the time ``sorted()`` takes to rank them; see bench/clearing.py)
    No sort of all the bids. One pass sums the demand per price level; the distinct levels
    are sorted and scanned (``accumulate``, ``bisect``) to find the marginal price; two list
    comprehensions pick the winners and the bids tied at the margin; only the winners are
    sorted, by ``submitted_seq`` (linear when the bids arrive in that order). Only bids tied
    at the margin are hashed, only the bids of bidders and groups whose whole demand exceeds
    the cap are walked one by one, and allocations are kept column-wise
    (:class:`Allocations`): an :class:`Allocation` object is built only when one is read.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import accumulate
from math import gcd
from operator import itemgetter, mul, neg
from typing import TypeVar

T = TypeVar("T")


class ClearingFormat(StrEnum):
    uniform = "uniform"
    pay_as_bid = "pay_as_bid"


class TieBreak(StrEnum):
    random = "random"
    pro_rata = "pro_rata"
    time_priority = "time_priority"


class Undersubscribed(StrEnum):
    cancel = "cancel"
    sell_what_is_bid = "sell_what_is_bid"


class ClearingStatus(StrEnum):
    cleared = "cleared"  # the whole supply sold
    partial = "partial"  # undersubscribed, every eligible bid sold, the rest unsold
    cancelled = "cancelled"  # nothing sold


def _is_int(value: object) -> bool:
    return type(value) is int


@dataclass(frozen=True, slots=True)
class Bid:
    """One sealed bid. ``id`` and ``bidder`` are opaque text (e.g. ``str(uuid)``);
    ``submitted_seq`` is the server-assigned arrival sequence, unique within the auction;
    ``group`` names the bidder's corporate group when per-group caps apply."""

    id: str
    bidder: str
    price: int
    quantity: int
    submitted_seq: int
    group: str | None = None

    def __post_init__(self) -> None:
        if not (_is_int(self.price) and _is_int(self.quantity) and _is_int(self.submitted_seq)):
            raise TypeError("bid price, quantity and submitted_seq are integers")
        if not isinstance(self.id, str) or not isinstance(self.bidder, str):
            raise TypeError("bid id and bidder are strings")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuctionRules:
    """The rules one auction is cleared under (fixed, and published, before it opens)."""

    format: ClearingFormat
    supply: int
    reserve_price: int | None = None
    min_bid_quantity: int = 1
    quantity_step: int = 1
    price_tick: int = 1
    max_bidder_quantity: int | None = None  # absolute; also per group when bids carry one
    tie_break: TieBreak = TieBreak.random
    seed: bytes = b""  # for ``random`` and for the ``pro_rata`` remainder
    undersubscribed: Undersubscribed = Undersubscribed.cancel

    def __post_init__(self) -> None:
        ints = (self.supply, self.min_bid_quantity, self.quantity_step, self.price_tick)
        if not all(_is_int(v) for v in ints):
            raise TypeError("supply, min_bid_quantity, quantity_step and price_tick are integers")
        for name in ("reserve_price", "max_bidder_quantity"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise TypeError(f"{name} is an integer or None")
        if self.quantity_step <= 0 or self.price_tick <= 0:
            raise ValueError("quantity_step and price_tick must be positive")
        if self.supply <= 0 or self.supply % self.quantity_step:
            raise ValueError("supply must be a positive multiple of quantity_step")
        if self.min_bid_quantity < 0:
            raise ValueError("min_bid_quantity cannot be negative")
        if self.reserve_price is not None and self.reserve_price < 0:
            raise ValueError("reserve_price cannot be negative")
        if self.max_bidder_quantity is not None and self.max_bidder_quantity < self.quantity_step:
            raise ValueError("max_bidder_quantity must be at least one quantity_step")
        # Plain strings are accepted (rules stored as text); keep the enum members.
        object.__setattr__(self, "format", ClearingFormat(self.format))
        object.__setattr__(self, "tie_break", TieBreak(self.tie_break))
        object.__setattr__(self, "undersubscribed", Undersubscribed(self.undersubscribed))
        if not isinstance(self.seed, bytes):
            raise TypeError("seed is bytes")
        if self.tie_break in (TieBreak.random, TieBreak.pro_rata) and not self.seed:
            raise ValueError(f"tie_break {self.tie_break} needs a seed")


@dataclass(frozen=True, slots=True)
class Allocation:
    bid_id: str
    bidder: str
    quantity: int
    price: int  # per t-CO2e
    amount: int  # price * quantity, JPY
    tie_selected: bool  # won at a marginal price level of 2+ bids that had to be shared


@dataclass(frozen=True, slots=True)
class Allocations:
    """The winning bids, column-wise, in submission order (``submitted_seq``); iterate (or
    index) to get :class:`Allocation` objects."""

    bid_ids: tuple[str, ...] = ()
    bidders: tuple[str, ...] = ()
    quantities: tuple[int, ...] = ()
    prices: tuple[int, ...] = ()
    amounts: tuple[int, ...] = ()
    tie_selected: tuple[bool, ...] = ()

    def __len__(self) -> int:
        return len(self.bid_ids)

    def __getitem__(self, index: int) -> Allocation:
        return Allocation(
            self.bid_ids[index],
            self.bidders[index],
            self.quantities[index],
            self.prices[index],
            self.amounts[index],
            self.tie_selected[index],
        )

    def __iter__(self) -> Iterator[Allocation]:
        for row in zip(
            self.bid_ids,
            self.bidders,
            self.quantities,
            self.prices,
            self.amounts,
            self.tie_selected,
            strict=True,
        ):
            yield Allocation(*row)

    def by_bid_id(self) -> dict[str, Allocation]:
        return {a.bid_id: a for a in self}


@dataclass(frozen=True, slots=True)
class DemandPoint:
    price: int
    cumulative_quantity: int  # quantity bid at this price or higher


@dataclass(frozen=True, slots=True)
class DemandCurve:
    """Anonymised demand: distinct prices, highest first, with the cumulative quantity."""

    prices: tuple[int, ...] = ()
    cumulative_quantities: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.prices)

    def __iter__(self) -> Iterator[DemandPoint]:
        for price, cumulative in zip(self.prices, self.cumulative_quantities, strict=True):
            yield DemandPoint(price, cumulative)


@dataclass(frozen=True, slots=True)
class CapTrim:
    bid_id: str
    bidder: str
    removed: int  # quantity cut by the per-bidder or per-group cap


@dataclass(frozen=True, slots=True)
class CapTrims:
    """The bids the cap cut, column-wise, highest price first then submission order;
    iterate to get :class:`CapTrim` objects."""

    bid_ids: tuple[str, ...] = ()
    bidders: tuple[str, ...] = ()
    removed: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.bid_ids)

    def __iter__(self) -> Iterator[CapTrim]:
        for row in zip(self.bid_ids, self.bidders, self.removed, strict=True):
            yield CapTrim(*row)


@dataclass(frozen=True, slots=True)
class ClearingResult:
    status: ClearingStatus
    format: ClearingFormat
    supply: int
    clearing_price: int | None  # uniform only
    sold_quantity: int
    unsold_quantity: int  # supply - sold: for carry-over
    bid_quantity: int  # valid bids as submitted
    eligible_quantity: int  # at or above the reserve, after caps
    cover_ratio: tuple[int, int]  # bid_quantity / supply, reduced
    cover_ratio_permille: int  # rounded down
    bidders: int
    winners: int
    revenue: int
    average_price: int | None  # revenue // sold_quantity
    median_price: int | None
    min_price: int | None
    max_price: int | None
    marginal_fill: tuple[int, int] | None  # (allocated, bid) at the marginal price level
    allocations: Allocations = field(default_factory=Allocations)
    demand_curve: DemandCurve = field(default_factory=DemandCurve)
    cap_trims: CapTrims = field(default_factory=CapTrims)
    invalid_bid_ids: tuple[str, ...] = ()


# --- bid validation ----------------------------------------------------------------------


def validate_bid(rules: AuctionRules, bid: Bid) -> list[str]:
    """What is wrong with ``bid`` under ``rules`` (empty when it is acceptable)."""
    return _bid_errors(rules, bid.price, bid.quantity)


def _bid_errors(rules: AuctionRules, price: int, quantity: int) -> list[str]:
    errors: list[str] = []
    if price <= 0:
        errors.append("price must be positive")
    elif price % rules.price_tick:
        errors.append(f"price must be a multiple of the price tick ({rules.price_tick})")
    if quantity <= 0:
        errors.append("quantity must be positive")
    else:
        if quantity < rules.min_bid_quantity:
            errors.append(f"quantity must be at least {rules.min_bid_quantity}")
        if quantity % rules.quantity_step:
            errors.append(f"quantity must be a multiple of the step ({rules.quantity_step})")
    return errors


def _all_valid(rules: AuctionRules, prices: Collection[int], quantities: Collection[int]) -> bool:
    """The fast check: over the distinct prices and quantities, not every bid."""
    tick, step = rules.price_tick, rules.quantity_step
    if min(prices) <= 0 or min(quantities) < max(rules.min_bid_quantity, 1):
        return False
    if tick != 1 and any(map(tick.__rmod__, prices)):
        return False
    return step == 1 or not any(map(step.__rmod__, quantities))


# --- clearing ----------------------------------------------------------------------------


def tie_order_key(seed: bytes, bid_id: str) -> bytes:
    """The seeded random rank of a tied bid (lower goes first): SHA-256(seed || id)."""
    return hashlib.sha256(seed + bid_id.encode("utf-8")).digest()


def clear(rules: AuctionRules, bids: Sequence[Bid]) -> ClearingResult:
    """Clear one sealed-bid auction; see the module documentation for the rules."""
    ids = [b.id for b in bids]
    seqs = [b.submitted_seq for b in bids]
    n = len(ids)
    if len(set(seqs)) != n:
        raise ValueError("submitted_seq must be unique")
    if len(set(ids)) != n:
        raise ValueError("bid ids must be unique")
    prices = [b.price for b in bids]
    quantities = [b.quantity for b in bids]
    bidders = [b.bidder for b in bids]
    groups = [b.group for b in bids] if rules.max_bidder_quantity is not None else []

    demand = _demand(prices, quantities)  # per price level, as submitted
    invalid_bid_ids: tuple[str, ...] = ()
    if n and not _all_valid(rules, demand.keys(), set(quantities)):
        keep = [i for i in range(n) if not _bid_errors(rules, prices[i], quantities[i])]
        kept = set(keep)
        invalid_bid_ids = tuple(sorted(ids[i] for i in range(n) if i not in kept))
        ids = [ids[i] for i in keep]
        seqs = [seqs[i] for i in keep]
        prices = [prices[i] for i in keep]
        quantities = [quantities[i] for i in keep]
        bidders = [bidders[i] for i in keep]
        groups = [groups[i] for i in keep] if groups else []
        n = len(keep)
        demand = _demand(prices, quantities)

    levels = sorted(demand, reverse=True)
    reserve = rules.reserve_price
    eligible_levels = len(levels) if reserve is None else bisect_right(levels, -reserve, key=neg)

    # Caps: ``allowed`` is each bid's quantity after the cut, ``supplied`` the eligible
    # demand per level after the cuts.
    allowed = quantities
    supplied = demand
    cap_trims = CapTrims()
    if groups and eligible_levels:
        floor = levels[eligible_levels - 1]
        cut, removed = _cap_cuts(rules, floor, seqs, prices, quantities, bidders, groups)
        if cut:
            allowed = list(quantities)
            supplied = dict(demand)
            for i, q in zip(cut, removed, strict=True):
                allowed[i] -= q
                supplied[prices[i]] -= q
            cap_trims = CapTrims(_pick(ids, cut), _pick(bidders, cut), tuple(removed))
    cumulative = list(accumulate(supplied[p] for p in levels[:eligible_levels]))
    eligible_quantity = cumulative[-1] if cumulative else 0

    supply = rules.supply
    bid_quantity = sum(demand.values())
    cancelled = ClearingResult(  # the base of every result
        status=ClearingStatus.cancelled,
        format=rules.format,
        supply=supply,
        clearing_price=None,
        sold_quantity=0,
        unsold_quantity=supply,
        bid_quantity=bid_quantity,
        eligible_quantity=eligible_quantity,
        cover_ratio=_reduced(bid_quantity, supply),
        cover_ratio_permille=bid_quantity * 1000 // supply,
        bidders=len(set(bidders)),
        winners=0,
        revenue=0,
        average_price=None,
        median_price=None,
        min_price=None,
        max_price=None,
        marginal_fill=None,
        demand_curve=DemandCurve(tuple(levels), tuple(accumulate(demand[p] for p in levels))),
        cap_trims=cap_trims,
        invalid_bid_ids=invalid_bid_ids,
    )
    if eligible_quantity < supply and (
        eligible_quantity == 0 or rules.undersubscribed == Undersubscribed.cancel
    ):
        return cancelled

    # The lowest winning price level, and whether the bids there must share it.
    tied: list[int] = []  # the bids at the marginal price, when they must share it
    shared: dict[int, int] = {}  # bid index -> quantity, for those of them that win
    marginal_fill: tuple[int, int] | None = None
    if eligible_quantity >= supply:
        status = ClearingStatus.cleared
        margin = bisect_left(cumulative, supply)  # cumulative demand reaches the supply
        lowest = levels[margin]
        before = cumulative[margin - 1] if margin else 0
        remaining = supply - before
        level_total = cumulative[margin] - before
        marginal_fill = (remaining, level_total)
    else:
        status = ClearingStatus.partial
        margin = eligible_levels - 1
        while not supplied[levels[margin]]:  # skip levels the caps emptied
            margin -= 1
        lowest = levels[margin]
        remaining = level_total = supplied[lowest]

    if level_total == remaining:  # the whole marginal level fits: nothing to share
        won = [i for i, p in enumerate(prices) if p >= lowest]
    else:
        won = [i for i, p in enumerate(prices) if p > lowest]
        tied = [i for i, p in enumerate(prices) if p == lowest]
        tied.sort(key=seqs.__getitem__)
        if cap_trims:
            tied = [i for i in tied if allowed[i]]
        shares = _share(rules, tied, allowed, remaining, level_total, ids)
        shared = {i: q for i, q in zip(tied, shares, strict=True) if q}
        won += shared
    if cap_trims:  # a capped bid may have been cut to nothing
        won = [i for i in won if allowed[i]]
    won.sort(key=seqs.__getitem__)  # submission order: canonical, whatever the input order

    flags: tuple[bool, ...] = (False,) * len(won)
    if shared:
        allowed = list(allowed)
        for i, q in shared.items():
            allowed[i] = q
        if len(tied) > 1:  # a single bid cut at the margin was not tied with anyone
            flags = tuple(map(shared.__contains__, won))
    won_quantities = _pick(allowed, won)
    sold = sum(won_quantities)
    if rules.format == ClearingFormat.uniform:
        clearing_price: int | None = lowest
        paid: tuple[int, ...] = (lowest,) * len(won)
        amounts = tuple(map(lowest.__mul__, won_quantities))
        revenue = sold * lowest
        median = highest = lowest
    else:
        clearing_price = None
        paid = _pick(prices, won)
        amounts = tuple(map(mul, won_quantities, paid))
        revenue = sum(amounts)
        median, highest = _median_and_max(paid)
    won_bidders = _pick(bidders, won)

    return replace(
        cancelled,
        status=status,
        clearing_price=clearing_price,
        sold_quantity=sold,
        unsold_quantity=supply - sold,
        winners=len(set(won_bidders)),
        revenue=revenue,
        average_price=revenue // sold,
        median_price=median,
        min_price=lowest,
        max_price=highest,
        marginal_fill=marginal_fill,
        allocations=Allocations(
            bid_ids=_pick(ids, won),
            bidders=won_bidders,
            quantities=won_quantities,
            prices=paid,
            amounts=amounts,
            tie_selected=flags,
        ),
    )


def _demand(prices: list[int], quantities: list[int]) -> dict[int, int]:
    demand: dict[int, int] = {}
    get = demand.get
    for p, q in zip(prices, quantities, strict=True):
        demand[p] = get(p, 0) + q
    return demand


def _pick(values: Sequence[T], positions: Sequence[int]) -> tuple[T, ...]:
    """``values`` at ``positions``, gathered in C (``itemgetter``) rather than bytecode."""
    if len(positions) > 1:
        picked: tuple[T, ...] = itemgetter(*positions)(values)
        return picked
    return tuple(values[i] for i in positions)


def _median_and_max(prices: Sequence[int]) -> tuple[int, int]:
    """The median (mean of the two middle values when even, rounded down) and the maximum,
    counting each value once per occurrence; from the distinct values, not a sort."""
    counts = Counter(prices)
    count = len(prices)
    low, high = (count - 1) // 2, count // 2  # 0-based ranks of the middle value(s)
    ascending = sorted(counts)
    ends = list(accumulate(counts[p] for p in ascending))  # rank just past each value
    lower = ascending[bisect_right(ends, low)]
    upper = ascending[bisect_right(ends, high)]
    return (lower + upper) // 2, ascending[-1]


def _reduced(numerator: int, denominator: int) -> tuple[int, int]:
    divisor = gcd(numerator, denominator) or 1
    return numerator // divisor, denominator // divisor


def _cap_cuts(
    rules: AuctionRules,
    floor: int,
    seqs: list[int],
    prices: list[int],
    quantities: list[int],
    bidders: list[str],
    groups: list[str | None],
) -> tuple[list[int], list[int]]:
    """The eligible bids (priced at ``floor`` or above) that the per-bidder or per-group cap
    cuts, in rank order, and how much it cuts from each."""
    assert rules.max_bidder_quantity is not None
    step = rules.quantity_step
    cap = rules.max_bidder_quantity // step * step
    # Screen on all bids: a bidder or group whose whole demand fits is never cut.
    totals: dict[str, int] = {}
    get = totals.get
    for bidder, q in zip(bidders, quantities, strict=True):
        totals[bidder] = get(bidder, 0) + q
    over_bidders = {b for b, total in totals.items() if total > cap}
    over_groups: set[str] = set()
    if groups.count(None) != len(groups):
        group_totals: dict[str, int] = {}
        for group, q in zip(groups, quantities, strict=True):
            if group is not None:
                group_totals[group] = group_totals.get(group, 0) + q
        over_groups = {g for g, total in group_totals.items() if total > cap}
    if not over_bidders and not over_groups:
        return [], []
    # Their eligible bids, highest price first, then submission order.
    members = [
        i
        for i, (bidder, group) in enumerate(zip(bidders, groups, strict=True))
        if bidder in over_bidders or group in over_groups
    ]
    members = [i for i in members if prices[i] >= floor]
    members.sort(key=seqs.__getitem__)
    members.sort(key=prices.__getitem__, reverse=True)
    used_bidder: dict[str, int] = {}
    used_group: dict[str, int] = {}
    cut: list[int] = []
    removed: list[int] = []
    for i in members:
        bidder, group, q = bidders[i], groups[i], quantities[i]
        used = used_bidder.get(bidder, 0)
        if group is not None:
            used = max(used, used_group.get(group, 0))
        keep = min(q, max(cap - used, 0))
        used_bidder[bidder] = used_bidder.get(bidder, 0) + keep
        if group is not None:
            used_group[group] = used_group.get(group, 0) + keep
        if keep < q:
            cut.append(i)
            removed.append(q - keep)
    return cut, removed


def _share(
    rules: AuctionRules,
    tied: list[int],
    allowed: Sequence[int],
    remaining: int,
    level_total: int,
    ids: list[str],
) -> list[int]:
    """Quantities for the ``tied`` bids (indexes, in submission order) sharing ``remaining``
    units, where ``level_total`` > ``remaining`` is what they ask for together."""
    step = rules.quantity_step
    shares = [0] * len(tied)
    if rules.tie_break == TieBreak.pro_rata:
        for t, i in enumerate(tied):
            shares[t] = allowed[i] * remaining // level_total // step * step
        left = remaining - sum(shares)
        # Fewer than len(tied) steps are left, and each share is at least a step short of
        # its bid (remaining < level_total), so one round hands them all out.
        for t in _seeded_order(rules.seed, tied, ids)[: left // step]:
            shares[t] += step
        return shares
    if rules.tie_break == TieBreak.random:
        sequence = _seeded_order(rules.seed, tied, ids)
    else:  # time_priority: ``tied`` is already in submission order
        sequence = list(range(len(tied)))
    for t in sequence:
        if remaining <= 0:
            break
        take = min(allowed[tied[t]], remaining)
        shares[t] = take
        remaining -= take
    return shares


def _seeded_order(seed: bytes, tied: list[int], ids: list[str]) -> list[int]:
    """Positions in ``tied``, in the seeded random order. ``tied`` is in submission order and
    the sort is stable, so equal digests (never seen for SHA-256) would keep that order.
    The keys are bare ``bytes``, not tuples: no garbage-collected object per tied bid, so
    no collection is set off to walk the big lists built so far."""
    keys = [tie_order_key(seed, ids[i]) for i in tied]
    return sorted(range(len(tied)), key=keys.__getitem__)
