"""Organisations, API keys and authentication."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.errors import (
    ApiKeyNotFound,
    CorporateNumberTaken,
    InvalidApiKey,
    MissingScope,
    OrganizationNotFound,
    ScopeNotAllowed,
)
from app.accounts.keycache import KEYS
from app.accounts.models import (
    ApiKey,
    Organization,
    OrganizationKind,
    OrganizationStatus,
    Scope,
)
from app.accounts.repository import ApiKeyRepository, OrganizationRepository
from app.accounts.schemas import ApiKeyCreate, OrganizationCreate
from app.core.pagination import Page, PageParams
from app.core.time import utc_now

log = structlog.get_logger()

KEY_PREFIX = "tanso_"
ADMIN_KEY_ID = "admin"

# Scopes only some kinds of organisation may hold.
PLATFORM_SCOPES = frozenset({Scope.admin, Scope.registry, Scope.auctioneer})
ALLOWED_PLATFORM_SCOPES: dict[OrganizationKind, frozenset[Scope]] = {
    OrganizationKind.platform: PLATFORM_SCOPES,
    OrganizationKind.government: frozenset({Scope.auctioneer}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an organisation's key, or the platform administrator."""

    api_key_id: str
    scopes: frozenset[Scope]
    organization: Organization | None  # None for the administrator key

    @property
    def is_admin(self) -> bool:
        return Scope.admin in self.scopes

    @property
    def organization_id(self) -> uuid.UUID:
        if self.organization is None:
            raise MissingScope("This operation needs an organisation's API key.")
        return self.organization.id

    def require(self, *scopes: Scope) -> None:
        missing = [s.value for s in scopes if s not in self.scopes]
        if missing:
            raise MissingScope(
                f"This API key lacks the scope(s): {', '.join(missing)}.", required=missing
            )

    def can_act_for(self, organization_id: uuid.UUID) -> bool:
        return self.is_admin or (
            self.organization is not None and self.organization.id == organization_id
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def admin_principal() -> Principal:
    return Principal(api_key_id=ADMIN_KEY_ID, scopes=frozenset(Scope), organization=None)


def known_principal(token: str, admin_key: str) -> Principal | None:
    """The caller without a database read: the admin, or a key this process read before and
    of which nothing changed since (``KEYS``); None if the database must be asked."""
    if hmac.compare_digest(token.encode(), admin_key.encode()):
        return admin_principal()
    return KEYS.get(hash_key(token))


async def authenticate(session: AsyncSession, token: str, admin_key: str) -> Principal:
    if (known := known_principal(token, admin_key)) is not None:
        return known
    key_hash = hash_key(token)
    generation = KEYS.generation
    found = await ApiKeyRepository(session).active_by_hash(key_hash)
    if found is None:
        raise InvalidApiKey("The API key is missing, unknown or revoked.")
    key, org = found
    if org.status != OrganizationStatus.active:
        raise InvalidApiKey("The organisation of this API key is suspended.")
    # Out of the session: the caller may outlive it (remembered, below), and a rollback of
    # the session would expire it (every later request with the key would fail to read it).
    session.expunge(org)
    principal = Principal(
        api_key_id=str(key.id), scopes=frozenset(Scope(s) for s in key.scopes), organization=org
    )
    KEYS.remember(key_hash, principal, generation)
    return principal


async def create_organization(session: AsyncSession, data: OrganizationCreate) -> Organization:
    repo = OrganizationRepository(session)
    if data.corporate_number and await repo.by_corporate_number(data.corporate_number):
        raise CorporateNumberTaken(
            "An organisation with this corporate number already exists.",
            corporate_number=data.corporate_number,
        )
    org = await repo.insert(
        Organization(
            name=data.name,
            kind=data.kind,
            prefecture=data.prefecture,
            corporate_number=data.corporate_number,
            group=data.group,
            status=OrganizationStatus.active,
        )
    )
    log.info("accounts.organization_created", organization_id=str(org.id), kind=org.kind)
    return org


async def get_organization(
    session: AsyncSession, principal: Principal, organization_id: uuid.UUID
) -> Organization:
    """The organisation, if the caller may see it; another organisation's is a 404."""
    if not principal.can_act_for(organization_id):
        raise OrganizationNotFound("No such organisation.")
    org = await OrganizationRepository(session).get(organization_id)
    if org is None:
        raise OrganizationNotFound("No such organisation.")
    return org


async def require_organization(session: AsyncSession, organization_id: uuid.UUID) -> Organization:
    """For platform operations that name an organisation (deposits, issuance)."""
    org = await OrganizationRepository(session).get(organization_id)
    if org is None:
        raise OrganizationNotFound("No such organisation.", organization_id=str(organization_id))
    return org


def _check_grantable(principal: Principal, org: Organization, scopes: set[Scope]) -> None:
    kind = OrganizationKind(org.kind)  # the String column loads a plain str, not the enum
    allowed_platform = ALLOWED_PLATFORM_SCOPES.get(kind, frozenset())
    refused = sorted(s.value for s in scopes if s in PLATFORM_SCOPES and s not in allowed_platform)
    if refused:
        raise ScopeNotAllowed(
            f"An organisation of kind {kind.value!r} cannot hold: {', '.join(refused)}.",
            field="scopes",
        )
    if not principal.is_admin:
        beyond = sorted(s.value for s in scopes if s not in principal.scopes)
        if beyond:
            raise ScopeNotAllowed(
                f"A key can only grant scopes it holds itself; not held: {', '.join(beyond)}.",
                field="scopes",
            )


async def create_api_key(
    session: AsyncSession, principal: Principal, organization_id: uuid.UUID, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    org = await get_organization(session, principal, organization_id)
    if not principal.is_admin:
        principal.require(Scope.keys)
    scopes = set(data.scopes)
    _check_grantable(principal, org, scopes)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKeyRepository(session).add(
        ApiKey(
            organization_id=org.id,
            name=data.name,
            prefix=secret[:12],
            key_hash=hash_key(secret),
            scopes=sorted(s.value for s in scopes),
        )
    )
    await session.flush()
    log.info("accounts.api_key_created", organization_id=str(org.id), api_key_id=str(key.id))
    return key, secret


async def revoke_api_key(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> None:
    key = await ApiKeyRepository(session).get(key_id, for_update=True)
    if key is None or not principal.can_act_for(key.organization_id):
        raise ApiKeyNotFound("No such API key.")
    if not principal.is_admin:
        principal.require(Scope.keys)
    if key.revoked_at is None:
        key.revoked_at = utc_now()
        await session.flush()
        KEYS.forget_after_commit(session)
        log.info("accounts.api_key_revoked", api_key_id=str(key.id))


async def list_organizations(session: AsyncSession, params: PageParams) -> Page[Organization]:
    return await OrganizationRepository(session).list_page(params)


async def list_api_keys(
    session: AsyncSession, principal: Principal, organization_id: uuid.UUID, params: PageParams
) -> Page[ApiKey]:
    org = await get_organization(session, principal, organization_id)
    return await ApiKeyRepository(session).list_for_org(org.id, params)
