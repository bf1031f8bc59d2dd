"""The public audit document of a cleared auction, and its offline recomputation. Pure.

:func:`build` writes the document ``GET /v1/auctions/{id}/audit`` returns (version
``tanso-auction-audit-v1``): the rules fixed at creation, the revealed reserve price and seed
with their nonces and the commitments published at creation, every bid that took part in the
clearing (won or lost; withdrawn bids never did) and the published results. Bidders are
anonymised as ``B1``, ``B2``… numbered by each bidder's first bid (``submitted_seq``): stable
within the document, so per-bidder caps recompute the same, and no organisation is named.
Each bid carries its id and nonce, so its bidder can find its own bids and anyone can open
every commitment. Corporate groups (captured on each bid when it was placed) are anonymised
the same way, ``G1``, ``G2``… by each group's first bid, so the per-group cap recomputes too;
a bid without a group has ``group: null``. An amended bid appears once, with its final price,
quantity, nonce and commitment (the ones it was cleared with).

:func:`checks` (and :func:`recompute`, its failures only) re-runs
:func:`app.auction.clearing.clear` from the document alone and checks that the reserve, the
seed and every bid open their commitments (:mod:`app.auction.commitments`) and that every
bid's award (quantity, price, tie selection) and every published figure equal the
recomputed ones. A verifier should also compare ``reserve.commitment`` and
``seed.commitment`` with the values the auction published before it opened.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.auction import clearing, commitments
from app.auction.models import Auction, AuctionAllocation, AuctionBid, AuctionResult

VERSION = "tanso-auction-audit-v1"

Document = dict[str, Any]


class AuditFormatError(ValueError):
    """The document is not an audit document (a missing or mistyped field)."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


# --- building --------------------------------------------------------------------------


def published_results(r: AuctionResult) -> Document:
    return {
        "status": str(r.status),
        "clearing_price": r.clearing_price,
        "average_price": r.average_price,
        "median_price": r.median_price,
        "min_winning_price": r.min_price,
        "max_winning_price": r.max_price,
        "offered_quantity": r.offered_quantity,
        "bid_quantity": r.bid_quantity,
        "sold_quantity": r.sold_quantity,
        "unsold_quantity": r.unsold_quantity,
        "cover_ratio": {
            "numerator": r.cover_ratio_numerator,
            "denominator": r.cover_ratio_denominator,
            "permille": r.cover_ratio_permille,
        },
        "bidders": r.bidders,
        "winners": r.winners,
        "revenue": r.revenue,
    }


def clearing_results(c: clearing.ClearingResult) -> Document:
    """The published figures as :func:`published_results` writes them, from a clearing."""
    return {
        "status": str(c.status),
        "clearing_price": c.clearing_price,
        "average_price": c.average_price,
        "median_price": c.median_price,
        "min_winning_price": c.min_price,
        "max_winning_price": c.max_price,
        "offered_quantity": c.supply,
        "bid_quantity": c.bid_quantity,
        "sold_quantity": c.sold_quantity,
        "unsold_quantity": c.unsold_quantity,
        "cover_ratio": {
            "numerator": c.cover_ratio[0],
            "denominator": c.cover_ratio[1],
            "permille": c.cover_ratio_permille,
        },
        "bidders": c.bidders,
        "winners": c.winners,
        "revenue": c.revenue,
    }


def bidder_labels(bids: list[AuctionBid]) -> dict[uuid.UUID, str]:
    """``B1``, ``B2``… by each bidder's first bid."""
    labels: dict[uuid.UUID, str] = {}
    for bid in sorted(bids, key=lambda b: b.submitted_seq):
        labels.setdefault(bid.bidder_organization_id, f"B{len(labels) + 1}")
    return labels


def group_labels(bids: list[AuctionBid]) -> dict[str, str]:
    """``G1``, ``G2``… by each group's first bid (groups are names an organisation chose, so
    they are never published as they are)."""
    labels: dict[str, str] = {}
    for bid in sorted(bids, key=lambda b: b.submitted_seq):
        if bid.group is not None:
            labels.setdefault(bid.group, f"G{len(labels) + 1}")
    return labels


def build(
    auction: Auction,
    result: AuctionResult,
    bids: list[AuctionBid],
    allocations: list[AuctionAllocation],
) -> Document:
    labels = bidder_labels(bids)
    groups = group_labels(bids)
    awards = {a.bid_id: a for a in allocations}
    rows = []
    for bid in sorted(bids, key=lambda b: b.submitted_seq):
        award = awards.get(bid.id)
        rows.append(
            {
                "bidder": labels[bid.bidder_organization_id],
                "group": None if bid.group is None else groups[bid.group],
                "bid_id": str(bid.id),
                "price": bid.price,
                "quantity": bid.quantity,
                "submitted_seq": bid.submitted_seq,
                "nonce": bid.nonce,
                "commitment": bid.commitment,
                "allocated": 0 if award is None else award.quantity,
                "allocation_price": None if award is None else award.price,
                "tie_selected": False if award is None else award.tie_selected,
            }
        )
    return {
        "version": VERSION,
        "auction_id": str(auction.id),
        "status": str(auction.status),
        "rules": {
            "format": str(auction.format),
            "supply": auction.supply_quantity,
            "min_bid_quantity": auction.min_bid_quantity,
            "quantity_step": auction.quantity_step,
            "price_tick": auction.price_tick,
            "public_floor_price": auction.public_floor_price,
            "max_bidder_quantity": auction.max_bidder_quantity,
            "max_bidder_share_bps": auction.max_bidder_share_bps,
            "max_bids_per_bidder": auction.max_bids_per_bidder,
            "tie_break": str(auction.tie_break),
            "undersubscribed": str(auction.undersubscribed),
        },
        "reserve": {
            "price": auction.reserve_price,
            "nonce": auction.reserve_nonce,
            "commitment": auction.reserve_commitment,
        },
        "seed": {
            "seed": auction.seed,
            "nonce": auction.seed_nonce,
            "commitment": auction.seed_commitment,
        },
        "bids": rows,
        "results": published_results(result),
    }


# --- recomputation ---------------------------------------------------------------------


def _field(node: Any, key: str, kind: type, *, optional: bool = False) -> Any:
    if not isinstance(node, dict) or key not in node:
        raise AuditFormatError(f"missing field {key!r}")
    value = node[key]
    if value is None and optional:
        return None
    if type(value) is not kind:
        raise AuditFormatError(f"field {key!r} must be {kind.__name__}")
    return value


def checks(doc: Any) -> list[Check]:
    """Every check on ``doc``; raises :class:`AuditFormatError` if it is not an audit document."""
    if _field(doc, "version", str) != VERSION:
        raise AuditFormatError(f"unknown version (expected {VERSION})")
    try:
        auction_id = uuid.UUID(_field(doc, "auction_id", str))
    except ValueError as exc:
        raise AuditFormatError("auction_id is not a UUID") from exc
    rules_doc = _field(doc, "rules", dict)
    reserve = _field(doc, "reserve", dict)
    seed = _field(doc, "seed", dict)
    bids_doc = _field(doc, "bids", list)
    published = _field(doc, "results", dict)

    out: list[Check] = []

    reserve_price = _field(reserve, "price", int, optional=True)
    reserve_nonce = _field(reserve, "nonce", str)
    out.append(
        _commitment_check(
            "reserve commitment",
            _field(reserve, "commitment", str),
            lambda: commitments.reserve_commitment(auction_id, reserve_price, reserve_nonce),
        )
    )
    seed_hex = _field(seed, "seed", str)
    seed_nonce = _field(seed, "nonce", str)
    out.append(
        _commitment_check(
            "seed commitment",
            _field(seed, "commitment", str),
            lambda: commitments.seed_commitment(auction_id, seed_hex, seed_nonce),
        )
    )

    bids: list[clearing.Bid] = []
    claimed: dict[str, tuple[int, int | None, bool]] = {}
    bad_bids: list[str] = []
    for row in bids_doc:
        bid_id = _field(row, "bid_id", str)
        price = _field(row, "price", int)
        quantity = _field(row, "quantity", int)
        nonce = _field(row, "nonce", str)
        published_commitment = _field(row, "commitment", str)
        try:
            expected = commitments.bid_commitment(
                auction_id, uuid.UUID(bid_id), price, quantity, nonce
            )
        except ValueError:
            expected = ""
        if not commitments.matches(expected, published_commitment):
            bad_bids.append(bid_id)
        bids.append(
            clearing.Bid(
                id=bid_id,
                bidder=_field(row, "bidder", str),
                price=price,
                quantity=quantity,
                submitted_seq=_field(row, "submitted_seq", int),
                # Absent from documents written before groups were published: no group.
                group=_field(row, "group", str, optional=True) if "group" in row else None,
            )
        )
        claimed[bid_id] = (
            _field(row, "allocated", int),
            _field(row, "allocation_price", int, optional=True),
            _field(row, "tie_selected", bool),
        )
    out.append(
        Check(
            "bid commitments",
            not bad_bids,
            f"{len(bids_doc)} bids open their commitments"
            if not bad_bids
            else f"do not open: {', '.join(bad_bids)}",
        )
    )

    try:
        rules = clearing.AuctionRules(
            format=_field(rules_doc, "format", str),
            supply=_field(rules_doc, "supply", int),
            reserve_price=reserve_price,
            min_bid_quantity=_field(rules_doc, "min_bid_quantity", int),
            quantity_step=_field(rules_doc, "quantity_step", int),
            price_tick=_field(rules_doc, "price_tick", int),
            max_bidder_quantity=_field(rules_doc, "max_bidder_quantity", int, optional=True),
            tie_break=_field(rules_doc, "tie_break", str),
            seed=bytes.fromhex(seed_hex),
            undersubscribed=_field(rules_doc, "undersubscribed", str),
        )
        result = clearing.clear(rules, bids)
    except (ValueError, TypeError) as exc:
        out.append(Check("clearing", False, f"the clearing refuses the document: {exc}"))
        return out

    awards = result.allocations.by_bid_id()
    wrong: list[str] = []
    for bid_id, (allocated, price, tie) in claimed.items():
        award = awards.get(bid_id)
        recomputed: tuple[int, int | None, bool] = (
            (0, None, False) if award is None else (award.quantity, award.price, award.tie_selected)
        )
        if (allocated, price, tie) != recomputed:
            wrong.append(
                f"{bid_id}: published {allocated} at {price} (tie {tie}),"
                f" recomputed {recomputed[0]} at {recomputed[1]} (tie {recomputed[2]})"
            )
    out.append(
        Check(
            "allocations",
            not wrong,
            f"{len(awards)} winning bids, {result.sold_quantity} sold, as published"
            if not wrong
            else "; ".join(wrong),
        )
    )
    expected_results = clearing_results(result)
    differ = [
        f"{key}: published {published.get(key)!r}, recomputed {value!r}"
        for key, value in expected_results.items()
        if published.get(key) != value
    ]
    out.append(
        Check(
            "results",
            not differ,
            "every published figure recomputes" if not differ else "; ".join(differ),
        )
    )
    return out


def _commitment_check(name: str, published: str, compute: Callable[[], str]) -> Check:
    try:
        expected = compute()
    except ValueError as exc:
        return Check(name, False, f"cannot be recomputed: {exc}")
    if commitments.matches(expected, published):
        return Check(name, True, "opens to the revealed value")
    return Check(name, False, "does not open to the revealed value")


def recompute(doc: Any) -> list[str]:
    """The problems found in an audit document (empty: verified)."""
    try:
        return [f"{c.name}: {c.detail}" for c in checks(doc) if not c.ok]
    except AuditFormatError as exc:
        return [f"not an audit document: {exc}"]
