"""Ledger test helpers: organisations made directly in the database, and balance readers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from itertools import count

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Organization, OrganizationKind
from app.ledger import service as ledger
from app.ledger.models import AccountKind, AssetKind, Entry, Posting
from app.ledger.posting import transfer
from app.ledger.verify import run_checks

_names = count(1)

OrgMaker = Callable[[], Awaitable[uuid.UUID]]


async def make_org(session: AsyncSession) -> uuid.UUID:
    """A committed organisation (the ledger only needs its id)."""
    org = Organization(name=f"Ledger org {next(_names)}", kind=OrganizationKind.company)
    session.add(org)
    await session.commit()
    return org.id


async def fund(
    session: AsyncSession, org: uuid.UUID, amount: int, asset: str = ledger.CASH
) -> None:
    """Move ``amount`` of ``asset`` from the external account to ``org``'s available, committed."""
    external = await ledger.account_id(session, None, asset, AccountKind.external)
    available = await ledger.account_id(session, org, asset, AccountKind.available)
    await ledger.post_entry(
        session,
        ledger.EntrySpec(kind="fund", legs=transfer(external, available, asset, amount)),
    )
    await session.commit()


async def make_credit_asset(session: AsyncSession) -> str:
    asset = ledger.credit_asset(uuid.uuid4())
    await ledger.ensure_asset(session, asset, AssetKind.credit, "test batch")
    await session.commit()
    return asset


async def balance(session: AsyncSession, account: uuid.UUID) -> int:
    """The cached balance, read fresh from the database."""
    value = await session.scalar(
        text("SELECT balance FROM ledger_accounts WHERE id = :id"), {"id": account}
    )
    assert value is not None, f"no account {account}"
    return int(value)


async def posted_sum(session: AsyncSession, account: uuid.UUID) -> int:
    """The sum of the account's postings (what the cached balance must equal)."""
    value = await session.scalar(
        select(func.coalesce(func.sum(Posting.amount), 0)).where(Posting.account_id == account)
    )
    return int(value or 0)


async def available_and_held(
    session: AsyncSession, org: uuid.UUID, asset: str = ledger.CASH
) -> tuple[int, int]:
    rows = (
        await session.execute(
            text(
                "SELECT kind, balance FROM ledger_accounts"
                " WHERE organization_id = :org AND asset = :asset"
            ),
            {"org": org, "asset": asset},
        )
    ).all()
    by_kind = {str(kind): int(value) for kind, value in rows}
    return by_kind.get("available", 0), by_kind.get("held", 0)


async def entry_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Entry)) or 0)


async def posting_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Posting)) or 0)


async def assert_verified(session: AsyncSession) -> None:
    """Every ledger check passes (the read's transaction is ended after)."""
    failed = {r.name: r.violations for r in await run_checks(session) if not r.ok}
    await session.rollback()
    assert failed == {}


async def trace(session: AsyncSession, hold_id: uuid.UUID) -> list[tuple[str, str | None, int]]:
    """The hold's entries in order: (kind, reference, amount into the destination)."""
    rows = await session.execute(
        select(Entry.kind, Entry.reference, Posting.amount)
        .join(Posting, Posting.entry_id == Entry.id)
        .where(Entry.metadata_["hold_id"].astext == str(hold_id), Posting.amount > 0)
        .order_by(Posting.id)
    )
    return [(kind, reference, int(amount)) for kind, reference, amount in rows]
