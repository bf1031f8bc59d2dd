"""Model-based test: random sequences of ledger operations against the real service.

A Hypothesis ``RuleBasedStateMachine`` drives deposits, transfers (some with an idempotency
key, later replayed), holds, releases and settlements through ``app.ledger.service`` (real
commits on the test database) while an in-memory model predicts every balance and every
outcome: what the model says must fail (an overdraft, more than a hold has, a closed hold)
must raise and change nothing. After every step the database must equal the model, every
asset must sum to zero, no participant account may be negative, and ``tanso ledger verify``'s
checks must find nothing.

Hypothesis state machines are synchronous: the async service runs on a dedicated event loop
(an ``asyncio.Runner`` with its own engine), one ``run`` per step.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from itertools import count
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.accounts.models import Organization, OrganizationKind
from app.db.session import SessionMaker, create_sessionmaker
from app.db.url import async_url
from app.ledger import service as ledger
from app.ledger.errors import HoldNotActive, InsufficientBalance, InvalidEntry
from app.ledger.models import AccountKind, AssetKind
from app.ledger.posting import transfer as transfer_legs
from app.ledger.service import CASH, EntrySpec
from app.ledger.verify import run_checks
from tests.conftest import _truncate as truncate

T = TypeVar("T")

ORGS = 3
CREDIT = ledger.credit_asset(uuid.UUID("00000000-0000-7000-8000-00000000c0de"))
ASSETS = (CASH, CREDIT)

org_indexes = st.integers(min_value=0, max_value=ORGS - 1)
others = st.integers(min_value=1, max_value=ORGS - 1)  # an offset that names another org
assets = st.sampled_from(ASSETS)
amounts = st.integers(min_value=1, max_value=1_500)


@dataclass
class ModelHold:
    org: int
    asset: str
    remaining: int


class LedgerMachine(RuleBasedStateMachine):
    """Set ``runner``, ``engine`` and ``sessions`` on the class before running it."""

    runner: asyncio.Runner
    engine: AsyncEngine
    sessions: SessionMaker

    holds = Bundle("holds")
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.refs = count(1)
        self.orgs: list[uuid.UUID] = self.run(self._reset())
        self.available = {(o, a): 0 for o in range(ORGS) for a in ASSETS}
        self.held = {(o, a): 0 for o in range(ORGS) for a in ASSETS}
        self.external = dict.fromkeys(ASSETS, 0)
        self.model_holds: dict[uuid.UUID, ModelHold] = {}

    # --- plumbing ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    async def _reset(self) -> list[uuid.UUID]:
        await truncate(self.engine)
        async with self.sessions() as session:
            await ledger.ensure_asset(session, CREDIT, AssetKind.credit, "model batch")
            orgs = [
                Organization(name=f"Model {i}", kind=OrganizationKind.company) for i in range(ORGS)
            ]
            session.add_all(orgs)
            await session.commit()
            return [o.id for o in orgs]

    def attempt(self, op: Callable[[AsyncSession], Awaitable[T]]) -> T | Exception:
        """Run ``op`` in its own transaction: committed if it returns, rolled back if it raises."""

        async def go() -> T | Exception:
            async with self.sessions() as session:
                try:
                    result = await op(session)
                except (InsufficientBalance, InvalidEntry, HoldNotActive) as exc:
                    await session.rollback()
                    return exc
                await session.commit()
                return result

        return self.run(go())

    def expect(self, outcome: object, error: type[Exception] | None) -> None:
        if error is None:
            assert not isinstance(outcome, Exception), f"model expected success, got {outcome!r}"
        else:
            assert isinstance(outcome, error), f"model expected {error.__name__}, got {outcome!r}"

    # --- rules ---------------------------------------------------------------------------

    @rule(org=org_indexes, asset=assets, amount=amounts)
    def deposit(self, org: int, asset: str, amount: int) -> None:
        owner = self.orgs[org]

        async def op(session: AsyncSession) -> None:
            if asset == CASH:
                await ledger.record_deposit(session, owner, amount, f"bank-{next(self.refs)}")
                return
            source = await ledger.account_id(session, None, asset, AccountKind.external)
            dest = await ledger.account_id(session, owner, asset, AccountKind.available)
            await ledger.post_entry(
                session, EntrySpec(kind="issue", legs=transfer_legs(source, dest, asset, amount))
            )

        self.expect(self.attempt(op), None)
        self.available[org, asset] += amount
        self.external[asset] -= amount

    @rule(src=org_indexes, offset=others, asset=assets, amount=amounts)
    def transfer(self, src: int, offset: int, asset: str, amount: int) -> None:
        dst = (src + offset) % ORGS
        enough = self.available[src, asset] >= amount
        outcome = self.attempt(self._transfer_op(src, dst, asset, amount, None))
        self.expect(outcome, None if enough else InsufficientBalance)
        if enough:
            self.available[src, asset] -= amount
            self.available[dst, asset] += amount

    @rule(target=keys, src=org_indexes, offset=others, asset=assets, amount=amounts)
    def keyed_transfer(self, src: int, offset: int, asset: str, amount: int) -> object:
        """A transfer with an idempotency key, kept for ``replay``."""
        key = f"key-{next(self.refs)}"
        dst = (src + offset) % ORGS
        outcome = self.attempt(self._transfer_op(src, dst, asset, amount, key))
        enough = self.available[src, asset] >= amount
        self.expect(outcome, None if enough else InsufficientBalance)
        if not enough:
            return multiple()
        assert isinstance(outcome, uuid.UUID)
        self.available[src, asset] -= amount
        self.available[dst, asset] += amount
        return key

    @rule(key=keys, src=org_indexes, offset=others, asset=assets, amount=amounts)
    def replay(self, key: str, src: int, offset: int, asset: str, amount: int) -> None:
        """A used key is skipped whatever the entry says: nothing moves, even an overdraft."""
        outcome = self.attempt(self._transfer_op(src, (src + offset) % ORGS, asset, amount, key))
        assert outcome is None, outcome

    def _transfer_op(
        self, src: int, dst: int, asset: str, amount: int, key: str | None
    ) -> Callable[[AsyncSession], Awaitable[uuid.UUID | None]]:
        source_org, dest_org = self.orgs[src], self.orgs[dst]

        async def op(session: AsyncSession) -> uuid.UUID | None:
            source = await ledger.account_id(session, source_org, asset, AccountKind.available)
            dest = await ledger.account_id(session, dest_org, asset, AccountKind.available)
            return await ledger.post_entry(
                session,
                EntrySpec(
                    kind="transfer",
                    legs=transfer_legs(source, dest, asset, amount),
                    idempotency_key=key,
                ),
            )

        return op

    @rule(target=holds, org=org_indexes, asset=assets, amount=amounts)
    def reserve(self, org: int, asset: str, amount: int) -> object:
        owner = self.orgs[org]

        async def op(session: AsyncSession) -> uuid.UUID:
            return await ledger.reserve(session, owner, asset, amount, reference="model")

        enough = self.available[org, asset] >= amount
        outcome = self.attempt(op)
        self.expect(outcome, None if enough else InsufficientBalance)
        if not enough:
            return multiple()
        assert isinstance(outcome, uuid.UUID)
        self.available[org, asset] -= amount
        self.held[org, asset] += amount
        self.model_holds[outcome] = ModelHold(org, asset, amount)
        return outcome

    @rule(hold=holds, amount=st.none() | amounts)
    def release(self, hold: uuid.UUID, amount: int | None) -> None:
        model = self.model_holds[hold]

        async def op(session: AsyncSession) -> int:
            return await ledger.release(session, hold, amount)

        take = model.remaining if amount is None else amount
        if model.remaining == 0:
            error: type[Exception] | None = HoldNotActive
        elif take > model.remaining:
            error = InvalidEntry
        else:
            error = None
        outcome = self.attempt(op)
        self.expect(outcome, error)
        if error is None:
            assert outcome == take
            model.remaining -= take
            self.held[model.org, model.asset] -= take
            self.available[model.org, model.asset] += take

    @rule(hold=holds, offset=others, amount=amounts)
    def settle(self, hold: uuid.UUID, offset: int, amount: int) -> None:
        model = self.model_holds[hold]
        dst = (model.org + offset) % ORGS
        dest_org = self.orgs[dst]

        async def op(session: AsyncSession) -> None:
            dest = await ledger.account_id(session, dest_org, model.asset, AccountKind.available)
            await ledger.settle_hold(session, hold, dest, amount, reference="model-trade")

        if model.remaining == 0:
            error: type[Exception] | None = HoldNotActive
        elif amount > model.remaining:
            error = InvalidEntry
        else:
            error = None
        self.expect(self.attempt(op), error)
        if error is None:
            model.remaining -= amount
            self.held[model.org, model.asset] -= amount
            self.available[dst, model.asset] += amount

    # --- invariants ----------------------------------------------------------------------

    async def _snapshot(self) -> tuple[list[tuple[Any, ...]], list[str]]:
        async with self.sessions() as session:
            rows = [
                tuple(r)
                for r in (
                    await session.execute(
                        text(
                            "SELECT organization_id, asset, kind, balance, is_non_negative"
                            " FROM ledger_accounts"
                        )
                    )
                ).all()
            ]
            failed = [f"{r.name}: {r.violations}" for r in await run_checks(session) if not r.ok]
            return rows, failed

    @invariant()
    def books_match_the_model(self) -> None:
        rows, failed = self.run(self._snapshot())
        assert failed == []
        index = {org_id: i for i, org_id in enumerate(self.orgs)}
        actual: dict[tuple[str, int | None, str], int] = {}
        totals = dict.fromkeys(ASSETS, 0)
        for org_id, asset, kind, balance, non_negative in rows:
            actual[kind, None if org_id is None else index[org_id], asset] = balance
            totals[asset] += balance
            if non_negative:
                assert balance >= 0, (org_id, asset, kind, balance)
        # Conservation: whatever came in from outside is somewhere inside.
        assert totals == dict.fromkeys(ASSETS, 0)
        for (org, asset), value in self.available.items():
            assert actual.get(("available", org, asset), 0) == value, ("available", org, asset)
        for (org, asset), value in self.held.items():
            assert actual.get(("held", org, asset), 0) == value, ("held", org, asset)
        for asset, value in self.external.items():
            assert actual.get(("external", None, asset), 0) == value, ("external", asset)
        # Every account the database has is one the model knows.
        assert all(kind in ("available", "held", "external") for kind, _, _ in actual)

    @invariant()
    def held_equals_open_holds(self) -> None:
        for (org, asset), value in self.held.items():
            open_holds = sum(
                h.remaining for h in self.model_holds.values() if (h.org, h.asset) == (org, asset)
            )
            assert open_holds == value


def test_ledger_matches_its_model(database_url: str) -> None:
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        engine = create_async_engine(async_url(database_url), pool_size=2, max_overflow=0)
        LedgerMachine.runner = runner
        LedgerMachine.engine = engine
        LedgerMachine.sessions = create_sessionmaker(engine)
        try:
            run_state_machine_as_test(
                LedgerMachine,
                settings=settings(
                    max_examples=15,
                    stateful_step_count=35,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            runner.run(truncate(engine))
            runner.run(engine.dispose())
