from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from app.accounts.dependencies import (
    AUTH_ERRORS,
    AnyKeyDep,
    ReaderDep,
    RegistryDep,
    RetirerDep,
    TransfererDep,
)
from app.accounts.errors import InvalidApiKey, OrganizationNotFound
from app.config import Settings, settings_dependency
from app.core.errors import problem_responses
from app.core.pagination import Page, PageDep
from app.db.session import SessionDep
from app.ledger.errors import InsufficientBalance
from app.offsets import service as offsets_service
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
from app.offsets.models import Batch, Claim, OffsetPool, Project, Retirement
from app.offsets.schemas import (
    BatchRead,
    ClaimCreate,
    ClaimRead,
    ClaimRetirement,
    ClaimRevoke,
    GoalCreate,
    GoalRead,
    HoldingRead,
    IssuanceCreate,
    PoolCreate,
    PoolFund,
    PoolRead,
    ProjectCreate,
    ProjectRead,
    PublicClaim,
    PublicKeyRead,
    PublicRetirement,
    RetirementCreate,
    RetirementRead,
    TransferCreate,
    TransferRead,
    UnitClaimCreate,
    UnitClaimRead,
)
from app.offsets.signing import ALGORITHM, b64url, signing_key

router = APIRouter(tags=["registry"])
public_router = APIRouter(prefix="/public", tags=["public"])

SettingsDep = Annotated[Settings, Depends(settings_dependency)]


# --- read models -----------------------------------------------------------------------


def project_read(p: Project) -> ProjectRead:
    return ProjectRead(
        id=p.id,
        code=offsets_service.project_code(p),
        name=p.name,
        owner_organization_id=p.owner_organization_id,
        methodology=p.methodology,
        category=p.category,
        prefecture=p.prefecture,
        created_at=p.created_at,
    )


def batch_read(b: Batch, p: Project) -> BatchRead:
    return BatchRead(
        id=b.id,
        project_id=p.id,
        project_code=offsets_service.project_code(p),
        category=b.category,
        prefecture=b.prefecture,
        vintage=b.vintage,
        quantity=b.quantity,
        monitoring_period_start=b.monitoring_period_start,
        monitoring_period_end=b.monitoring_period_end,
        serial_start=b.serial_start,
        serial_end=b.serial_end,
        serial_display=offsets_service.display(p, b, [[b.serial_start, b.serial_end]])[0],
        labels=b.labels,
        issued_at=b.issued_at,
    )


def _urls(settings: Settings, code: str) -> tuple[str, str]:
    base = f"{settings.public_base_url}/v1/public/retirements/{code}"
    return base + "/certificate", base


def retirement_read(settings: Settings, r: Retirement, b: Batch, p: Project) -> RetirementRead:
    certificate_url, verification_url = _urls(settings, r.code)
    return RetirementRead(
        id=r.id,
        code=r.code,
        batch_id=b.id,
        project_code=offsets_service.project_code(p),
        category=b.category,
        vintage=b.vintage,
        quantity=r.quantity,
        serial_ranges=r.serial_ranges,
        serial_display=offsets_service.display(p, b, r.serial_ranges),
        purpose=r.purpose,
        purpose_detail=r.purpose_detail,
        beneficiary_name=r.beneficiary_name,
        public=r.is_public,
        claimed_g=r.claimed_g,
        retired_at=r.retired_at,
        certificate_url=certificate_url,
        verification_url=verification_url,
    )


def public_retirement_read(
    settings: Settings, r: Retirement, b: Batch, p: Project, retired_by: str
) -> PublicRetirement:
    return PublicRetirement(
        code=r.code,
        batch_id=b.id,
        project_code=offsets_service.project_code(p),
        project_name=p.name,
        methodology=p.methodology,
        category=b.category,
        vintage=b.vintage,
        quantity=r.quantity,
        serial_ranges=r.serial_ranges,
        serial_display=offsets_service.display(p, b, r.serial_ranges),
        purpose=r.purpose,
        purpose_detail=r.purpose_detail,
        beneficiary_name=r.beneficiary_name,
        retired_by=retired_by,
        retired_at=r.retired_at,
        certificate_url=_urls(settings, r.code)[0],
    )


def claim_read(settings: Settings, c: Claim, retirements: list[ClaimRetirement]) -> ClaimRead:
    return ClaimRead(
        id=c.id,
        code=c.code,
        status=c.status,
        claim_type=c.claim_type,
        subject=c.subject,
        footprint_g=c.footprint_g,
        covered_g=c.covered_g,
        period_start=c.period_start,
        period_end=c.period_end,
        retirements=retirements,
        pool_id=c.pool_id,
        reference=c.reference,
        revoked_reason=c.revoked_reason,
        created_at=c.created_at,
        verification_url=offsets_service.claim_url(settings, c.code),
    )


async def _claim_read(session: SessionDep, settings: Settings, claim: Claim) -> ClaimRead:
    allocations = await offsets_service.claim_allocations(session, claim)
    return claim_read(
        settings,
        claim,
        [ClaimRetirement(retirement_id=r.id, code=r.code, grams=a.grams) for a, r in allocations],
    )


async def _pool_read(session: SessionDep, pool: OffsetPool) -> PoolRead:
    allocations = await offsets_service.pool_allocations(session, pool.id)
    remaining = await offsets_service.pool_remaining(session, pool.id)
    return PoolRead(
        id=pool.id,
        code=pool.code,
        name=pool.name,
        claim_type=pool.claim_type,
        subject=pool.subject,
        total_g=pool.total_g,
        remaining_g=remaining,
        drawn_g=pool.total_g - remaining,
        low_balance_g=pool.low_balance_g,
        retirements=[
            ClaimRetirement(retirement_id=r.id, code=r.code, grams=a.grams)
            for a, r, _, _ in allocations
        ],
        created_at=pool.created_at,
    )


def goal_read(progress: offsets_service.GoalProgress) -> GoalRead:
    goal = progress.goal
    retired = progress.retired_tonnes
    return GoalRead(
        id=goal.id,
        organization_id=goal.organization_id,
        fiscal_year=goal.fiscal_year,
        target_tonnes=goal.target_tonnes,
        local_share_target_pct=goal.local_share_target_pct,
        retired_tonnes=retired,
        local_tonnes=progress.local_tonnes,
        progress_pct=retired * 100 // goal.target_tonnes,
        local_share_pct=progress.local_tonnes * 100 // retired if retired else 0,
        target_met=retired >= goal.target_tonnes,
        local_share_met=progress.local_tonnes * 100 >= goal.local_share_target_pct * retired
        if retired
        else goal.local_share_target_pct == 0,
        retirements=progress.retirements,
    )


# --- projects, issuance, batches -------------------------------------------------------


@router.post(
    "/projects",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectRead,
    responses=problem_responses(*AUTH_ERRORS, OrganizationNotFound),
    summary="Register a J-Credit project (registry)",
)
async def create_project(body: ProjectCreate, session: SessionDep, _: RegistryDep) -> ProjectRead:
    return project_read(await offsets_service.create_project(session, body))


@router.post(
    "/issuances",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchRead,
    responses=problem_responses(*AUTH_ERRORS, ProjectNotFound, OrganizationNotFound),
    summary="Issue a batch of credits to a holder (registry)",
)
async def create_issuance(body: IssuanceCreate, session: SessionDep, _: RegistryDep) -> BatchRead:
    batch, project = await offsets_service.issue(session, body)
    return batch_read(batch, project)


@router.get(
    "/batches/{batch_id}",
    response_model=BatchRead,
    responses=problem_responses(InvalidApiKey, BatchNotFound),
    summary="A batch of credits",
)
async def get_batch(batch_id: uuid.UUID, session: SessionDep, _: AnyKeyDep) -> BatchRead:
    return batch_read(*await offsets_service.get_batch(session, batch_id))


# --- holdings and transfers ------------------------------------------------------------


@router.get(
    "/holdings",
    response_model=list[HoldingRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="The caller's credits by batch, with their serial ranges",
)
async def get_holdings(session: SessionDep, principal: ReaderDep) -> list[HoldingRead]:
    out = []
    for h in await offsets_service.holdings(session, principal.organization_id):
        out.append(
            HoldingRead(
                batch_id=h.batch.id,
                project_code=offsets_service.project_code(h.project),
                category=h.batch.category,
                vintage=h.batch.vintage,
                labels=h.batch.labels,
                available=h.available,
                held=h.held,
                serial_ranges=h.available_ranges,
                held_serial_ranges=h.held_ranges,
                serial_display=offsets_service.display(h.project, h.batch, h.available_ranges),
            )
        )
    return out


@router.post(
    "/credit-transfers",
    status_code=status.HTTP_201_CREATED,
    response_model=TransferRead,
    responses=problem_responses(
        *AUTH_ERRORS, OrganizationNotFound, BatchNotFound, InsufficientCredits, InvalidTransfer
    ),
    summary="Transfer credits (and their serial blocks) to another organisation",
)
async def create_transfer(
    body: TransferCreate, session: SessionDep, principal: TransfererDep
) -> TransferRead:
    record, batch, project = await offsets_service.transfer_credits(
        session, principal.organization_id, body
    )
    return TransferRead(
        id=record.id,
        batch_id=batch.id,
        from_organization_id=record.from_organization_id,
        to_organization_id=record.to_organization_id,
        quantity=record.quantity,
        serial_ranges=record.serial_ranges,
        serial_display=offsets_service.display(project, batch, record.serial_ranges),
        created_at=record.created_at,
    )


# --- retirements -----------------------------------------------------------------------


@router.post(
    "/retirements",
    status_code=status.HTTP_201_CREATED,
    response_model=RetirementRead,
    responses=problem_responses(
        *AUTH_ERRORS, BatchNotFound, InsufficientCredits, PurposeNotAllowed, InsufficientBalance
    ),
    summary="Retire credits (無効化): irreversible",
)
async def create_retirement(
    body: RetirementCreate, session: SessionDep, principal: RetirerDep, settings: SettingsDep
) -> RetirementRead:
    r, b, p = await offsets_service.retire_credits(session, principal.organization_id, body)
    return retirement_read(settings, r, b, p)


@router.get(
    "/retirements/{retirement_id}",
    response_model=RetirementRead,
    responses=problem_responses(*AUTH_ERRORS, RetirementNotFound),
    summary="One of the caller's retirements",
)
async def get_retirement(
    retirement_id: uuid.UUID, session: SessionDep, principal: ReaderDep, settings: SettingsDep
) -> RetirementRead:
    return retirement_read(
        settings, *await offsets_service.get_retirement(session, principal, retirement_id)
    )


@public_router.get(
    "/retirements",
    response_model=Page[PublicRetirement],
    responses={200: {"content": {"text/csv": {}}}},
    summary="The public register of retirements (JSON, or CSV with ?format=csv)",
)
async def public_retirements(
    session: SessionDep,
    page: PageDep,
    settings: SettingsDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response | Page[PublicRetirement]:
    result = await offsets_service.public_retirements(session, page)
    items = [public_retirement_read(settings, *row) for row in result.data]
    if format == "json":
        return Page(data=items, next_cursor=result.next_cursor)
    out = io.StringIO()
    writer = csv.writer(out)
    columns = [
        "code", "retired_at", "retired_by", "beneficiary_name", "purpose", "purpose_detail",
        "quantity", "project_code", "project_name", "methodology", "category", "vintage",
        "serial_display", "certificate_url",
    ]  # fmt: skip
    writer.writerow(columns)
    for item in items:
        row = item.model_dump(mode="json")
        row["serial_display"] = " ".join(item.serial_display)
        writer.writerow([_csv_cell(row[c]) for c in columns])
    headers = {"X-Next-Cursor": result.next_cursor} if result.next_cursor else {}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


def _csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading =, +, -, @, tab or CR would make it a
    formula, so such cells get a leading apostrophe (OWASP's CSV-injection advice)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@public_router.get(
    "/retirements/{code}",
    response_model=PublicRetirement,
    responses=problem_responses(RetirementNotFound),
    summary="One public retirement",
)
async def public_retirement(
    code: str, session: SessionDep, settings: SettingsDep
) -> PublicRetirement:
    return public_retirement_read(settings, *await offsets_service.public_retirement(session, code))


@public_router.get(
    "/retirements/{code}/certificate",
    response_class=HTMLResponse,
    responses=problem_responses(RetirementNotFound),
    summary="The retirement certificate, as a printable page with a QR code",
)
async def retirement_certificate(
    code: str, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    from app.offsets import certificates

    view = public_retirement_read(settings, *await offsets_service.public_retirement(session, code))
    return HTMLResponse(
        certificates.render_retirement_html(view, verify_url=_urls(settings, code)[0])
    )


@public_router.get(
    "/retirements/{code}/certificate.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **problem_responses(RetirementNotFound)},
    summary="The retirement certificate as PDF",
)
async def retirement_certificate_pdf(
    code: str, session: SessionDep, settings: SettingsDep
) -> Response:
    from app.offsets import certificates

    view = public_retirement_read(settings, *await offsets_service.public_retirement(session, code))
    pdf = await run_in_threadpool(
        certificates.render_retirement_pdf, view, verify_url=_urls(settings, code)[0]
    )
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{code}.pdf"'},
    )


# --- claims ----------------------------------------------------------------------------


@router.post(
    "/claims",
    status_code=status.HTTP_201_CREATED,
    response_model=ClaimRead,
    responses=problem_responses(*AUTH_ERRORS, RetirementNotFound, InsufficientCoverage),
    summary="Publish a signed carbon-offset claim backed by the caller's retirements",
)
async def create_claim(
    body: ClaimCreate, session: SessionDep, principal: RetirerDep, settings: SettingsDep
) -> ClaimRead:
    claim = await offsets_service.create_claim(session, settings, principal, body)
    return await _claim_read(session, settings, claim)


@router.get(
    "/claims/{claim_id}",
    response_model=ClaimRead,
    responses=problem_responses(*AUTH_ERRORS, ClaimNotFound),
    summary="One of the caller's claims",
)
async def get_claim(
    claim_id: uuid.UUID, session: SessionDep, principal: ReaderDep, settings: SettingsDep
) -> ClaimRead:
    claim = await offsets_service.get_claim(session, principal, claim_id)
    return await _claim_read(session, settings, claim)


@router.post(
    "/claims/{claim_id}/revoke",
    response_model=ClaimRead,
    responses=problem_responses(*AUTH_ERRORS, ClaimNotFound, ClaimAlreadyRevoked),
    summary="Revoke a claim (its page stays, marked revoked; its grams become free again)",
)
async def revoke_claim(
    claim_id: uuid.UUID,
    body: ClaimRevoke,
    session: SessionDep,
    principal: RetirerDep,
    settings: SettingsDep,
) -> ClaimRead:
    claim = await offsets_service.revoke_claim(session, principal, claim_id, body.reason)
    return await _claim_read(session, settings, claim)


def _public_claim(settings: Settings, claim: Claim) -> PublicClaim:
    return PublicClaim(
        code=claim.code,
        status=claim.status,
        revoked_reason=claim.revoked_reason,
        document=json.loads(claim.document),
        canonical=claim.document,
        signature=claim.signature,
        key_id=claim.key_id,
        algorithm=ALGORITHM,
        public_key_url=f"{settings.public_base_url}/v1/public/keys",
    )


@public_router.get(
    "/claims/{code}",
    response_model=PublicClaim,
    responses=problem_responses(ClaimNotFound),
    summary="A claim as published, with its signature (anyone can verify it offline)",
)
async def public_claim(code: str, session: SessionDep, settings: SettingsDep) -> PublicClaim:
    return _public_claim(settings, await offsets_service.public_claim(session, code))


@public_router.get(
    "/claims/{code}/page",
    response_class=HTMLResponse,
    responses=problem_responses(ClaimNotFound),
    summary="The claim's public page, with a QR code and how to verify it",
)
async def public_claim_page(code: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    from app.offsets import certificates

    view = _public_claim(settings, await offsets_service.public_claim(session, code))
    return HTMLResponse(
        certificates.render_claim_html(
            view,
            verify_url=f"{settings.public_base_url}/v1/public/claims/{code}/page",
            public_key_url=view.public_key_url,
        )
    )


@public_router.get(
    "/keys",
    response_model=list[PublicKeyRead],
    summary="The public keys that sign claims",
)
async def public_keys(settings: SettingsDep) -> list[PublicKeyRead]:
    key = signing_key(settings)
    return [
        PublicKeyRead(
            key_id=key.key_id,
            algorithm=ALGORITHM,
            public_key=b64url(key.public_raw),
            public_key_pem=key.public_pem,
        )
    ]


# --- offset pools ----------------------------------------------------------------------


@router.post(
    "/offset-pools",
    status_code=status.HTTP_201_CREATED,
    response_model=PoolRead,
    responses=problem_responses(*AUTH_ERRORS, RetirementNotFound, InsufficientCoverage),
    summary="Create an offset pool for per-unit claims, optionally funded by retirements",
)
async def create_pool(body: PoolCreate, session: SessionDep, principal: RetirerDep) -> PoolRead:
    return await _pool_read(session, await offsets_service.create_pool(session, principal, body))


@router.get(
    "/offset-pools/{pool_id}",
    response_model=PoolRead,
    responses=problem_responses(*AUTH_ERRORS, PoolNotFound),
    summary="An offset pool: total, remaining and drawn grams, and its retirements",
)
async def get_pool(pool_id: uuid.UUID, session: SessionDep, principal: ReaderDep) -> PoolRead:
    return await _pool_read(session, await offsets_service.get_pool(session, principal, pool_id))


@router.post(
    "/offset-pools/{pool_id}/fund",
    response_model=PoolRead,
    responses=problem_responses(
        *AUTH_ERRORS, PoolNotFound, RetirementNotFound, InsufficientCoverage
    ),
    summary="Add retirements' unclaimed grams to a pool",
)
async def fund_pool(
    pool_id: uuid.UUID, body: PoolFund, session: SessionDep, principal: RetirerDep
) -> PoolRead:
    pool = await offsets_service.fund_pool(session, principal, pool_id, body.retirement_ids)
    return await _pool_read(session, pool)


@router.post(
    "/offset-pools/{pool_id}/claims",
    status_code=status.HTTP_201_CREATED,
    response_model=UnitClaimRead,
    responses=problem_responses(*AUTH_ERRORS, PoolNotFound, PoolExhausted, DuplicateReference),
    summary="Draw grams from a pool as one signed unit claim (e.g. per sale)",
)
async def draw_unit_claim(
    pool_id: uuid.UUID,
    body: UnitClaimCreate,
    session: SessionDep,
    principal: RetirerDep,
    settings: SettingsDep,
) -> UnitClaimRead:
    unit = await offsets_service.draw_unit_claim(session, settings, principal, pool_id, body)
    return UnitClaimRead(
        id=unit.claim.id,
        code=unit.claim.code,
        pool_id=pool_id,
        grams=unit.claim.covered_g,
        reference=body.reference,
        pool_remaining_g=unit.pool_remaining_g,
        low_balance=unit.low_balance,
        verification_url=offsets_service.claim_url(settings, unit.claim.code),
        created_at=unit.claim.created_at,
    )


# --- municipal goals -------------------------------------------------------------------


@router.post(
    "/goals",
    status_code=status.HTTP_201_CREATED,
    response_model=GoalRead,
    responses=problem_responses(*AUTH_ERRORS, NotAMunicipality, GoalExists),
    summary="Set a municipality's yearly offset goal",
)
async def create_goal(body: GoalCreate, session: SessionDep, principal: RetirerDep) -> GoalRead:
    goal = await offsets_service.create_goal(session, principal, body)
    return goal_read(await offsets_service.goal_progress(session, principal, goal.id))


@router.get(
    "/goals",
    response_model=list[GoalRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="The caller's goals with their progress",
)
async def list_goals(session: SessionDep, principal: ReaderDep) -> list[GoalRead]:
    return [goal_read(p) for p in await offsets_service.list_goals(session, principal)]


@router.get(
    "/goals/{goal_id}",
    response_model=GoalRead,
    responses=problem_responses(*AUTH_ERRORS, GoalNotFound),
    summary="A goal's progress: retired tonnes and the share from local credits",
)
async def get_goal(goal_id: uuid.UUID, session: SessionDep, principal: ReaderDep) -> GoalRead:
    return goal_read(await offsets_service.goal_progress(session, principal, goal_id))
