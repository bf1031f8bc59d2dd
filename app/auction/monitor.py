"""The market monitor's view of a closed auction: concentration and bid dispersion. Pure.

RGGI's independent monitor and the EU auction monitor report, after each auction, how
concentrated the awards were and how the bids were spread (``reference/auction-rules.md``,
"Market monitoring"). :func:`report` computes those figures from the bids that took part in
the clearing and the allocations; the platform reads them at ``GET /v1/auctions/{id}/monitor``.

Integers only, as everywhere in the auction domain: shares are basis points (10000 = 100%),
prices JPY per t-CO2e, every division rounded down.

Concentration
    HHI (Herfindahl-Hirschman index) = sum of the squared percentage shares, in [0, 10000]:
    ``10000 × Σ qᵢ² / (Σ qᵢ)²`` rounded down, of the awarded quantity and of the bid quantity,
    by bidder and by corporate group (the group captured on each bid; a bidder without a
    group counts as its own group, as the cap treats it). ``top1_share_bps`` and
    ``top4_share_bps`` are the awarded quantity of the largest 1 and 4 winners over the
    quantity sold; ``largest_winners`` names them (organisation ids: the platform may see
    them), largest first, ties in id order.

Dispersion of bid prices
    Over every credit bid (each bid weighted by its quantity, so a 1,000 t bid counts 1,000
    times and a 1 t bid once): min, max, mean, median (mean of the two middle credits when
    their count is even, as the published median), standard deviation (population), its
    coefficient of variation (``std / mean`` in basis points) and the interquartile range
    ``Q3 − Q1`` (nearest rank: the credits at ranks ⌈N/4⌉ and ⌈3N/4⌉).

The margin
    The reference price is the clearing price (uniform) or the lowest winning price
    (pay-as-bid); ``price_spread`` = reference price − the quantity-weighted mean bid price
    (negative: most credits were bid above the price paid at the margin).
    ``margin_share_bps`` is the share of the bid quantity bid exactly at the reference price.
    Both are ``None`` when nothing was sold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from math import isqrt
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

BPS = 10_000


@dataclass(frozen=True, slots=True)
class MonitorBid:
    bid_id: str
    bidder: str
    group: str | None
    price: int
    quantity: int


@dataclass(frozen=True, slots=True)
class MonitorAward:
    bid_id: str
    bidder: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Winner:
    bidder: str
    quantity: int
    share_bps: int  # of the quantity sold


@dataclass(frozen=True, slots=True)
class Concentration:
    hhi_awarded_by_bidder: int | None
    hhi_awarded_by_group: int | None
    hhi_bid_by_bidder: int | None
    hhi_bid_by_group: int | None
    top1_share_bps: int | None
    top4_share_bps: int | None
    largest_winners: tuple[Winner, ...]


@dataclass(frozen=True, slots=True)
class Dispersion:
    min_price: int
    max_price: int
    mean_price: int
    median_price: int
    std_dev: int
    coefficient_of_variation_bps: int
    q1_price: int
    q3_price: int
    interquartile_range: int


@dataclass(frozen=True, slots=True)
class Report:
    bidders: int
    groups: int  # distinct corporate groups, a bidder without one counting as its own
    winners: int
    bid_quantity: int
    sold_quantity: int
    concentration: Concentration
    dispersion: Dispersion | None  # None: no bid
    reference_price: int | None  # clearing price, or lowest winning price; None: none sold
    price_spread: int | None  # reference price − mean bid price
    margin_share_bps: int | None  # bid quantity at the reference price / bid quantity


def hhi(quantities: Iterable[int]) -> int | None:
    """``10000 × Σ qᵢ² / (Σ qᵢ)²`` rounded down; None when the total is 0."""
    values = [q for q in quantities if q]
    total = sum(values)
    if not total:
        return None
    return BPS * sum(q * q for q in values) // (total * total)


def _totals(pairs: Iterable[tuple[K, int]]) -> dict[K, int]:
    totals: dict[K, int] = defaultdict(int)
    for key, quantity in pairs:
        totals[key] += quantity
    return dict(totals)


def _group_key(bidder: str, group: str | None) -> tuple[str, str]:
    # Tuples keep a group named like a bidder id apart from that bidder.
    return ("group", group) if group is not None else ("bidder", bidder)


def _price_at(levels: Sequence[tuple[int, int]], rank: int) -> int:
    """The price of the credit at 0-based ``rank`` in (price, quantity) levels, ascending."""
    seen = 0
    for price, quantity in levels:
        seen += quantity
        if rank < seen:
            return price
    raise IndexError(rank)


def dispersion(bids: Sequence[MonitorBid]) -> Dispersion | None:
    """Quantity-weighted bid-price dispersion (see the module documentation)."""
    by_price = _totals((b.price, b.quantity) for b in bids)
    levels = sorted((p, q) for p, q in by_price.items() if q)
    n = sum(q for _, q in levels)
    if not n:
        return None
    total = sum(p * q for p, q in levels)
    # N² × variance = N Σ q p² − (Σ q p)², exact in integers.
    n2_var = n * sum(q * p * p for p, q in levels) - total * total
    root = isqrt(n2_var)
    median = (_price_at(levels, (n - 1) // 2) + _price_at(levels, n // 2)) // 2
    q1 = _price_at(levels, -(-n // 4) - 1)
    q3 = _price_at(levels, -(-3 * n // 4) - 1)
    return Dispersion(
        min_price=levels[0][0],
        max_price=levels[-1][0],
        mean_price=total // n,
        median_price=median,
        std_dev=root // n,
        # std / mean = sqrt(N² var) / Σqp; the root of the scaled value keeps it exact.
        coefficient_of_variation_bps=isqrt(BPS * BPS * n2_var) // total,
        q1_price=q1,
        q3_price=q3,
        interquartile_range=q3 - q1,
    )


def report(
    bids: Sequence[MonitorBid],
    awards: Sequence[MonitorAward],
    *,
    reference_price: int | None,
    largest: int = 4,
) -> Report:
    """The monitor's figures. ``bids``: every bid that took part in the clearing; ``awards``:
    the allocations (one per winning bid); ``reference_price``: the clearing price (uniform)
    or the lowest winning price (pay-as-bid), None when nothing was sold."""
    group_of = {b.bid_id: _group_key(b.bidder, b.group) for b in bids}
    bid_by_bidder = _totals((b.bidder, b.quantity) for b in bids)
    bid_by_group = _totals((group_of[b.bid_id], b.quantity) for b in bids)
    won_by_bidder = _totals((a.bidder, a.quantity) for a in awards)
    won_by_group = _totals((group_of[a.bid_id], a.quantity) for a in awards)
    bid_quantity = sum(bid_by_bidder.values())
    sold = sum(won_by_bidder.values())

    ranked = sorted(won_by_bidder.items(), key=lambda kv: (-kv[1], kv[0]))
    winners = tuple(
        Winner(bidder=bidder, quantity=q, share_bps=q * BPS // sold)
        for bidder, q in ranked[:largest]
    )
    top = [q for _, q in ranked]
    concentration = Concentration(
        hhi_awarded_by_bidder=hhi(won_by_bidder.values()),
        hhi_awarded_by_group=hhi(won_by_group.values()),
        hhi_bid_by_bidder=hhi(bid_by_bidder.values()),
        hhi_bid_by_group=hhi(bid_by_group.values()),
        top1_share_bps=sum(top[:1]) * BPS // sold if sold else None,
        top4_share_bps=sum(top[:4]) * BPS // sold if sold else None,
        largest_winners=winners,
    )
    spread = margin = None
    spread_of = dispersion(bids)
    if reference_price is not None and sold and spread_of is not None:
        spread = reference_price - spread_of.mean_price
        at_margin = sum(b.quantity for b in bids if b.price == reference_price)
        margin = at_margin * BPS // bid_quantity
    return Report(
        bidders=len(bid_by_bidder),
        groups=len(bid_by_group),
        winners=len(won_by_bidder),
        bid_quantity=bid_quantity,
        sold_quantity=sold,
        concentration=concentration,
        dispersion=spread_of,
        reference_price=reference_price if sold else None,
        price_spread=spread,
        margin_share_bps=margin,
    )
