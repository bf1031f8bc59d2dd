"""``new_row``: a row made without the constructor's events is the same row to every later use
(read, changed, added and flushed), and a key that is not a column is refused; ``row_maker``
makes the same rows from values in column order; ``stored_row`` makes a row read elsewhere
(through the driver) the session's, as a query with ``populate_existing`` would."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Organization, OrganizationKind, OrganizationStatus
from app.core.ids import new_id
from app.core.time import utc_now
from app.db.base import new_row, row_maker, stored_row


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


def test_a_row_maker_makes_the_rows_new_row_makes_and_refuses_a_misspelt_key() -> None:
    values = _values()
    make = row_maker(Organization, tuple(values))
    made = make(values.values())
    assert {k: getattr(made, k) for k in values} == values
    assert inspect(made).transient
    with pytest.raises(TypeError, match="nmae"):
        row_maker(Organization, ("id", "nmae"))
    with pytest.raises(ValueError, match="shorter"):  # never a row with a column left out
        make(list(values.values())[:-1])


async def test_a_stored_row_is_the_sessions_and_its_changes_are_written_as_an_update(
    session: AsyncSession,
) -> None:
    values = _values()
    session.add(new_row(Organization, **values))
    await session.commit()
    session.expunge_all()

    # As a book read through the driver makes it: not in the session until stored.
    read = new_row(Organization, **values)
    stored = stored_row(session, read)
    assert stored is read
    assert inspect(stored).persistent
    assert not session.dirty
    stored.name = "Renamed after the read"
    await session.commit()
    session.expunge_all()
    again = await session.get(Organization, values["id"])
    assert again is not None
    assert again.name == "Renamed after the read"


async def test_a_stored_row_the_session_has_already_is_brought_to_the_values_read(
    session: AsyncSession,
) -> None:
    values = _values()
    session.add(new_row(Organization, **values))
    await session.commit()
    loaded = await session.get(Organization, values["id"])
    assert loaded is not None
    # Read again (by another path) after someone renamed it: the session's instance is the
    # one used, with the new values, as ``populate_existing`` would leave it.
    newer = new_row(Organization, **{**values, "name": "Renamed elsewhere"})
    stored = stored_row(session, newer)
    assert stored is loaded
    assert stored.name == "Renamed elsewhere"
    assert not session.is_modified(stored)
    assert stored_row(session, stored) is stored
