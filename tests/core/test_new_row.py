"""``new_row``: a row made without the constructor's events is the same row to every later use
(read, changed, added and flushed), and a key that is not a column is refused."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Organization, OrganizationKind, OrganizationStatus
from app.core.ids import new_id
from app.core.time import utc_now
from app.db.base import new_row


def _values() -> dict[str, object]:
    now = utc_now()
    return {
        "id": new_id(),
        "name": "Row test",
        "kind": OrganizationKind.company,
        "status": OrganizationStatus.active,
        "prefecture": "13",
        "created_at": now,
        "updated_at": now,
    }


async def test_a_new_row_is_inserted_with_its_values_and_later_changes(
    session: AsyncSession,
) -> None:
    values = _values()
    made, built = new_row(Organization, **values), Organization(**{**values, "id": new_id()})
    assert made.name == "Row test"
    made.name = "Renamed before the flush"
    built.name = "Renamed before the flush"
    session.add_all([made, built])
    await session.commit()
    session.expunge_all()

    rows = (
        await session.execute(select(Organization).where(Organization.id.in_([made.id, built.id])))
    ).scalars()
    stored = {o.id: o for o in rows}

    def columns(org: Organization) -> tuple[object, ...]:
        return (org.name, org.kind, org.status, org.prefecture, org.group, org.created_at)

    assert columns(stored[made.id]) == columns(stored[built.id])
    assert stored[made.id].name == "Renamed before the flush"
    assert stored[made.id].created_at == values["created_at"]


def test_a_key_that_is_not_a_column_is_refused() -> None:
    with pytest.raises(TypeError, match="nmae"):
        new_row(Organization, nmae="typo")
