"""A small generic repository: the queries every table needs, written once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidInput
from app.core.pagination import Page, PageParams, make_page
from app.db.base import Base

M = TypeVar("M", bound=Base)


def parse_uuid_cursor(after: str) -> uuid.UUID:
    try:
        return uuid.UUID(after)
    except ValueError as exc:
        raise InvalidInput("cursor is not valid", field="cursor", location="query") from exc


class Repository(Generic[M]):
    model: type[M]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, id: uuid.UUID, *, for_update: bool = False) -> M | None:
        stmt: Select[Any] = select(self.model).where(self.model.id == id)  # type: ignore[attr-defined]
        if for_update:
            stmt = stmt.with_for_update()
        result: M | None = (await self.session.execute(stmt)).scalar_one_or_none()
        return result

    def add(self, obj: M) -> M:
        self.session.add(obj)
        return obj

    async def page(
        self, stmt: Select[Any], params: PageParams, *, newest_first: bool = True
    ) -> Page[M]:
        """Keyset page over a UUIDv7 primary key (creation order)."""
        id_col: Any = self.model.id  # type: ignore[attr-defined]
        if params.after is not None:
            after = parse_uuid_cursor(params.after)
            stmt = stmt.where(id_col < after if newest_first else id_col > after)
        stmt = stmt.order_by(id_col.desc() if newest_first else id_col.asc()).limit(
            params.limit + 1
        )
        rows: Sequence[M] = (await self.session.execute(stmt)).scalars().all()
        last = rows[params.limit - 1] if len(rows) > params.limit else None
        return make_page(list(rows), params, str(last.id) if last is not None else None)  # type: ignore[attr-defined]
