"""Authentication and authorisation dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.accounts import service as accounts_service
from app.accounts.errors import InvalidApiKey, MissingScope
from app.accounts.models import Scope
from app.accounts.service import Principal
from app.config import Settings, settings_dependency
from app.db.session import SessionDep

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def get_principal(
    session: SessionDep,
    settings: Annotated[Settings, Depends(settings_dependency)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise InvalidApiKey("An API key is required: `Authorization: Bearer <key>`.")
    principal = await accounts_service.authenticate(
        session, credentials.credentials, settings.auth.admin_key.get_secret_value()
    )
    structlog.contextvars.bind_contextvars(
        api_key_id=principal.api_key_id,
        organization_id=str(principal.organization.id) if principal.organization else None,
    )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_scopes(*scopes: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def dependency(principal: PrincipalDep) -> Principal:
        principal.require(*scopes)
        return principal

    return dependency


# The caller, as each route needs it (one alias per scope, shared by every router).
AnyKeyDep = Annotated[Principal, Depends(require_scopes())]
AdminDep = Annotated[Principal, Depends(require_scopes(Scope.admin))]
ReaderDep = Annotated[Principal, Depends(require_scopes(Scope.read))]
TraderDep = Annotated[Principal, Depends(require_scopes(Scope.trade))]
BidderDep = Annotated[Principal, Depends(require_scopes(Scope.bid))]
RetirerDep = Annotated[Principal, Depends(require_scopes(Scope.retire))]
TransfererDep = Annotated[Principal, Depends(require_scopes(Scope.transfer))]
RegistryDep = Annotated[Principal, Depends(require_scopes(Scope.registry))]
AuctioneerDep = Annotated[Principal, Depends(require_scopes(Scope.auctioneer))]

# What any authenticated route can answer besides its own errors (for ``responses=``).
AUTH_ERRORS = (InvalidApiKey, MissingScope)
