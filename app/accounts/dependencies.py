"""Authentication and authorisation dependencies.

Each route's caller is one dependency (``require_scopes``) over the bearer scheme: FastAPI's
cost is per dependency, and it is most of an authenticated request's time in the framework.
The key is read from the database in a session of its own, and only when this process does
not know it (``accounts_service.known_principal``): a route that needs no database (placing
an order, usually) then opens no session at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.accounts import service as accounts_service
from app.accounts.errors import InvalidApiKey, MissingScope
from app.accounts.models import Scope
from app.accounts.service import Principal
from app.config import get_settings

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise InvalidApiKey("An API key is required: `Authorization: Bearer <key>`.")
    token = credentials.credentials
    admin_key = get_settings().auth.admin_key.get_secret_value()
    principal = accounts_service.known_principal(token, admin_key)
    if principal is None:
        async with request.app.state.sessionmaker() as session:
            principal = await accounts_service.authenticate(session, token, admin_key)
    structlog.contextvars.bind_contextvars(
        api_key_id=principal.api_key_id,
        organization_id=str(principal.organization.id) if principal.organization else None,
    )
    return principal


async def get_principal(request: Request, credentials: Credentials) -> Principal:
    return await _authenticate(request, credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_scopes(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    async def dependency(request: Request, credentials: Credentials) -> Principal:
        principal = await _authenticate(request, credentials)
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
