"""The registry: issuance, transfers, credit holds, retirements, claims, offset pools, goals.

Every change of credits moves the ledger balance of the batch's asset and the batch's serial
blocks in the same transaction, under a lock on the batch row (so a batch's blocks change one
operation at a time, and lock order is always batch, then ledger accounts by id).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import structlog
from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts_service
from app.accounts.errors import MissingScope
from app.accounts.models import Organization, OrganizationKind
from app.accounts.service import Principal
from app.config import Settings
from app.core.ids import new_id, public_code
from app.core.pagination import Page, PageParams, make_page
from app.core.repository import parse_uuid_cursor
from app.core.time import TOKYO, utc_now
from app.db.driver import DatabaseRefusal
from app.ledger import service as ledger_service
from app.ledger.models import AccountKind, AssetKind
from app.ledger.posting import transfer as transfer_legs
from app.offsets import repository as repo
from app.offsets import serials
from app.offsets.errors import (
    BatchNotFound,
    ClaimAlreadyRevoked,
    ClaimNotFound,
    DuplicateReference,
    GoalExists,
    GoalNotFound,
    InsufficientCoverage,
    InsufficientCredits,
    InvalidTransfer,
    NotAMunicipality,
    PoolExhausted,
    PoolNotFound,
    ProjectNotFound,
    PurposeNotAllowed,
    RetirementNotFound,
)
from app.offsets.models import (
    GRAMS_PER_CREDIT,
    Batch,
    Category,
    Claim,
    ClaimAllocation,
    ClaimStatus,
    ClaimType,
    CreditTransfer,
    Goal,
    OffsetPool,
    Project,
    Purpose,
    Retirement,
)
from app.offsets.schemas import (
    ClaimCreate,
    GoalCreate,
    IssuanceCreate,
    PoolCreate,
    ProjectCreate,
    RetirementCreate,
    TransferCreate,
    UnitClaimCreate,
)
from app.offsets.signing import canonical_json, signing_key

log = structlog.get_logger()

# Purposes restricted to some categories (J-Credit: RE100 reporting takes only credits from
# renewable power generation).
PURPOSE_CATEGORIES: dict[Purpose, frozenset[Category]] = {
    Purpose.re100: frozenset({Category.renewable_power}),
}


def project_code(project: Project) -> str:
    return f"P{project.number:06d}"


def fiscal_year(day: date) -> int:
    """Japanese fiscal year (April to March) containing ``day``."""
    return day.year if day.month >= 4 else day.year - 1


def fiscal_year_bounds(year: int) -> tuple[datetime, datetime]:
    """[start, end) of a fiscal year, as aware datetimes in Asia/Tokyo."""
    return (
        datetime.combine(date(year, 4, 1), time(), TOKYO),
        datetime.combine(date(year + 1, 4, 1), time(), TOKYO),
    )


def ranges_of(moved: tuple[serials.Movement, ...]) -> list[list[int]]:
    """The serial ranges an operation moved, ascending, adjacent runs joined."""
    out: list[list[int]] = []
    for m in sorted(moved, key=lambda m: m.serial_start):
        if out and out[-1][1] + 1 == m.serial_start:
            out[-1][1] = m.serial_end
        else:
            out.append([m.serial_start, m.serial_end])
    return out


def display(project: Project, batch: Batch, ranges: list[list[int]]) -> list[str]:
    return [serials.format_serial(project_code(project), batch.vintage, s, e) for s, e in ranges]


def _pure_error(exc: serials.SerialError) -> Exception:
    if isinstance(exc, serials.InsufficientCredits):
        return InsufficientCredits(str(exc), requested=exc.requested, available=exc.available)
    return InvalidTransfer(str(exc))


# --- projects and issuance -------------------------------------------------------------


async def create_project(session: AsyncSession, data: ProjectCreate) -> Project:
    owner = await accounts_service.require_organization(session, data.owner_organization_id)
    project = Project(
        name=data.name,
        owner_organization_id=owner.id,
        methodology=data.methodology,
        category=data.category,
        prefecture=data.prefecture,
    )
    session.add(project)
    await session.flush()
    log.info("offsets.project_created", project_id=str(project.id))
    return project


async def issue(session: AsyncSession, data: IssuanceCreate) -> tuple[Batch, Project]:
    project = await session.get(Project, data.project_id)
    if project is None:
        raise ProjectNotFound("No such project.", project_id=str(data.project_id))
    holder = await accounts_service.require_organization(session, data.holder_organization_id)
    start = await repo.allocate_serials(session, data.quantity)
    batch_id = new_id()
    asset = ledger_service.credit_asset(batch_id)
    batch = Batch(
        id=batch_id,
        project_id=project.id,
        issued_to_organization_id=holder.id,
        category=project.category,
        prefecture=project.prefecture,
        quantity=data.quantity,
        monitoring_period_start=data.monitoring_period_start,
        monitoring_period_end=data.monitoring_period_end,
        vintage=fiscal_year(data.monitoring_period_end),
        labels=data.labels,
        serial_start=start,
        serial_end=start + data.quantity - 1,
        asset=asset,
        issued_at=utc_now(),
    )
    session.add(batch)
    await ledger_service.ensure_asset(
        session, asset, AssetKind.credit, f"{project_code(project)} vintage {batch.vintage}"
    )
    await session.flush()
    await repo.apply_change(
        session, serials.issue(batch.id, holder.id, batch.serial_start, batch.serial_end, new_id)
    )
    external = await ledger_service.account_id(session, None, asset, AccountKind.external)
    available = await ledger_service.account_id(session, holder.id, asset, AccountKind.available)
    await ledger_service.post_entry(
        session,
        ledger_service.EntrySpec(
            kind="issuance",
            legs=transfer_legs(external, available, asset, data.quantity),
            reference=f"batch:{batch.id}",
        ),
    )
    log.info("offsets.issued", batch_id=str(batch.id), quantity=data.quantity)
    return batch, project


async def get_batch(session: AsyncSession, batch_id: uuid.UUID) -> tuple[Batch, Project]:
    found = await repo.get_batch(session, batch_id)
    if found is None:
        raise BatchNotFound("No such batch.", batch_id=str(batch_id))
    return found


async def _lock_batch(session: AsyncSession, batch_id: uuid.UUID) -> tuple[Batch, Project]:
    found = await repo.lock_batch(session, batch_id)
    if found is None:
        raise BatchNotFound("No such batch.", batch_id=str(batch_id))
    return found


# --- holdings and transfers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holding:
    batch: Batch
    project: Project
    available_ranges: list[list[int]]
    held_ranges: list[list[int]]

    @property
    def available(self) -> int:
        return sum(e - s + 1 for s, e in self.available_ranges)

    @property
    def held(self) -> int:
        return sum(e - s + 1 for s, e in self.held_ranges)


async def holdings(session: AsyncSession, organization_id: uuid.UUID) -> list[Holding]:
    out = []
    for batch, project, blocks in await repo.holdings(session, organization_id):
        out.append(
            Holding(
                batch=batch,
                project=project,
                available_ranges=[
                    [b.serial_start, b.serial_end] for b in blocks if b.state == "active"
                ],
                held_ranges=[[b.serial_start, b.serial_end] for b in blocks if b.state == "held"],
            )
        )
    return out


async def _move_ledger(
    session: AsyncSession,
    asset: str,
    source: uuid.UUID,
    destination: uuid.UUID,
    quantity: int,
    kind: str,
    reference: str,
) -> None:
    await ledger_service.post_entry(
        session,
        ledger_service.EntrySpec(
            kind=kind, legs=transfer_legs(source, destination, asset, quantity), reference=reference
        ),
    )


async def transfer_credits(
    session: AsyncSession,
    from_organization_id: uuid.UUID,
    data: TransferCreate,
    *,
    kind: str = "transfer",
) -> tuple[CreditTransfer, Batch, Project]:
    if data.to_organization_id == from_organization_id:
        raise InvalidTransfer(
            "Credits cannot be transferred to their holder.", field="to_organization_id"
        )
    recipient = await accounts_service.require_organization(session, data.to_organization_id)
    batch, project = await _lock_batch(session, data.batch_id)
    blocks = await repo.live_blocks(session, batch.id, [from_organization_id, recipient.id])
    try:
        change = serials.transfer(blocks, from_organization_id, recipient.id, data.quantity, new_id)
    except serials.SerialError as exc:
        raise _pure_error(exc) from exc
    await repo.apply_change(session, change)
    source = await ledger_service.account_id(
        session, from_organization_id, batch.asset, AccountKind.available
    )
    destination = await ledger_service.account_id(
        session, recipient.id, batch.asset, AccountKind.available
    )
    record = CreditTransfer(
        id=new_id(),
        batch_id=batch.id,
        from_organization_id=from_organization_id,
        to_organization_id=recipient.id,
        quantity=data.quantity,
        serial_ranges=ranges_of(change.moved),
        kind=kind,
        created_at=utc_now(),
    )
    await _move_ledger(
        session, batch.asset, source, destination, data.quantity, kind, f"transfer:{record.id}"
    )
    session.add(record)
    await session.flush()
    log.info("offsets.transferred", batch_id=str(batch.id), quantity=data.quantity)
    return record, batch, project


# --- credit holds (for auctions and sell orders) ---------------------------------------


async def hold_credits(
    session: AsyncSession,
    organization_id: uuid.UUID,
    batch_id: uuid.UUID,
    quantity: int,
    *,
    reference: str,
) -> uuid.UUID:
    """Hold ``quantity`` credits of a batch (ledger hold and serial blocks). Returns the hold id."""
    await _lock_batch(session, batch_id)
    return await hold_credits_locked(
        session, organization_id, batch_id, quantity, reference=reference
    )


def _has_active(blocks: list[serials.Block], holder: uuid.UUID, quantity: int) -> bool:
    return (
        sum(
            b.quantity
            for b in blocks
            if b.holder == holder and b.state == serials.BlockState.ACTIVE
        )
        >= quantity
    )


def _insufficient(
    blocks: list[serials.Block], holder: uuid.UUID, quantity: int
) -> InsufficientCredits:
    available = sum(
        b.quantity for b in blocks if b.holder == holder and b.state == serials.BlockState.ACTIVE
    )
    return InsufficientCredits(
        f"{quantity} credits asked, {available} available.", requested=quantity, available=available
    )


async def release_credits(
    session: AsyncSession, batch_id: uuid.UUID, hold_id: uuid.UUID, quantity: int | None = None
) -> int:
    await _lock_batch(session, batch_id)
    return await release_credits_locked(session, batch_id, hold_id, quantity)


async def settle_credits(
    session: AsyncSession,
    batch_id: uuid.UUID,
    hold_id: uuid.UUID,
    to_organization_id: uuid.UUID,
    quantity: int,
    *,
    reference: str,
) -> list[list[int]]:
    """Deliver held credits to a buyer. Returns the serial ranges delivered."""
    batch, _ = await _lock_batch(session, batch_id)
    destination = await ledger_service.account_id(
        session, to_organization_id, batch.asset, AccountKind.available
    )
    return await settle_credits_locked(
        session, batch_id, hold_id, to_organization_id, destination, quantity, reference=reference
    )


async def settle_credits_many(
    session: AsyncSession,
    batch_id: uuid.UUID,
    hold_id: uuid.UUID,
    deliveries: Sequence[tuple[uuid.UUID, int]],
    *,
    reference: str,
    release_rest: bool = False,
) -> dict[uuid.UUID, list[list[int]]]:
    """Deliver held credits of one batch to many buyers at once (an auction close), and with
    ``release_rest`` give what the hold has left back to its holder: the same blocks and
    balances as ``settle_credits`` per delivery then ``release_credits``, with one batch lock,
    one pure ``serials.settle_hold_many``, one ``apply_change`` and one ledger call
    (``settle_holds``). A buyer listed twice gets the sum. Returns the serial ranges each
    buyer received."""
    totals: dict[uuid.UUID, int] = {}
    for organization_id, quantity in deliveries:
        totals[organization_id] = totals.get(organization_id, 0) + quantity
    batch, _ = await _lock_batch(session, batch_id)
    blocks = await repo.live_blocks(session, batch.id, list(totals), hold_id=hold_id)
    try:
        change = serials.settle_hold_many(
            blocks, hold_id, list(totals.items()), new_id, release_rest=release_rest
        )
    except serials.SerialError as exc:
        raise _pure_error(exc) from exc
    await repo.apply_change(session, change)
    accounts = await ledger_service.ensure_accounts(
        session, [(org, batch.asset, AccountKind.available) for org in totals]
    )
    await ledger_service.settle_holds(
        session,
        [
            ledger_service.HoldSettlement(
                hold_id,
                [
                    (accounts[(org, batch.asset, AccountKind.available)], q)
                    for org, q in totals.items()
                ],
                release_rest=release_rest,
            )
        ],
        reference=reference,
    )
    received: dict[uuid.UUID, list[serials.Movement]] = {org: [] for org in totals}
    for movement in change.moved:
        if movement.from_state == serials.BlockState.HELD and movement.to_holder in received:
            received[movement.to_holder].append(movement)
    return {org: ranges_of(tuple(moves)) for org, moves in received.items()}


# --- credit holds under a batch lock the caller already holds ---------------------------
#
# ``hold_credits``, ``settle_credits`` and ``release_credits`` lock the batch and call these;
# the order path calls them directly, having locked every batch an order touches up front in
# id order (``app.market.service.lock_settlement``): one read of the live blocks, the block
# change in one call and the ledger side in one call.


async def read_live_blocks(
    session: AsyncSession,
    batch_id: uuid.UUID,
    holders: Sequence[uuid.UUID],
    holds: Sequence[uuid.UUID] = (),
) -> None:
    """While the session defers its writes (``app.db.deferred``), read at once what the
    ``*_locked`` operations below will work on: the active blocks of the holders that will
    hold credits, and the blocks of the holds that will deliver or release them (with the
    blocks touching either); those that only receive need not be read."""
    await repo.read_live_blocks(session, batch_id, holders, holds)


def add_live_blocks(
    session: AsyncSession,
    batch_id: uuid.UUID,
    holders: Sequence[uuid.UUID],
    holds: Sequence[uuid.UUID],
    rows: Sequence[Sequence[Any]],
) -> None:
    """``read_live_blocks``, with the rows another call read under the batch lock held since
    (the order group's lock call, migration 0029)."""
    repo.add_live_blocks(session, batch_id, holders, holds, rows)


async def hold_credits_locked(
    session: AsyncSession,
    organization_id: uuid.UUID,
    batch_id: uuid.UUID,
    quantity: int,
    *,
    reference: str,
) -> uuid.UUID:
    """``hold_credits`` when the caller already holds the batch lock (the order path locks
    all its batches up front, in id order). Returns the hold id."""
    blocks = await repo.live_blocks(session, batch_id, [organization_id])
    if not _has_active(blocks, organization_id, quantity):
        raise _insufficient(blocks, organization_id, quantity)
    hold_id = await ledger_service.reserve(
        session,
        organization_id,
        ledger_service.credit_asset(batch_id),
        quantity,
        reference=reference,
    )
    try:
        change = serials.hold(blocks, organization_id, quantity, hold_id, new_id)
    except serials.SerialError as exc:
        raise _pure_error(exc) from exc
    await repo.apply_change(session, change)
    return hold_id


async def settle_credits_locked(
    session: AsyncSession,
    batch_id: uuid.UUID,
    hold_id: uuid.UUID,
    to_organization_id: uuid.UUID,
    destination: uuid.UUID,
    quantity: int,
    *,
    reference: str,
) -> list[list[int]]:
    """``settle_credits`` under the caller's batch lock, to the buyer's ``destination``
    account (its available account of the batch's asset). Returns the serial ranges."""
    blocks = await repo.live_blocks(
        session, batch_id, [to_organization_id], hold_id=hold_id, receiving=True
    )
    try:
        change = serials.settle_hold(blocks, hold_id, to_organization_id, quantity, new_id)
    except serials.SerialError as exc:
        raise _pure_error(exc) from exc
    await repo.apply_change(session, change)
    await ledger_service.settle_hold(session, hold_id, destination, quantity, reference=reference)
    return ranges_of(change.moved)


async def release_credits_locked(
    session: AsyncSession, batch_id: uuid.UUID, hold_id: uuid.UUID, quantity: int | None = None
) -> int:
    """``release_credits`` under the caller's batch lock."""
    blocks = await repo.live_blocks(session, batch_id, hold_id=hold_id)
    try:
        change = serials.release(blocks, hold_id, quantity, new_id)
    except serials.SerialError as exc:
        raise _pure_error(exc) from exc
    await repo.apply_change(session, change)
    return await ledger_service.release(session, hold_id, change.quantity)


# --- retirements -----------------------------------------------------------------------


async def retire_credits(
    session: AsyncSession, organization_id: uuid.UUID, data: RetirementCreate
) -> tuple[Retirement, Batch, Project]:
    batch, project = await _lock_batch(session, data.batch_id)
    allowed = PURPOSE_CATEGORIES.get(data.purpose)
    if allowed is not None and batch.category not in allowed:
        raise PurposeNotAllowed(
            f"Purpose {data.purpose.value!r} takes only credits of category: "
            + ", ".join(sorted(c.value for c in allowed))
            + f"; this batch is {batch.category}.",
            field="purpose",
        )
    blocks = await repo.live_blocks(session, batch.id, [organization_id])
    retirement_id = new_id()
    try:
        change = serials.retire(blocks, organization_id, data.quantity, retirement_id, new_id)
    except serials.SerialError as exc:
        raise _pure_error(exc) from exc
    retirement = Retirement(
        id=retirement_id,
        code=public_code("RT"),
        organization_id=organization_id,
        batch_id=batch.id,
        quantity=data.quantity,
        purpose=data.purpose,
        purpose_detail=data.purpose_detail,
        beneficiary_name=data.beneficiary_name,
        is_public=data.public,
        serial_ranges=ranges_of(change.moved),
        claimed_g=0,
        retired_at=utc_now(),
    )
    session.add(retirement)
    await session.flush()
    await repo.apply_change(session, change)
    source = await ledger_service.account_id(
        session, organization_id, batch.asset, AccountKind.available
    )
    sink = await ledger_service.account_id(session, None, batch.asset, AccountKind.retired)
    await _move_ledger(
        session,
        batch.asset,
        source,
        sink,
        data.quantity,
        "retirement",
        f"retirement:{retirement.code}",
    )
    log.info("offsets.retired", retirement_id=str(retirement.id), quantity=data.quantity)
    return retirement, batch, project


async def get_retirement(
    session: AsyncSession, principal: Principal, retirement_id: uuid.UUID
) -> tuple[Retirement, Batch, Project]:
    rows = await repo.retirement_views(session, Retirement.id == retirement_id)
    if not rows or not principal.can_act_for(rows[0][0].organization_id):
        raise RetirementNotFound("No such retirement.")
    return rows[0]


async def public_retirement(
    session: AsyncSession, code: str
) -> tuple[Retirement, Batch, Project, str]:
    rows = await repo.retirement_views(session, (Retirement.code == code) & Retirement.is_public)
    if not rows:
        raise RetirementNotFound("No such public retirement.")
    retirement, batch, project = rows[0]
    org = await session.get(Organization, retirement.organization_id)
    return retirement, batch, project, org.name if org else ""


async def public_retirements(
    session: AsyncSession, params: PageParams
) -> Page[tuple[Retirement, Batch, Project, str]]:
    where: ColumnElement[bool] = Retirement.is_public.is_(True)
    if params.after is not None:
        where = where & (Retirement.id < parse_uuid_cursor(params.after))
    rows = await repo.retirement_views(session, where, limit=params.limit + 1)
    names = {
        o.id: o.name
        for o in (
            await session.execute(
                select(Organization).where(
                    Organization.id.in_({r.organization_id for r, _, _ in rows})
                )
            )
        ).scalars()
    }
    items = [(r, b, p, names.get(r.organization_id, "")) for r, b, p in rows]
    last = items[params.limit - 1][0] if len(items) > params.limit else None
    return make_page(items, params, str(last.id) if last else None)


# --- claims ----------------------------------------------------------------------------


def _retirement_doc(
    retirement: Retirement, batch: Batch, project: Project, grams: int
) -> dict[str, Any]:
    return {
        "code": retirement.code,
        "grams": grams,
        "quantity": retirement.quantity,
        "batch_id": str(batch.id),
        "project_code": project_code(project),
        "project_name": project.name,
        "methodology": project.methodology,
        "category": str(batch.category),
        "vintage": batch.vintage,
        "serial_ranges": retirement.serial_ranges,
        "serial_display": display(project, batch, retirement.serial_ranges),
        "purpose": str(retirement.purpose),
        "beneficiary_name": retirement.beneficiary_name,
        "retired_at": retirement.retired_at.isoformat(),
    }


def _sign(settings: Settings, document: dict[str, Any]) -> tuple[str, str, str]:
    key = signing_key(settings)
    canonical = canonical_json(document)
    return canonical, key.sign(canonical), key.key_id


def _acting_organization(principal: Principal) -> Organization:
    """The caller's organisation: claims are made by an organisation, never by the platform
    administrator's key (403 ``insufficient_scope``, like every per-organisation operation)."""
    if principal.organization is None:
        raise MissingScope("This operation needs an organisation's API key.")
    return principal.organization


def claim_url(settings: Settings, code: str) -> str:
    return f"{settings.public_base_url}/v1/public/claims/{code}"


async def create_claim(
    session: AsyncSession, settings: Settings, principal: Principal, data: ClaimCreate
) -> Claim:
    org = _acting_organization(principal)
    locked = await repo.lock_retirements(session, org.id, data.retirement_ids)
    missing = [str(i) for i in data.retirement_ids if i not in locked]
    if missing:
        raise RetirementNotFound("No such retirement(s).", retirement_ids=missing)
    need = data.footprint_g
    plan: list[tuple[Retirement, int]] = []
    for rid in data.retirement_ids:  # in the caller's order
        retirement = locked[rid]
        free = retirement.quantity * GRAMS_PER_CREDIT - retirement.claimed_g
        take = min(free, need)
        if take > 0:
            plan.append((retirement, take))
            need -= take
        if need == 0:
            break
    if need > 0:
        raise InsufficientCoverage(
            "The retirements (less what other claims and pools already use) do not cover the footprint.",
            footprint_g=data.footprint_g,
            available_g=data.footprint_g - need,
        )
    views = {
        r.id: (b, p)
        for r, b, p in await repo.retirement_views(
            session, Retirement.id.in_([r.id for r, _ in plan])
        )
    }
    code = public_code("CL")
    document = {
        "version": 1,
        "type": "tanso.carbon_offset_claim",
        "code": code,
        "claim_type": data.claim_type.value,
        "subject": data.subject.model_dump(exclude_none=True),
        "footprint_g": data.footprint_g,
        "covered_g": data.footprint_g,
        "period": {"start": data.period_start.isoformat(), "end": data.period_end.isoformat()},
        "claimant": {"organization_id": str(org.id), "name": org.name},
        "retirements": [_retirement_doc(r, *views[r.id], grams) for r, grams in plan],
        "issued_at": utc_now().isoformat(),
        "verification_url": claim_url(settings, code),
    }
    canonical, signature, key_id = _sign(settings, document)
    claim = Claim(
        id=new_id(),
        code=code,
        organization_id=org.id,
        claim_type=data.claim_type,
        subject=document["subject"],
        footprint_g=data.footprint_g,
        covered_g=data.footprint_g,
        period_start=data.period_start,
        period_end=data.period_end,
        status=ClaimStatus.active,
        document=canonical,
        signature=signature,
        key_id=key_id,
        created_at=utc_now(),
    )
    session.add(claim)
    await session.flush()
    for retirement, grams in plan:
        retirement.claimed_g += grams
        session.add(
            ClaimAllocation(
                retirement_id=retirement.id, claim_id=claim.id, grams=grams, created_at=utc_now()
            )
        )
    await session.flush()
    log.info("offsets.claim_created", claim_id=str(claim.id), footprint_g=data.footprint_g)
    return claim


async def get_claim(session: AsyncSession, principal: Principal, claim_id: uuid.UUID) -> Claim:
    claim = await session.get(Claim, claim_id)
    if claim is None or not principal.can_act_for(claim.organization_id):
        raise ClaimNotFound("No such claim.")
    return claim


async def claim_allocations(
    session: AsyncSession, claim: Claim
) -> list[tuple[ClaimAllocation, Retirement]]:
    return [(a, r) for a, r, _, _ in await repo.allocations_for(session, claim_id=claim.id)]


async def revoke_claim(
    session: AsyncSession, principal: Principal, claim_id: uuid.UUID, reason: str
) -> Claim:
    """Withdraw a claim. Its grams return to its retirements (or its pool) for other claims;
    the public page keeps showing the claim, marked revoked, with the reason."""
    claim = await session.get(Claim, claim_id, with_for_update=True)
    if claim is None or not principal.can_act_for(claim.organization_id):
        raise ClaimNotFound("No such claim.")
    if claim.status == ClaimStatus.revoked:
        raise ClaimAlreadyRevoked("The claim is already revoked.")
    now = utc_now()
    if claim.pool_id is not None:
        await repo.return_to_pool(session, claim.pool_id, claim.covered_g)
    else:
        allocations = await claim_allocations(session, claim)
        locked = await repo.lock_retirements(
            session, claim.organization_id, [r.id for _, r in allocations]
        )
        for allocation, retirement in allocations:
            if allocation.released_at is None:
                locked[retirement.id].claimed_g -= allocation.grams
                allocation.released_at = now
    claim.status = ClaimStatus.revoked
    claim.revoked_reason = reason
    claim.revoked_at = now
    await session.flush()
    log.info("offsets.claim_revoked", claim_id=str(claim.id))
    return claim


async def public_claim(session: AsyncSession, code: str) -> Claim:
    claim = (await session.execute(select(Claim).where(Claim.code == code))).scalar_one_or_none()
    if claim is None:
        raise ClaimNotFound("No such claim.")
    return claim


# --- offset pools (per-unit claims) ----------------------------------------------------


async def create_pool(session: AsyncSession, principal: Principal, data: PoolCreate) -> OffsetPool:
    pool = OffsetPool(
        id=new_id(),
        code=public_code("PL"),
        organization_id=principal.organization_id,
        name=data.name,
        claim_type=data.claim_type,
        subject=data.subject.model_dump(exclude_none=True),
        total_g=0,
        low_balance_g=data.low_balance_g,
    )
    session.add(pool)
    await session.flush()
    await repo.create_pool_shards(session, pool.id)
    if data.retirement_ids:
        await fund_pool(session, principal, pool.id, data.retirement_ids)
    return pool


async def _own_pool(
    session: AsyncSession, principal: Principal, pool_id: uuid.UUID, *, lock: bool = False
) -> OffsetPool:
    pool = await session.get(OffsetPool, pool_id, with_for_update=lock)
    if pool is None or not principal.can_act_for(pool.organization_id):
        raise PoolNotFound("No such offset pool.")
    return pool


async def fund_pool(
    session: AsyncSession, principal: Principal, pool_id: uuid.UUID, retirement_ids: list[uuid.UUID]
) -> OffsetPool:
    """Dedicate the unclaimed grams of whole retirements to a pool."""
    pool = await _own_pool(session, principal, pool_id, lock=True)
    locked = await repo.lock_retirements(session, pool.organization_id, retirement_ids)
    missing = [str(i) for i in retirement_ids if i not in locked]
    if missing:
        raise RetirementNotFound("No such retirement(s).", retirement_ids=missing)
    added = 0
    for retirement in locked.values():
        free = retirement.quantity * GRAMS_PER_CREDIT - retirement.claimed_g
        if free <= 0:
            continue
        retirement.claimed_g += free
        added += free
        session.add(
            ClaimAllocation(
                retirement_id=retirement.id, pool_id=pool.id, grams=free, created_at=utc_now()
            )
        )
    if added == 0:
        raise InsufficientCoverage("These retirements have no unclaimed grams left.", available_g=0)
    pool.total_g += added
    await repo.add_to_pool(session, pool.id, added)
    await session.flush()
    log.info("offsets.pool_funded", pool_id=str(pool.id), grams=added)
    return pool


async def get_pool(session: AsyncSession, principal: Principal, pool_id: uuid.UUID) -> OffsetPool:
    return await _own_pool(session, principal, pool_id)


async def pool_remaining(session: AsyncSession, pool_id: uuid.UUID) -> int:
    return (await repo.pool_remaining(session, [pool_id])).get(pool_id, 0)


async def pool_allocations(
    session: AsyncSession, pool_id: uuid.UUID
) -> list[tuple[ClaimAllocation, Retirement, Batch, Project]]:
    return await repo.allocations_for(session, pool_id=pool_id)


POOL_SHORT_SQLSTATE = "TN102"


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """What a draw needs of its pool. None of it ever changes, so it is cached per process."""

    id: uuid.UUID
    organization_id: uuid.UUID
    code: str
    name: str
    claim_type: ClaimType
    subject: dict[str, Any]
    low_balance_g: int | None


_POOL_FACTS: dict[uuid.UUID, PoolFacts] = {}
_POOL_FACTS_MAX = 10_000


async def _pool_facts(session: AsyncSession, pool_id: uuid.UUID) -> PoolFacts | None:
    facts = _POOL_FACTS.get(pool_id)
    if facts is None:
        pool = await session.get(OffsetPool, pool_id)
        if pool is None:
            return None
        facts = PoolFacts(
            pool.id,
            pool.organization_id,
            pool.code,
            pool.name,
            ClaimType(pool.claim_type),
            pool.subject,
            pool.low_balance_g,
        )
        if len(_POOL_FACTS) >= _POOL_FACTS_MAX:
            _POOL_FACTS.clear()
        _POOL_FACTS[pool_id] = facts
    return facts


@dataclass(frozen=True, slots=True)
class UnitClaim:
    claim: Claim
    pool_remaining_g: int
    low_balance: bool


async def draw_unit_claim(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    pool_id: uuid.UUID,
    data: UnitClaimCreate,
) -> UnitClaim:
    """Draw grams from a pool as one signed unit claim. The pool row is touched last, in one
    conditional UPDATE, so it is locked only for the moment before commit and can never go
    below zero however many checkouts race."""
    org = _acting_organization(principal)
    pool = await _pool_facts(session, pool_id)
    if pool is None or pool.organization_id != org.id:
        raise PoolNotFound("No such offset pool.")
    code = public_code("CL")
    document = {
        "version": 1,
        "type": "tanso.carbon_offset_unit_claim",
        "code": code,
        "claim_type": str(pool.claim_type),
        "subject": pool.subject,
        "footprint_g": data.grams,
        "covered_g": data.grams,
        "reference": data.reference,
        "pool": {"code": pool.code, "name": pool.name},
        "claimant": {"organization_id": str(org.id), "name": org.name},
        "issued_at": utc_now().isoformat(),
        "verification_url": claim_url(settings, code),
    }
    canonical, signature, key_id = _sign(settings, document)
    values: dict[str, Any] = {
        "id": new_id(),
        "code": code,
        "organization_id": org.id,
        "pool_id": pool.id,
        "reference": data.reference,
        "claim_type": pool.claim_type,
        "subject": pool.subject,
        "footprint_g": data.grams,
        "covered_g": data.grams,
        "status": ClaimStatus.active,
        "document": canonical,
        "signature": signature,
        "key_id": key_id,
        "created_at": utc_now(),
    }
    try:
        remaining = await repo.draw_from_pool(session, values)
    except DatabaseRefusal as refusal:
        if refusal.sqlstate == POOL_SHORT_SQLSTATE:
            raise PoolExhausted(
                "The pool has fewer grams left than asked.", requested_g=data.grams
            ) from refusal
        if refusal.constraint == "offset_claims_pool_id_reference_key":
            raise DuplicateReference(
                "A unit claim with this reference already exists in this pool.",
                reference=data.reference,
            ) from refusal
        raise
    threshold = data.notify_below_g if data.notify_below_g is not None else pool.low_balance_g
    claim = Claim(**values)
    return UnitClaim(
        claim=claim,
        pool_remaining_g=int(remaining),
        low_balance=threshold is not None and remaining < threshold,
    )


# --- municipal goals -------------------------------------------------------------------


async def create_goal(session: AsyncSession, principal: Principal, data: GoalCreate) -> Goal:
    org = principal.organization
    if org is None or org.kind != OrganizationKind.municipality:
        raise NotAMunicipality("Goals are set by municipalities.")
    goal = Goal(
        organization_id=org.id,
        fiscal_year=data.fiscal_year,
        target_tonnes=data.target_tonnes,
        local_share_target_pct=data.local_share_target_pct,
    )
    session.add(goal)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise GoalExists(
            "A goal for this fiscal year exists.", fiscal_year=data.fiscal_year
        ) from exc
    return goal


@dataclass(frozen=True, slots=True)
class GoalProgress:
    goal: Goal
    retired_tonnes: int
    local_tonnes: int
    retirements: int


async def goal_progress(
    session: AsyncSession, principal: Principal, goal_id: uuid.UUID
) -> GoalProgress:
    goal = await session.get(Goal, goal_id)
    if goal is None or not principal.can_act_for(goal.organization_id):
        raise GoalNotFound("No such goal.")
    org = await session.get(Organization, goal.organization_id)
    start, end = fiscal_year_bounds(goal.fiscal_year)
    retired, local, count = await repo.retired_tonnes(
        session, goal.organization_id, start, end, org.prefecture if org else None
    )
    return GoalProgress(goal=goal, retired_tonnes=retired, local_tonnes=local, retirements=count)


async def list_goals(session: AsyncSession, principal: Principal) -> list[GoalProgress]:
    goals = (
        (
            await session.execute(
                select(Goal)
                .where(Goal.organization_id == principal.organization_id)
                .order_by(Goal.fiscal_year)
            )
        )
        .scalars()
        .all()
    )
    return [await goal_progress(session, principal, g.id) for g in goals]
