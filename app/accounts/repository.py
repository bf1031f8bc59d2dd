from __future__ import annotations

import uuid

from sqlalchemy import select

from app.accounts.models import ApiKey, Organization
from app.core.pagination import Page, PageParams
from app.core.repository import Repository


class OrganizationRepository(Repository[Organization]):
    model = Organization

    async def list_page(self, params: PageParams) -> Page[Organization]:
        return await self.page(select(Organization), params)

    async def by_corporate_number(self, corporate_number: str) -> Organization | None:
        return (
            await self.session.execute(
                select(Organization).where(Organization.corporate_number == corporate_number)
            )
        ).scalar_one_or_none()


class ApiKeyRepository(Repository[ApiKey]):
    model = ApiKey

    async def active_by_hash(self, key_hash: str) -> tuple[ApiKey, Organization] | None:
        row = (
            await self.session.execute(
                select(ApiKey, Organization)
                .join(Organization, Organization.id == ApiKey.organization_id)
                .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        ).one_or_none()
        return (row[0], row[1]) if row is not None else None

    async def list_for_org(self, organization_id: uuid.UUID, params: PageParams) -> Page[ApiKey]:
        return await self.page(
            select(ApiKey).where(ApiKey.organization_id == organization_id), params
        )
