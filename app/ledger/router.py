from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.accounts import service as accounts_service
from app.accounts.dependencies import AUTH_ERRORS, AdminDep, ReaderDep
from app.accounts.errors import OrganizationNotFound
from app.core.errors import problem_responses
from app.core.pagination import Page, PageDep
from app.db.session import SessionDep
from app.ledger import service as ledger_service
from app.ledger.errors import AccountNotFound, DuplicateDeposit
from app.ledger.models import AssetKind
from app.ledger.schemas import (
    AccountRead,
    BalancesRead,
    CashBalance,
    CreditBalance,
    DepositCreate,
    DepositRead,
    PostingRead,
)

router = APIRouter(tags=["ledger"])


@router.post(
    "/deposits",
    status_code=status.HTTP_201_CREATED,
    response_model=DepositRead,
    responses=problem_responses(*AUTH_ERRORS, OrganizationNotFound, DuplicateDeposit),
    summary="Record a bank transfer received for an organisation (administrator)",
)
async def create_deposit(body: DepositCreate, session: SessionDep, _: AdminDep) -> DepositRead:
    org = await accounts_service.require_organization(session, body.organization_id)
    deposit = await ledger_service.record_deposit(session, org.id, body.amount, body.reference)
    return DepositRead.model_validate(deposit)


@router.get(
    "/balances",
    response_model=BalancesRead,
    responses=problem_responses(*AUTH_ERRORS),
    summary="The caller's cash and credit balances, available and held",
)
async def get_balances(session: SessionDep, principal: ReaderDep) -> BalancesRead:
    rows = await ledger_service.balances(session, principal.organization_id)
    cash = next((r for r in rows if r.asset == ledger_service.CASH), None)
    return BalancesRead(
        cash=CashBalance(available=cash.available if cash else 0, held=cash.held if cash else 0),
        credits=[
            CreditBalance(
                batch_id=r.asset.removeprefix(ledger_service.CREDIT_PREFIX),
                available=r.available,
                held=r.held,
            )
            for r in rows
            if r.asset_kind == AssetKind.credit
        ],
    )


@router.get(
    "/accounts",
    response_model=Page[AccountRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="The caller's ledger accounts",
)
async def list_accounts(
    session: SessionDep, principal: ReaderDep, page: PageDep
) -> Page[AccountRead]:
    result = await ledger_service.list_accounts(session, principal.organization_id, page)
    return Page(
        data=[AccountRead.model_validate(a) for a in result.data], next_cursor=result.next_cursor
    )


@router.get(
    "/accounts/{account_id}/postings",
    response_model=Page[PostingRead],
    responses=problem_responses(*AUTH_ERRORS, AccountNotFound),
    summary="An account's postings, newest first, each with the balance it left",
)
async def list_postings(
    account_id: uuid.UUID, session: SessionDep, principal: ReaderDep, page: PageDep
) -> Page[PostingRead]:
    owner = None if principal.is_admin else principal.organization_id
    result = await ledger_service.list_postings(session, owner, account_id, page)
    return Page(
        data=[
            PostingRead(
                id=str(p.id),
                entry_id=p.entry_id,
                entry_kind=p.entry_kind,
                amount=p.amount,
                balance_after=p.balance_after,
                reference=p.reference,
                created_at=p.created_at,
            )
            for p in result.data
        ],
        next_cursor=result.next_cursor,
    )
