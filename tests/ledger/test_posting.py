"""The pure validation of entries (``app.ledger.posting``): no database."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger.posting import (
    MAX_AMOUNT,
    MAX_LEGS,
    EntryError,
    Leg,
    UnbalancedEntry,
    net_by_account,
    transfer,
    validate_legs,
)

A = uuid.UUID(int=1)
B = uuid.UUID(int=2)
C = uuid.UUID(int=3)
D = uuid.UUID(int=4)
JPY = "JPY"
CREDIT = "CREDIT:batch"


def legs(*rows: tuple[uuid.UUID, str, Any]) -> list[Leg]:
    return [Leg(account, asset, amount) for account, asset, amount in rows]


class TestValidateLegs:
    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            pytest.param([], "at least two postings", id="no-legs"),
            pytest.param(legs((A, JPY, 0)), "at least two postings", id="one-leg"),
            pytest.param(legs((A, JPY, 5)), "at least two postings", id="one-nonzero-leg"),
            pytest.param(legs((A, JPY, 0), (B, JPY, 0)), "cannot be zero", id="zero-amounts"),
            pytest.param(
                legs((A, JPY, -5), (B, JPY, 5), (C, JPY, 0)), "cannot be zero", id="one-zero-leg"
            ),
            pytest.param(legs((A, JPY, -1.0), (B, JPY, 1.0)), "integers", id="float"),
            pytest.param(legs((A, JPY, "-1"), (B, JPY, "1")), "integers", id="string"),
            pytest.param(legs((A, JPY, -1), (B, JPY, True)), "integers", id="bool-true"),
            pytest.param(legs((A, JPY, False), (B, JPY, False)), "integers", id="bool-false"),
            pytest.param(
                legs((A, JPY, -(MAX_AMOUNT + 1)), (B, JPY, MAX_AMOUNT + 1)),
                "at most",
                id="beyond-max",
            ),
            pytest.param(legs((A, JPY, -(2**63)), (B, JPY, 2**63)), "at most", id="beyond-bigint"),
            pytest.param(legs((A, "", -1), (B, "", 1)), "names its asset", id="no-asset"),
            pytest.param(legs((A, JPY, -5), (B, JPY, 4)), "JPY", id="unbalanced"),
            pytest.param(
                legs((A, JPY, -5), (B, JPY, 5), (C, CREDIT, -2), (D, CREDIT, 1)),
                CREDIT,
                id="unbalanced-second-asset",
            ),
            pytest.param(
                legs((A, JPY, -5), (B, CREDIT, 5)), "sum to zero", id="balanced-only-across-assets"
            ),
            pytest.param(
                legs((A, JPY, -5), (B, JPY, 5), (A, CREDIT, -1), (C, CREDIT, 1)),
                "exactly one asset",
                id="account-with-two-assets",
            ),
        ],
    )
    def test_rejects(self, entry: list[Leg], message: str) -> None:
        with pytest.raises(EntryError, match=message):
            validate_legs(entry)

    def test_unbalanced_is_its_own_error(self) -> None:
        with pytest.raises(UnbalancedEntry):
            validate_legs(legs((A, JPY, -5), (B, JPY, 4)))

    def test_unbalanced_names_every_asset(self) -> None:
        with pytest.raises(UnbalancedEntry, match=f"{CREDIT}, {JPY}"):
            validate_legs(legs((A, JPY, -5), (B, JPY, 4), (C, CREDIT, -2), (D, CREDIT, 1)))

    def test_too_many_legs(self) -> None:
        many = [Leg(uuid.UUID(int=i + 1), JPY, 1 if i % 2 else -1) for i in range(MAX_LEGS + 2)]
        with pytest.raises(EntryError, match="at most"):
            validate_legs(many)

    @pytest.mark.parametrize(
        "entry",
        [
            pytest.param(legs((A, JPY, -5), (B, JPY, 5)), id="simple-transfer"),
            pytest.param(
                legs((A, JPY, -MAX_AMOUNT), (B, JPY, MAX_AMOUNT)), id="exactly-max-amount"
            ),
            pytest.param(legs((A, JPY, -5), (B, JPY, 2), (C, JPY, 3)), id="one-to-many"),
            pytest.param(
                legs((A, JPY, -500), (B, JPY, 500), (C, CREDIT, -2), (D, CREDIT, 2)),
                id="multi-asset-delivery-versus-payment",
            ),
            pytest.param(
                legs((A, JPY, -5), (B, JPY, 5), (A, JPY, 3), (B, JPY, -3)), id="same-accounts-twice"
            ),
            pytest.param(legs((A, JPY, -5), (A, JPY, 5)), id="same-account-both-sides"),
        ],
    )
    def test_accepts(self, entry: list[Leg]) -> None:
        validate_legs(entry)

    def test_accepts_a_tuple(self) -> None:
        validate_legs(tuple(legs((A, JPY, -5), (B, JPY, 5))))


class TestTransfer:
    def test_two_legs_from_source_to_destination(self) -> None:
        assert transfer(A, B, JPY, 7) == [Leg(A, JPY, -7), Leg(B, JPY, 7)]

    @pytest.mark.parametrize("amount", [0, -1])
    def test_rejects_non_positive(self, amount: int) -> None:
        with pytest.raises(EntryError, match="positive"):
            transfer(A, B, JPY, amount)

    def test_rejects_same_account(self) -> None:
        with pytest.raises(EntryError, match="two different accounts"):
            transfer(A, A, JPY, 1)


class TestNetByAccount:
    def test_sums_per_account(self) -> None:
        assert net_by_account(legs((A, JPY, -5), (B, JPY, 5), (A, JPY, 2), (C, JPY, -2))) == {
            A: -3,
            B: 5,
            C: -2,
        }

    def test_empty(self) -> None:
        assert net_by_account([]) == {}


# --- properties ------------------------------------------------------------------------

ASSETS = [JPY, "CREDIT:a", "CREDIT:b"]
amounts = st.integers(min_value=1, max_value=MAX_AMOUNT // 20)


@st.composite
def balanced_entries(draw: st.DrawFn) -> list[Leg]:
    """A balanced entry over one to three assets: per asset, debits and credits of equal sum.

    Every account holds one asset; the legs come out in a random order."""
    out: list[Leg] = []
    used = draw(st.lists(st.sampled_from(ASSETS), min_size=1, max_size=3, unique=True))
    next_account = iter(range(1, 10_000))
    for asset in used:
        pool = [uuid.UUID(int=next(next_account)) for _ in range(draw(st.integers(2, 6)))]
        debits = draw(st.lists(amounts, min_size=1, max_size=4))
        credits = draw(st.lists(amounts, min_size=1, max_size=4))
        # Make the two sides meet: top up the smaller side with one more leg.
        gap = sum(debits) - sum(credits)
        if gap > 0:
            credits.append(gap)
        elif gap < 0:
            debits.append(-gap)
        for amount in debits:
            out.append(Leg(draw(st.sampled_from(pool)), asset, -amount))
        for amount in credits:
            out.append(Leg(draw(st.sampled_from(pool)), asset, amount))
    return draw(st.permutations(out))


def per_asset(entry: Sequence[Leg]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for leg in entry:
        totals[leg.asset] += leg.amount
    return dict(totals)


class TestProperties:
    @given(balanced_entries())
    def test_every_balanced_entry_validates(self, entry: list[Leg]) -> None:
        assert all(total == 0 for total in per_asset(entry).values())
        validate_legs(entry)

    @given(
        balanced_entries(),
        st.integers(min_value=0),
        st.integers(min_value=-1_000, max_value=1_000).filter(bool),
    )
    def test_perturbing_one_amount_fails(self, entry: list[Leg], index: int, delta: int) -> None:
        i = index % len(entry)
        leg = entry[i]
        changed = leg.amount + delta
        perturbed = [*entry[:i], Leg(leg.account_id, leg.asset, changed), *entry[i + 1 :]]
        expected = EntryError if changed == 0 else UnbalancedEntry
        with pytest.raises(expected):
            validate_legs(perturbed)

    @given(balanced_entries())
    def test_net_by_account_sums_to_zero_per_asset(self, entry: list[Leg]) -> None:
        asset_of = {leg.account_id: leg.asset for leg in entry}
        totals: dict[str, int] = defaultdict(int)
        net = net_by_account(entry)
        for account, amount in net.items():
            totals[asset_of[account]] += amount
        assert set(totals) == {leg.asset for leg in entry}
        assert all(total == 0 for total in totals.values())
        assert set(net) == set(asset_of)

    @given(balanced_entries())
    def test_net_by_account_matches_a_replay(self, entry: list[Leg]) -> None:
        balances: dict[uuid.UUID, int] = {}
        for leg in entry:
            balances[leg.account_id] = balances.get(leg.account_id, 0) + leg.amount
        assert net_by_account(entry) == balances

    @given(balanced_entries(), st.integers(min_value=0))
    def test_dropping_one_leg_fails(self, entry: list[Leg], index: int) -> None:
        i = index % len(entry)
        with pytest.raises(EntryError):
            validate_legs([*entry[:i], *entry[i + 1 :]])
