"""Model-based test: random sequences of registry operations against the real service.

A Hypothesis ``RuleBasedStateMachine`` drives issuance, transfers, credit holds (hold,
release, settle) and retirements through ``app.offsets.service`` between three organisations
on one or two batches (real commits on the test database), while an in-memory model tracks
exactly which serials each organisation has active, each hold has, and each retirement
retired (the lowest serials always move first). After every step the ledger's and the
registry's checkers must find nothing, and ``service.holdings`` (what ``GET /v1/holdings``
shows), the held blocks of every hold and every retirement's serial ranges must equal the
model.

State machines are synchronous: the async service runs on a dedicated event loop (an
``asyncio.Runner`` with its own engine), one ``run`` per step.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)
from hypothesis.stateful import run_state_machine_as_test as run_machine
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.accounts.models import Organization, OrganizationKind
from app.core.errors import DomainError
from app.db.session import SessionMaker, create_sessionmaker
from app.db.url import async_url
from app.ledger.verify import run_checks
from app.offsets import service
from app.offsets.errors import InsufficientCredits, InvalidTransfer, PurposeNotAllowed
from app.offsets.models import Category, Purpose
from app.offsets.schemas import IssuanceCreate, ProjectCreate, RetirementCreate, TransferCreate
from app.offsets.verify import run_registry_checks
from tests.conftest import _truncate as truncate

T = TypeVar("T")

ORGS = 3
MAX_BATCHES = 2

org_indexes = st.integers(min_value=0, max_value=ORGS - 1)
others = st.integers(min_value=1, max_value=ORGS - 1)  # an offset that names another org
batch_indexes = st.integers(min_value=0, max_value=MAX_BATCHES - 1)
quantities = st.integers(min_value=1, max_value=90)


@dataclass
class ModelHold:
    org: int
    batch: int
    serials: list[int] = field(default_factory=list)  # ascending


def lowest(serials: set[int] | list[int], quantity: int) -> list[int]:
    return sorted(serials)[:quantity]


def expand(ranges: list[list[int]]) -> set[int]:
    return {s for lo, hi in ranges for s in range(lo, hi + 1)}


class RegistryMachine(RuleBasedStateMachine):
    """Set ``runner``, ``engine`` and ``sessions`` on the class before running it."""

    runner: asyncio.Runner
    engine: AsyncEngine
    sessions: SessionMaker

    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.orgs, self.project = self.run(self._reset())
        self.batches: list[uuid.UUID] = []
        self.active: dict[tuple[int, int], set[int]] = defaultdict(set)
        self.model_holds: dict[uuid.UUID, ModelHold] = {}
        self.retirements: dict[uuid.UUID, set[int]] = {}

    # --- plumbing ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    async def _reset(self) -> tuple[list[uuid.UUID], uuid.UUID]:
        await truncate(self.engine)
        async with self.sessions() as session:
            orgs = [
                Organization(name=f"Registry model {i}", kind=OrganizationKind.company)
                for i in range(ORGS)
            ]
            session.add_all(orgs)
            await session.flush()
            project = await service.create_project(
                session,
                ProjectCreate(
                    name="Model forest",
                    owner_organization_id=orgs[0].id,
                    methodology="FO-001",
                    category=Category.forest,
                    prefecture="03",
                ),
            )
            await session.commit()
            return [o.id for o in orgs], project.id

    def attempt(self, op: Callable[[AsyncSession], Awaitable[T]]) -> T | DomainError:
        """Run ``op`` in its own transaction: committed if it returns, rolled back if it raises."""

        async def go() -> T | DomainError:
            async with self.sessions() as session:
                try:
                    result = await op(session)
                except DomainError as exc:
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

    def batch(self, index: int) -> tuple[int, uuid.UUID]:
        b = index % len(self.batches)
        return b, self.batches[b]

    # --- rules ---------------------------------------------------------------------------

    @precondition(lambda self: len(self.batches) < MAX_BATCHES)
    @rule(org=org_indexes, quantity=st.integers(min_value=1, max_value=150))
    def issue(self, org: int, quantity: int) -> None:
        data = IssuanceCreate(
            project_id=self.project,
            holder_organization_id=self.orgs[org],
            quantity=quantity,
            monitoring_period_start=date(2024, 4, 1),
            monitoring_period_end=date(2025, 3, 31),
        )

        async def op(session: AsyncSession) -> tuple[uuid.UUID, int, int]:
            batch, _ = await service.issue(session, data)
            return batch.id, batch.serial_start, batch.serial_end

        outcome = self.attempt(op)
        self.expect(outcome, None)
        assert not isinstance(outcome, DomainError)
        batch_id, start, end = outcome
        assert end - start + 1 == quantity
        self.batches.append(batch_id)
        self.active[org, len(self.batches) - 1] = set(range(start, end + 1))

    @precondition(lambda self: self.batches)
    @rule(src=org_indexes, offset=others, index=batch_indexes, quantity=quantities)
    def transfer(self, src: int, offset: int, index: int, quantity: int) -> None:
        dst = (src + offset) % ORGS
        b, batch_id = self.batch(index)
        data = TransferCreate(
            to_organization_id=self.orgs[dst], batch_id=batch_id, quantity=quantity
        )

        async def op(session: AsyncSession) -> list[list[int]]:
            record, _, _ = await service.transfer_credits(session, self.orgs[src], data)
            return record.serial_ranges

        enough = len(self.active[src, b]) >= quantity
        outcome = self.attempt(op)
        self.expect(outcome, None if enough else InsufficientCredits)
        if enough:
            moved = lowest(self.active[src, b], quantity)
            assert isinstance(outcome, list)
            assert expand(outcome) == set(moved)
            self.active[src, b] -= set(moved)
            self.active[dst, b] |= set(moved)

    @precondition(lambda self: self.batches)
    @rule(target=holds, org=org_indexes, index=batch_indexes, quantity=quantities)
    def hold(self, org: int, index: int, quantity: int) -> object:
        b, batch_id = self.batch(index)

        async def op(session: AsyncSession) -> uuid.UUID:
            return await service.hold_credits(
                session, self.orgs[org], batch_id, quantity, reference="model-order"
            )

        enough = len(self.active[org, b]) >= quantity
        outcome = self.attempt(op)
        self.expect(outcome, None if enough else InsufficientCredits)
        if not enough:
            return multiple()
        assert isinstance(outcome, uuid.UUID)
        held = lowest(self.active[org, b], quantity)
        self.active[org, b] -= set(held)
        self.model_holds[outcome] = ModelHold(org, b, held)
        return outcome

    def _hold_error(self, model: ModelHold, quantity: int | None) -> type[Exception] | None:
        if not model.serials:
            return InvalidTransfer  # the hold has no credits left
        if quantity is not None and quantity > len(model.serials):
            return InsufficientCredits
        return None

    @rule(hold=holds, quantity=st.none() | quantities)
    def release(self, hold: uuid.UUID, quantity: int | None) -> None:
        model = self.model_holds[hold]
        batch_id = self.batches[model.batch]

        async def op(session: AsyncSession) -> int:
            return await service.release_credits(session, batch_id, hold, quantity)

        error = self._hold_error(model, quantity)
        outcome = self.attempt(op)
        self.expect(outcome, error)
        if error is None:
            take = len(model.serials) if quantity is None else quantity
            assert outcome == take
            released, model.serials = model.serials[:take], model.serials[take:]
            self.active[model.org, model.batch] |= set(released)

    @rule(hold=holds, offset=st.integers(min_value=0, max_value=ORGS - 1), quantity=quantities)
    def settle(self, hold: uuid.UUID, offset: int, quantity: int) -> None:
        model = self.model_holds[hold]
        dst = (model.org + offset) % ORGS
        batch_id = self.batches[model.batch]

        async def op(session: AsyncSession) -> list[list[int]]:
            return await service.settle_credits(
                session, batch_id, hold, self.orgs[dst], quantity, reference="model-trade"
            )

        error = self._hold_error(model, quantity)
        outcome = self.attempt(op)
        self.expect(outcome, error)
        if error is None:
            delivered, model.serials = model.serials[:quantity], model.serials[quantity:]
            assert isinstance(outcome, list)
            assert expand(outcome) == set(delivered)
            self.active[dst, model.batch] |= set(delivered)

    @precondition(lambda self: self.batches)
    @rule(
        org=org_indexes,
        index=batch_indexes,
        quantity=quantities,
        purpose=st.sampled_from([Purpose.offset, Purpose.law_reporting, Purpose.re100]),
    )
    def retire(self, org: int, index: int, quantity: int, purpose: Purpose) -> None:
        b, batch_id = self.batch(index)
        data = RetirementCreate(
            batch_id=batch_id, quantity=quantity, purpose=purpose, beneficiary_name="Model"
        )

        async def op(session: AsyncSession) -> tuple[uuid.UUID, list[list[int]]]:
            retirement, _, _ = await service.retire_credits(session, self.orgs[org], data)
            return retirement.id, retirement.serial_ranges

        if purpose == Purpose.re100:  # forest credits never count for RE100
            error: type[Exception] | None = PurposeNotAllowed
        elif len(self.active[org, b]) < quantity:
            error = InsufficientCredits
        else:
            error = None
        outcome = self.attempt(op)
        self.expect(outcome, error)
        if error is None:
            assert isinstance(outcome, tuple)
            retirement_id, ranges = outcome
            taken = lowest(self.active[org, b], quantity)
            assert expand(ranges) == set(taken)
            self.active[org, b] -= set(taken)
            self.retirements[retirement_id] = set(taken)

    # --- invariants ----------------------------------------------------------------------

    async def _snapshot(
        self,
    ) -> tuple[
        list[str],
        dict[tuple[int, int], tuple[set[int], set[int]]],
        dict[uuid.UUID, set[int]],
        dict[uuid.UUID, set[int]],
    ]:
        async with self.sessions() as session:
            results = await run_checks(session) + await run_registry_checks(session)
            failed = [f"{r.name}: {r.violations}" for r in results if not r.ok]
            index = {batch_id: i for i, batch_id in enumerate(self.batches)}
            seen: dict[tuple[int, int], tuple[set[int], set[int]]] = {}
            for o, org_id in enumerate(self.orgs):
                for h in await service.holdings(session, org_id):
                    available, held = expand(h.available_ranges), expand(h.held_ranges)
                    # Active ranges are merged: sorted, and never touching or overlapping.
                    for (_, end), (start, _) in itertools.pairwise(sorted(h.available_ranges)):
                        assert start > end + 1, h.available_ranges
                    assert h.available == len(available)
                    assert h.held == len(held)
                    seen[o, index[h.batch.id]] = (available, held)
            held_blocks: dict[uuid.UUID, set[int]] = defaultdict(set)
            for hold_id, lo, hi in (
                await session.execute(
                    text(
                        "SELECT hold_id, serial_start, serial_end FROM offset_blocks"
                        " WHERE closed_at IS NULL AND state = 'held'"
                    )
                )
            ).all():
                held_blocks[hold_id] |= set(range(lo, hi + 1))
            retired: dict[uuid.UUID, set[int]] = {}
            for retirement_id, ranges in (
                await session.execute(text("SELECT id, serial_ranges FROM offset_retirements"))
            ).all():
                retired[retirement_id] = expand(ranges)
            return failed, seen, dict(held_blocks), retired

    @invariant()
    def registry_matches_the_model(self) -> None:
        failed, seen, held_blocks, retired = self.run(self._snapshot())
        assert failed == []
        expected: dict[tuple[int, int], tuple[set[int], set[int]]] = {}
        for o in range(ORGS):
            for b in range(len(self.batches)):
                held: set[int] = set()
                for h in self.model_holds.values():
                    if (h.org, h.batch) == (o, b):
                        held |= set(h.serials)
                if self.active[o, b] or held:
                    expected[o, b] = (self.active[o, b], held)
        assert seen == expected
        assert held_blocks == {h: set(m.serials) for h, m in self.model_holds.items() if m.serials}
        assert retired == self.retirements


def test_registry_matches_its_model(database_url: str) -> None:
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        engine = create_async_engine(async_url(database_url), pool_size=2, max_overflow=0)
        RegistryMachine.runner = runner
        RegistryMachine.engine = engine
        RegistryMachine.sessions = create_sessionmaker(engine)
        try:
            run_machine(
                RegistryMachine,
                settings=settings(
                    max_examples=10,
                    stateful_step_count=25,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            runner.run(truncate(engine))
            runner.run(engine.dispose())
