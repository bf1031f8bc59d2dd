"""``ledger.settle_holds`` (many holds settled and released in one call, an auction close):
the same balances and holds as ``settle_hold`` per payout then ``release`` of the rest, one
hold at a time (a Hypothesis property on the real database), fewer entries, and a refusal
changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.accounts.models import Organization, OrganizationKind
from app.db.session import SessionMaker, create_sessionmaker
from app.db.url import async_url
from app.ledger import service as ledger
from app.ledger.errors import HoldNotActive, HoldNotFound, InvalidEntry
from app.ledger.models import AccountKind
from app.ledger.service import CASH, HoldSettlement
from app.ledger.verify import run_checks
from tests.conftest import _truncate as truncate
from tests.ledger.helpers import available_and_held, entry_count, fund

OWNERS = 3  # bidders: they hold cash
PAYEES = 2  # sellers: they are paid
FUNDS = 100_000


@dataclass(frozen=True)
class PlannedHold:
    owner: int
    amount: int
    payouts: tuple[tuple[int, int], ...]  # (payee index: owners then payees, amount)
    release_rest: bool


@st.composite
def planned_hold(draw: st.DrawFn) -> PlannedHold:
    amount = draw(st.integers(min_value=1, max_value=5_000))
    paid = draw(st.integers(min_value=0, max_value=amount))
    cuts = (
        sorted(draw(st.lists(st.integers(min_value=1, max_value=paid), max_size=2))) if paid else []
    )
    pieces = [b - a for a, b in zip([0, *cuts], [*cuts, paid], strict=True) if b > a]
    payouts = tuple(
        (draw(st.integers(min_value=0, max_value=OWNERS + PAYEES - 1)), piece) for piece in pieces
    )
    release_rest = draw(st.booleans()) if payouts else True
    return PlannedHold(draw(st.integers(0, OWNERS - 1)), amount, payouts, release_rest)


async def _world(
    sessions: SessionMaker, plan: list[PlannedHold]
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Organisations (owners then payees), owners funded, one hold per planned hold."""
    async with sessions() as session:
        orgs = []
        for i in range(OWNERS + PAYEES):
            org = Organization(name=f"settle-holds {i}", kind=OrganizationKind.company)
            session.add(org)
            orgs.append(org)
        await session.commit()
        ids = [o.id for o in orgs]
        for owner in ids[:OWNERS]:
            await fund(session, owner, FUNDS * len(plan))
        holds = [await ledger.reserve(session, ids[h.owner], CASH, h.amount) for h in plan]
        await session.commit()
    return ids, holds


async def _state(
    session: AsyncSession, orgs: list[uuid.UUID], holds: list[uuid.UUID]
) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    balances = [await available_and_held(session, org) for org in orgs]
    rows = (
        await session.execute(
            text("SELECT id, remaining, status FROM ledger_holds WHERE id = ANY(:ids)"),
            {"ids": holds},
        )
    ).all()
    by_id = {row.id: (int(row.remaining), str(row.status)) for row in rows}
    return balances, [by_id[h] for h in holds]


async def _compare(sessions: SessionMaker, plan: list[PlannedHold]) -> None:
    batch_orgs, batch_holds = await _world(sessions, plan)
    single_orgs, single_holds = await _world(sessions, plan)
    async with sessions() as session:
        destination = [
            await ledger.account_id(session, org, CASH, AccountKind.available) for org in batch_orgs
        ]
        before = await entry_count(session)
        await ledger.settle_holds(
            session,
            [
                HoldSettlement(
                    hold, [(destination[i], a) for i, a in h.payouts], release_rest=h.release_rest
                )
                for hold, h in zip(batch_holds, plan, strict=True)
            ],
            kind="batch",
        )
        await session.commit()
        # One entry per owner at most, however many holds.
        assert await entry_count(session) - before <= OWNERS

        destination = [
            await ledger.account_id(session, org, CASH, AccountKind.available)
            for org in single_orgs
        ]
        for hold, h in zip(single_holds, plan, strict=True):
            for i, a in h.payouts:
                await ledger.settle_hold(session, hold, destination[i], a)
            if h.release_rest and h.amount > sum(a for _, a in h.payouts):
                await ledger.release(session, hold)
        await session.commit()

        assert await _state(session, batch_orgs, batch_holds) == await _state(
            session, single_orgs, single_holds
        )
        failed = {r.name: r.violations for r in await run_checks(session) if not r.ok}
        assert failed == {}


def test_a_batch_equals_the_same_operations_one_by_one(database_url: str) -> None:
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        engine = create_async_engine(async_url(database_url), pool_size=2, max_overflow=0)
        sessions = create_sessionmaker(engine)

        @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(planned_hold(), min_size=1, max_size=12))
        def check(plan: list[PlannedHold]) -> None:
            runner.run(_compare(sessions, plan))

        try:
            check()
        finally:
            runner.run(truncate(engine))
            runner.run(engine.dispose())


class TestRefusals:
    async def _two_holds(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        await fund(session, org, 1_000)
        first = await ledger.reserve(session, org, CASH, 300)
        second = await ledger.reserve(session, org, CASH, 200)
        payee = await ledger.account_id(session, other_org, CASH, AccountKind.available)
        await session.commit()
        return first, second, payee

    @pytest.mark.parametrize(
        ("case", "error"),
        [
            ("too_much", InvalidEntry),
            ("unknown", HoldNotFound),
            ("closed", HoldNotActive),
            ("twice", InvalidEntry),
            ("zero", InvalidEntry),
            ("nothing", InvalidEntry),
        ],
    )
    async def test_a_bad_item_refuses_the_whole_batch(
        self,
        session: AsyncSession,
        org: uuid.UUID,
        other_org: uuid.UUID,
        case: str,
        error: type[Exception],
    ) -> None:
        first, second, payee = await self._two_holds(session, org, other_org)
        if case == "closed":
            await ledger.release(session, second)
            await session.commit()
        before = (await available_and_held(session, org), await entry_count(session))
        bad = {
            "too_much": HoldSettlement(second, [(payee, 201)]),
            "unknown": HoldSettlement(uuid.uuid4(), [(payee, 1)]),
            "closed": HoldSettlement(second, [(payee, 1)]),
            "twice": HoldSettlement(first, [(payee, 1)]),
            "zero": HoldSettlement(second, [(payee, 0)]),
            "nothing": HoldSettlement(second),
        }[case]
        with pytest.raises(error):
            await ledger.settle_holds(
                session, [HoldSettlement(first, [(payee, 100)], release_rest=True), bad]
            )
        await session.rollback()
        assert (await available_and_held(session, org), await entry_count(session)) == before

    async def test_pays_and_releases_and_closes_the_holds(
        self, session: AsyncSession, org: uuid.UUID, other_org: uuid.UUID
    ) -> None:
        first, second, payee = await self._two_holds(session, org, other_org)
        await ledger.settle_holds(
            session,
            [
                HoldSettlement(first, [(payee, 100), (payee, 50)], release_rest=True),
                HoldSettlement(second, [(payee, 20)]),
            ],
            kind="auction_settlement",
            reference="auction:x",
        )
        await session.commit()
        assert await available_and_held(session, org) == (1_000 - 500 + 150, 180)
        assert await available_and_held(session, other_org) == (170, 0)
        statuses = (
            await session.execute(
                text("SELECT id, remaining, status FROM ledger_holds WHERE id = ANY(:ids)"),
                {"ids": [first, second]},
            )
        ).all()
        assert {r.id: (r.remaining, r.status) for r in statuses} == {
            first: (0, "closed"),
            second: (180, "active"),
        }
        kinds = (
            await session.execute(
                text("SELECT kind, reference FROM ledger_entries WHERE kind = 'auction_settlement'")
            )
        ).all()
        assert [tuple(k) for k in kinds] == [("auction_settlement", "auction:x")]
