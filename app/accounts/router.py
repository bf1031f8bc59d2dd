from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.accounts import service as accounts_service
from app.accounts.dependencies import AUTH_ERRORS, AdminDep, PrincipalDep
from app.accounts.errors import (
    ApiKeyNotFound,
    CorporateNumberTaken,
    InvalidApiKey,
    OrganizationNotFound,
    ScopeNotAllowed,
)
from app.accounts.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    MeKey,
    MeRead,
    OrganizationCreate,
    OrganizationRead,
)
from app.core.errors import problem_responses
from app.core.pagination import Page, PageDep
from app.db.session import SessionDep

router = APIRouter(tags=["organizations"])


@router.post(
    "/organizations",
    status_code=status.HTTP_201_CREATED,
    response_model=OrganizationRead,
    responses=problem_responses(*AUTH_ERRORS, CorporateNumberTaken, ScopeNotAllowed),
    summary="Create an organisation (administrator)",
)
async def create_organization(
    body: OrganizationCreate, session: SessionDep, _: AdminDep
) -> OrganizationRead:
    org = await accounts_service.create_organization(session, body)
    return OrganizationRead.model_validate(org)


@router.get(
    "/organizations",
    response_model=Page[OrganizationRead],
    responses=problem_responses(*AUTH_ERRORS),
    summary="List organisations (administrator)",
)
async def list_organizations(
    session: SessionDep, _: AdminDep, page: PageDep
) -> Page[OrganizationRead]:
    result = await accounts_service.list_organizations(session, page)
    return Page(
        data=[OrganizationRead.model_validate(o) for o in result.data],
        next_cursor=result.next_cursor,
    )


@router.get(
    "/organizations/{organization_id}",
    response_model=OrganizationRead,
    responses=problem_responses(*AUTH_ERRORS, OrganizationNotFound),
    summary="Get an organisation (administrator, or the organisation itself)",
)
async def get_organization(
    organization_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> OrganizationRead:
    org = await accounts_service.get_organization(session, principal, organization_id)
    return OrganizationRead.model_validate(org)


@router.post(
    "/organizations/{organization_id}/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=problem_responses(*AUTH_ERRORS, OrganizationNotFound, ScopeNotAllowed),
    summary="Create an API key; the secret is shown once",
)
async def create_api_key(
    organization_id: uuid.UUID, body: ApiKeyCreate, session: SessionDep, principal: PrincipalDep
) -> ApiKeyCreated:
    key, secret = await accounts_service.create_api_key(session, principal, organization_id, body)
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), key=secret)


@router.get(
    "/organizations/{organization_id}/api-keys",
    response_model=Page[ApiKeyRead],
    responses=problem_responses(*AUTH_ERRORS, OrganizationNotFound),
    summary="List an organisation's API keys (never their secrets)",
)
async def list_api_keys(
    organization_id: uuid.UUID, session: SessionDep, principal: PrincipalDep, page: PageDep
) -> Page[ApiKeyRead]:
    result = await accounts_service.list_api_keys(session, principal, organization_id, page)
    return Page(
        data=[ApiKeyRead.model_validate(k) for k in result.data], next_cursor=result.next_cursor
    )


@router.delete(
    "/api-keys/{api_key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(*AUTH_ERRORS, ApiKeyNotFound),
    summary="Revoke an API key; it stops working at once",
)
async def revoke_api_key(
    api_key_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> Response:
    await accounts_service.revoke_api_key(session, principal, api_key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me",
    response_model=MeRead,
    responses=problem_responses(InvalidApiKey),
    summary="The calling key and its organisation",
)
async def me(principal: PrincipalDep) -> MeRead:
    return MeRead(
        organization=OrganizationRead.model_validate(principal.organization)
        if principal.organization
        else None,
        api_key=MeKey(id=principal.api_key_id, scopes=sorted(principal.scopes)),
    )
